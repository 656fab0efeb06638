//! gRPC's status codes (OK ... UNAUTHENTICATED) as data: each code's number,
//! its name as gRPC writes it and as a config file does, and a set of codes
//! that fits in a word. What a code means for a request (the HTTP side,
//! `grpc-timeout`, the answers the sidecar makes) is `crate::http::grpc`'s.

use std::fmt;

/// A gRPC status code, numbered as the gRPC specification numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the caller cancelled.
    Cancelled = 1,
    /// 2: an error with no better code.
    Unknown = 2,
    /// 3: the request is invalid whatever the server's state.
    InvalidArgument = 3,
    /// 4: the deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// 5: something asked for was not found.
    NotFound = 5,
    /// 6: what the call would create exists already.
    AlreadyExists = 6,
    /// 7: the caller may not do this.
    PermissionDenied = 7,
    /// 8: a quota or limit is spent.
    ResourceExhausted = 8,
    /// 9: the system is not in the state the call needs.
    FailedPrecondition = 9,
    /// 10: aborted, usually by a concurrency conflict.
    Aborted = 10,
    /// 11: past the valid range.
    OutOfRange = 11,
    /// 12: the method or service is not implemented.
    Unimplemented = 12,
    /// 13: an invariant broke inside the server.
    Internal = 13,
    /// 14: the service cannot answer now; a retry may succeed.
    Unavailable = 14,
    /// 15: data was lost or corrupted.
    DataLoss = 15,
    /// 16: the caller's credentials are missing or invalid.
    Unauthenticated = 16,
}

/// Every code, in number order (`ALL[n]` has number `n`).
const ALL: [GrpcCode; 17] = [
    GrpcCode::Ok,
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

impl GrpcCode {
    /// The code numbered `number`; `None` past UNAUTHENTICATED (16).
    pub fn from_number(number: u32) -> Option<GrpcCode> {
        ALL.get(usize::try_from(number).ok()?).copied()
    }

    /// The code whose config name is `word` (lower case, as `retry.on`
    /// and `circuit_breaker.grpc_failures` write it: `unavailable`,
    /// `deadline_exceeded`).
    pub fn from_config_word(word: &str) -> Option<GrpcCode> {
        ALL.into_iter().find(|code| code.config_word() == word)
    }

    /// Its number, as `grpc-status` carries it.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// Its name as gRPC writes it: `UNAVAILABLE` (the `code` label).
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Its name as a config file writes it: `unavailable`.
    pub fn config_word(self) -> &'static str {
        match self {
            GrpcCode::Ok => "ok",
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::InvalidArgument => "invalid_argument",
            GrpcCode::DeadlineExceeded => "deadline_exceeded",
            GrpcCode::NotFound => "not_found",
            GrpcCode::AlreadyExists => "already_exists",
            GrpcCode::PermissionDenied => "permission_denied",
            GrpcCode::ResourceExhausted => "resource_exhausted",
            GrpcCode::FailedPrecondition => "failed_precondition",
            GrpcCode::Aborted => "aborted",
            GrpcCode::OutOfRange => "out_of_range",
            GrpcCode::Unimplemented => "unimplemented",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
            GrpcCode::DataLoss => "data_loss",
            GrpcCode::Unauthenticated => "unauthenticated",
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// A set of codes, one bit each: copied, not allocated, and asked in one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// Whether `code` is in the set.
    pub fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code.number()) != 0
    }

    /// The codes of the set, in number order.
    pub fn iter(self) -> impl Iterator<Item = GrpcCode> {
        ALL.into_iter().filter(move |code| self.contains(*code))
    }
}

impl FromIterator<GrpcCode> for GrpcCodes {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(codes: I) -> Self {
        GrpcCodes(
            codes
                .into_iter()
                .fold(0, |bits, code| bits | 1 << code.number()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_go_both_ways() {
        for (number, code) in ALL.into_iter().enumerate() {
            assert_eq!(code.number() as usize, number);
            assert_eq!(GrpcCode::from_number(code.number()), Some(code));
            assert_eq!(GrpcCode::from_config_word(code.config_word()), Some(code));
            assert_eq!(code.name().to_lowercase(), code.config_word());
        }
        assert_eq!(GrpcCode::from_number(17), None);
        assert_eq!(GrpcCode::from_config_word("UNAVAILABLE"), None);
        assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE (14)");
    }

    #[test]
    fn a_set_holds_what_it_was_made_of() {
        let set: GrpcCodes = [GrpcCode::Unavailable, GrpcCode::Internal]
            .into_iter()
            .collect();
        assert!(set.contains(GrpcCode::Unavailable));
        assert!(!set.contains(GrpcCode::Ok));
        let listed: Vec<GrpcCode> = set.iter().collect();
        assert_eq!(listed, [GrpcCode::Internal, GrpcCode::Unavailable]);
    }
}
