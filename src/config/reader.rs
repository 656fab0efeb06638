//! Walks a parsed YAML tree and collects every problem with its key path.
//!
//! Serde stops at the first error; `outrigger check` must report all of them,
//! so sections are read key by key: each value is converted on its own, a bad
//! value becomes a [`ConfigError`] naming its path, and reading goes on.
//! [`Table::raw`] is the one place a key becomes known: what it was asked
//! for is what [`Table::finish`] accepts, and what [`KeyLog`] lists. A key
//! read only at start is read with a `_restart` method ([`Table::get_restart`],
//! [`Table::raw_restart`], [`Table::section_restart`]): that read is its one
//! declaration as restart-only, which the reference and reload both follow.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde_norway::Value;

/// One problem in a config file, located by its key path
/// (`services[1].circuit_breaker.cooldown`) and, where the text shows it,
/// by line and column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// Dotted key path, or the environment variable that caused it.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
    /// Where in the file the key (or the nearest enclosing one) is written;
    /// `None` for problems that come from outside the file.
    pub position: Option<Position>,
}

/// A place in a config file, both numbers counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// The line.
    pub line: usize,
    /// The column, in characters.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects [`ConfigError`]s while a config is read and, when asked to,
/// the key paths each table accepted.
#[derive(Debug, Default)]
pub struct Problems {
    errors: Vec<ConfigError>,
    keys: Option<KeyLog>,
    secrets: SecretEnv,
    warnings: Vec<ConfigError>,
}

/// What a secret's environment variable that is not set (`JWT_SECRET`, the
/// API keys' variable) means to the reader.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SecretEnv {
    /// An error: the sidecar cannot run without it (`run`, reloads,
    /// `check --strict-env`).
    #[default]
    Required,
    /// A warning: the file is being checked where the runtime secrets are
    /// not (`check` in CI); a stand-in takes the secret's place, so the
    /// config read is for checking only, never for running.
    Optional,
}

/// The key paths the reader accepted while reading one config, with list
/// indices written `[]` (`services[].circuit_breaker.window`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyLog {
    /// Every key some table asked for, whether the file had it or not.
    pub keys: BTreeSet<String>,
    /// The paths that were read as mappings (`defaults.retry`, `services[]`).
    pub sections: BTreeSet<String>,
    /// The keys read with a `_restart` method: a section among them makes
    /// every key under it restart-only.
    pub restart: BTreeSet<String>,
}

/// Whether a reload puts a key's new value in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadClass {
    /// A reload applies it.
    Live,
    /// Read once at start: a reload keeps the running value and names the key.
    Restart,
}

impl ReloadClass {
    /// The word the reference's `reload` column uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Restart => "restart",
        }
    }
}

impl KeyLog {
    /// How a reload treats `key` (a path from [`KeyLog::keys`]): restart-only
    /// when it or a section it is under was read with a `_restart` method.
    pub fn reload_class(&self, key: &str) -> ReloadClass {
        let under_restart = self.restart.iter().any(|tagged| {
            key == tagged
                || key
                    .strip_prefix(tagged.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        if under_restart {
            ReloadClass::Restart
        } else {
            ReloadClass::Live
        }
    }
}

impl Problems {
    /// Problems that also log every key path the tables accept.
    pub fn recording_keys() -> Self {
        Problems {
            keys: Some(KeyLog::default()),
            ..Problems::default()
        }
    }

    /// Problems that treat a missing secret variable as `secrets` says.
    pub fn with_secrets(secrets: SecretEnv) -> Self {
        Problems {
            secrets,
            ..Problems::default()
        }
    }

    /// Records that the secret at `path` is not in the environment: an error
    /// when secrets are required, else a warning. True when reading may go
    /// on with a stand-in for the secret.
    pub fn missing_secret(&mut self, path: &str, message: impl Into<String>) -> bool {
        match self.secrets {
            SecretEnv::Required => {
                self.add(path, message);
                false
            }
            SecretEnv::Optional => {
                self.warnings.push(ConfigError {
                    path: path.to_string(),
                    message: message.into(),
                    position: None,
                });
                true
            }
        }
    }

    /// Records a problem at `path`.
    pub fn add(&mut self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { "(file)" } else { path };
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
            position: None,
        });
    }

    /// The problems found, in the order they were found.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }

    /// The problems found, then the warnings, each in the order found.
    pub fn into_errors_and_warnings(self) -> (Vec<ConfigError>, Vec<ConfigError>) {
        (self.errors, self.warnings)
    }

    /// The key paths logged, when this was made with [`Problems::recording_keys`].
    pub fn into_key_log(self) -> Option<KeyLog> {
        self.keys
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    fn log_table(&mut self, path: &str, asked: Vec<(String, ReloadClass)>) {
        let Some(log) = &mut self.keys else {
            return;
        };
        let section = generic_path(path);
        for (key, class) in asked {
            let key = child_path(&section, &key);
            if class == ReloadClass::Restart {
                log.restart.insert(key.clone());
            }
            log.keys.insert(key);
        }
        if !section.is_empty() {
            log.sections.insert(section);
        }
    }
}

/// `services[2].retry` -> `services[].retry`: a path with its list indices dropped.
fn generic_path(path: &str) -> String {
    let mut generic = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                generic.push('[');
            }
            ']' => {
                in_index = false;
                generic.push(']');
            }
            _ if in_index => {}
            c => generic.push(c),
        }
    }
    generic
}

/// A value that can be read from one YAML scalar or list.
pub trait FromYaml: Sized {
    /// What a user should have written, for the error message.
    const EXPECTED: &'static str;
    /// Converts the value, or `None` when it has the wrong shape.
    fn from_yaml(value: &Value) -> Option<Self>;
}

impl FromYaml for u32 {
    const EXPECTED: &'static str = "a whole number";
    fn from_yaml(value: &Value) -> Option<Self> {
        value.as_u64().and_then(|n| u32::try_from(n).ok())
    }
}

/// `FromYaml` for a type the YAML value converts to with one accessor.
macro_rules! from_yaml_by {
    ($type:ty, $expected:literal, $accessor:path) => {
        impl FromYaml for $type {
            const EXPECTED: &'static str = $expected;
            fn from_yaml(value: &Value) -> Option<Self> {
                $accessor(value)
            }
        }
    };
}

/// An enum written as one of a few words, each word listed once: `as_str`
/// (its spelling in summaries, metric labels and messages) and its
/// `FromYaml`, which refuses any other word by naming the words.
macro_rules! config_words {
    ($type:ident { $first:ident => $first_word:literal $(, $variant:ident => $word:literal)* $(,)? }) => {
        impl $type {
            /// The word a config file writes for it.
            pub fn as_str(self) -> &'static str {
                match self {
                    Self::$first => $first_word,
                    $(Self::$variant => $word,)*
                }
            }
        }

        impl $crate::config::FromYaml for $type {
            const EXPECTED: &'static str = concat!("one of ", $first_word $(, ", ", $word)*);
            fn from_yaml(value: &serde_norway::Value) -> Option<Self> {
                match value.as_str()? {
                    $first_word => Some(Self::$first),
                    $($word => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use config_words;

from_yaml_by!(u64, "a whole number", Value::as_u64);
from_yaml_by!(f64, "a number", Value::as_f64);
from_yaml_by!(bool, "true or false", Value::as_bool);

impl FromYaml for String {
    const EXPECTED: &'static str = "a string";
    fn from_yaml(value: &Value) -> Option<Self> {
        value.as_str().map(str::to_string)
    }
}

impl FromYaml for Duration {
    const EXPECTED: &'static str = "a duration like \"30s\"";
    fn from_yaml(value: &Value) -> Option<Self> {
        value.as_str().and_then(parse_duration)
    }
}

/// How a config file turns off a bound that may be off.
pub const OFF: &str = "off";

/// A bound that may be off: a duration, or [`OFF`] for `None`.
impl FromYaml for Option<Duration> {
    const EXPECTED: &'static str = "a duration like \"1s\", or off";
    fn from_yaml(value: &Value) -> Option<Self> {
        match value.as_str()? {
            OFF => Some(None),
            text => parse_duration(text).map(Some),
        }
    }
}

/// Parses "250ms", "3s", "1m", "2h" (a whole number and one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(unit_millis).map(Duration::from_millis)
}

/// Formats a duration the way a config file writes it ("250ms", "3s", "5m").
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0s".to_string(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// Shows a YAML value briefly, for "got ..." in error messages.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "an unreadable value".to_string()),
    }
}

/// Joins a parent path and a key: `""` + `listeners` -> `listeners`.
pub fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// One YAML mapping being read; remembers which keys were asked for so
/// that [`Table::finish`] can report the unknown ones (and, when the
/// problems record keys, list the accepted ones).
pub struct Table<'v> {
    path: String,
    entries: Vec<(&'v str, &'v Value, bool)>,
    /// Every key asked for, present or not, and how a reload treats it;
    /// only kept while recording keys.
    asked: Option<Vec<(String, ReloadClass)>>,
}

impl<'v> Table<'v> {
    /// Opens `value` as a mapping at `path`; a null value is an empty mapping.
    pub fn open(value: &'v Value, path: &str, problems: &mut Problems) -> Option<Self> {
        let mut entries = Vec::new();
        match value {
            Value::Null => {}
            Value::Mapping(map) => {
                for (key, value) in map {
                    match key.as_str() {
                        Some(key) => entries.push((key, value, false)),
                        None => {
                            problems.add(path, format!("keys must be strings, got {}", show(key)))
                        }
                    }
                }
            }
            other => {
                problems.add(path, format!("expected a mapping, got {}", show(other)));
                return None;
            }
        }
        Some(Table {
            path: path.to_string(),
            entries,
            asked: problems.keys.is_some().then(Vec::new),
        })
    }

    /// The path of `key` inside this table.
    pub fn path_of(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// The raw value under `key`, marking it used: every reader goes
    /// through here, so a key asked for is a key accepted.
    pub fn raw(&mut self, key: &str) -> Option<&'v Value> {
        self.raw_as(key, ReloadClass::Live)
    }

    /// [`Table::raw`] for a key read only at start (a section: every key
    /// under it): a reload keeps its running value.
    pub fn raw_restart(&mut self, key: &str) -> Option<&'v Value> {
        self.raw_as(key, ReloadClass::Restart)
    }

    /// [`Table::raw`], logging `key` with `class` while recording keys.
    fn raw_as(&mut self, key: &str, class: ReloadClass) -> Option<&'v Value> {
        if let Some(asked) = &mut self.asked {
            match asked.iter_mut().find(|(k, _)| k == key) {
                Some((_, logged)) => *logged = class,
                None => asked.push((key.to_string(), class)),
            }
        }
        self.take(key)
    }

    /// Marks `key` used (so [`Table::finish`] does not call it unknown)
    /// and yields its value, without listing it as accepted.
    fn take(&mut self, key: &str) -> Option<&'v Value> {
        let entry = self.entries.iter_mut().find(|(k, _, _)| *k == key)?;
        entry.2 = true;
        Some(entry.1)
    }

    /// Refuses `key` with `message` when the table has it: for a key that
    /// belongs elsewhere, whose place the message names. It is not accepted
    /// here.
    pub fn refuse(&mut self, key: &str, message: &str, problems: &mut Problems) {
        if self.take(key).is_some() {
            problems.add(&self.path_of(key), message);
        }
    }

    /// Reads `key` as a `T`; records a problem and yields `None` on a bad value.
    pub fn get<T: FromYaml>(&mut self, key: &str, problems: &mut Problems) -> Option<T> {
        let value = self.raw(key)?;
        self.parse(key, value, problems)
    }

    /// [`Table::get`] for a key read only at start: a reload keeps its
    /// running value.
    pub fn get_restart<T: FromYaml>(&mut self, key: &str, problems: &mut Problems) -> Option<T> {
        let value = self.raw_restart(key)?;
        self.parse(key, value, problems)
    }

    /// [`Table::get`], or `default` when `key` is absent or its value bad.
    pub fn get_or<T: FromYaml>(&mut self, key: &str, default: T, problems: &mut Problems) -> T {
        self.get(key, problems).unwrap_or(default)
    }

    /// [`Table::get_restart`], or `default` when `key` is absent or its
    /// value bad.
    pub fn get_restart_or<T: FromYaml>(
        &mut self,
        key: &str,
        default: T,
        problems: &mut Problems,
    ) -> T {
        self.get_restart(key, problems).unwrap_or(default)
    }

    /// Converts `value`, found under `key`, recording a problem when it
    /// has the wrong shape.
    fn parse<T: FromYaml>(&self, key: &str, value: &Value, problems: &mut Problems) -> Option<T> {
        let parsed = T::from_yaml(value);
        if parsed.is_none() {
            let message = format!("expected {}, got {}", T::EXPECTED, show(value));
            problems.add(&self.path_of(key), message);
        }
        parsed
    }

    /// Reads the nested mapping under `key` with `read`, on top of `base`:
    /// an absent or malformed section yields `base` (the latter reported).
    pub fn section<T: Clone>(
        &mut self,
        key: &str,
        base: &T,
        problems: &mut Problems,
        read: impl FnOnce(&mut Table, &T, &mut Problems) -> T,
    ) -> T {
        let value = self.raw(key);
        self.open_section(key, value, base, problems, read)
    }

    /// [`Table::section`] for a section read only at start: a reload keeps
    /// the running value of every key in it.
    pub fn section_restart<T: Clone>(
        &mut self,
        key: &str,
        base: &T,
        problems: &mut Problems,
        read: impl FnOnce(&mut Table, &T, &mut Problems) -> T,
    ) -> T {
        let value = self.raw_restart(key);
        self.open_section(key, value, base, problems, read)
    }

    /// Reads `value`, found under `key`, as a mapping with `read` on top of
    /// `base`: an absent or malformed section yields `base`.
    fn open_section<T: Clone>(
        &self,
        key: &str,
        value: Option<&Value>,
        base: &T,
        problems: &mut Problems,
        read: impl FnOnce(&mut Table, &T, &mut Problems) -> T,
    ) -> T {
        let path = self.path_of(key);
        let Some(value) = value else {
            return base.clone();
        };
        let Some(mut table) = Table::open(value, &path, problems) else {
            return base.clone();
        };
        let section = read(&mut table, base, problems);
        table.finish(problems);
        section
    }

    /// Reads `key` as a list of `T`, reporting each bad item by its index;
    /// `None` when the key is absent or is not a list.
    pub fn list<T: FromYaml>(&mut self, key: &str, problems: &mut Problems) -> Option<Vec<T>> {
        let value = self.raw(key)?;
        let path = self.path_of(key);
        let Some(items) = value.as_sequence() else {
            problems.add(&path, format!("expected a list, got {}", show(value)));
            return None;
        };
        let mut parsed = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match T::from_yaml(item) {
                Some(item) => parsed.push(item),
                None => problems.add(
                    &format!("{path}[{index}]"),
                    format!("expected {}, got {}", T::EXPECTED, show(item)),
                ),
            }
        }
        Some(parsed)
    }

    /// Reads `key` as a list of mappings, each with `read` (unknown keys in
    /// each are reported); an item that yields `None` is left out.
    pub fn tables<T>(
        &mut self,
        key: &str,
        problems: &mut Problems,
        mut read: impl FnMut(&mut Table, &mut Problems) -> Option<T>,
    ) -> Vec<T> {
        let Some(value) = self.raw(key) else {
            return Vec::new();
        };
        let path = self.path_of(key);
        let Some(items) = value.as_sequence() else {
            problems.add(&path, format!("expected a list, got {}", show(value)));
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                let mut table = Table::open(item, &format!("{path}[{index}]"), problems)?;
                let parsed = read(&mut table, problems);
                table.finish(problems);
                parsed
            })
            .collect()
    }

    /// The path of this table.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reports every key that no reader asked for (and logs the asked ones
    /// when the problems record keys).
    pub fn finish(self, problems: &mut Problems) {
        for (key, _, used) in &self.entries {
            if !used {
                problems.add(&child_path(&self.path, key), "unknown key");
            }
        }
        if let Some(asked) = self.asked {
            problems.log_table(&self.path, asked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 0s "), Some(Duration::ZERO));
    }

    #[test]
    fn durations_reject_what_is_not_one() {
        for bad in ["thirty", "30", "s", "1.5s", "-1s", "10 s", "3d", ""] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_format_back_to_the_largest_whole_unit() {
        for text in ["250ms", "3s", "5m", "2h", "0s", "1500ms"] {
            let parsed = parse_duration(text).expect("valid");
            assert_eq!(format_duration(parsed), text);
        }
    }

    #[test]
    fn a_table_reports_bad_values_and_unknown_keys_with_paths() {
        let value: Value = serde_norway::from_str("a: 3\nb: nope\nc: 1").expect("yaml");
        let mut problems = Problems::default();
        let mut table = Table::open(&value, "root", &mut problems).expect("mapping");
        assert_eq!(table.get::<u32>("a", &mut problems), Some(3));
        assert_eq!(table.get::<u32>("b", &mut problems), None);
        table.finish(&mut problems);
        let errors: Vec<String> = problems.into_vec().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            vec![
                "root.b: expected a whole number, got \"nope\"".to_string(),
                "root.c: unknown key".to_string()
            ]
        );
    }

    #[test]
    fn recording_logs_the_keys_asked_for_present_or_not_without_indices() {
        let value: Value = serde_norway::from_str("items: [{a: 1}, {b: 2}]").expect("yaml");
        let mut problems = Problems::recording_keys();
        let mut top = Table::open(&value, "", &mut problems).expect("mapping");
        let _ = top.tables("items", &mut problems, |item, problems| {
            item.get::<u32>("a", problems)
        });
        let _ = top.get::<u32>("absent", &mut problems);
        top.finish(&mut problems);
        let errors: Vec<String> = problems.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors, vec!["items[1].b: unknown key".to_string()]);
        let log = problems.into_key_log().expect("recording");
        assert_eq!(
            log.keys.into_iter().collect::<Vec<_>>(),
            ["absent", "items", "items[].a"]
        );
        assert_eq!(log.sections.into_iter().collect::<Vec<_>>(), ["items[]"]);
    }
}
