//! Keeps a verifier's JWKS fresh: fetched with awc (over TLS for an
//! `https://` URL) at start and every `jwks_refresh`, fetched early (at
//! most every few seconds) when a token names an unknown `kid`, and the
//! last good set kept when a fetch fails, whether the server is down or
//! its certificate is not trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{info, warn};
use rustls::ClientConfig;

use super::jwt::Verifier;
use crate::tls::call_client;

/// Early fetches for unknown `kid`s are at most this frequent.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Bound on one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

/// The actor fetching one JWKS URL into one verifier.
pub struct JwksFetcher {
    url: String,
    refresh: Duration,
    verifier: Arc<Verifier>,
    client: awc::Client,
    /// When an unknown `kid` last caused a fetch.
    last_early_fetch: Option<Instant>,
    /// Whether any fetch has installed keys yet; until one has, early
    /// fetches are not rate-limited (a token may arrive before the first).
    installed: bool,
}

impl JwksFetcher {
    /// A fetcher for `url`, every `refresh`, into `verifier`; an `https://`
    /// URL is spoken with `tls`.
    pub fn new(
        url: String,
        refresh: Duration,
        tls: Option<&Arc<ClientConfig>>,
        verifier: Arc<Verifier>,
    ) -> Self {
        let client = call_client(FETCH_TIMEOUT, tls);
        JwksFetcher {
            url,
            refresh,
            verifier,
            client,
            last_early_fetch: None,
            installed: false,
        }
    }

    fn fetch(&mut self) -> ResponseActFuture<Self, ()> {
        let request = self.client.get(&self.url).send();
        let url = self.url.clone();
        Box::pin(
            async move {
                let mut response = request
                    .await
                    .map_err(|err| format!("request failed: {err}"))?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                let body = response.body().limit(MAX_DOCUMENT).await;
                body.map_err(|err| format!("reading the body failed: {err}"))
            }
            .into_actor(self)
            .map(move |document, fetcher, _| {
                match document.and_then(|document| fetcher.verifier.install_jwks(&document)) {
                    Ok(count) => {
                        fetcher.installed = true;
                        info!("JWKS from {url}: {count} keys");
                    }
                    Err(why) => warn!("JWKS from {url}: {why}; keeping the keys in use"),
                }
            }),
        )
    }
}

impl Actor for JwksFetcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.fetch().wait(ctx);
        ctx.run_interval(self.refresh, |fetcher, ctx| fetcher.fetch().wait(ctx));
    }
}

/// A token named an unknown `kid`: fetch now, unless the key has arrived
/// meanwhile or an early fetch was recent. Answers once the keys are as
/// fresh as they will get.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FetchNow {
    /// The `kid` that was not found.
    pub kid: Option<String>,
}

impl Handler<FetchNow> for JwksFetcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, request: FetchNow, _: &mut Context<Self>) -> Self::Result {
        let arrived = request
            .kid
            .as_deref()
            .is_some_and(|kid| self.verifier.knows(kid));
        let recent = self
            .last_early_fetch
            .is_some_and(|at| at.elapsed() < MIN_REFETCH);
        if arrived || recent {
            return Box::pin(actix::fut::ready(()));
        }
        if self.installed {
            self.last_early_fetch = Some(Instant::now());
        }
        self.fetch()
    }
}

/// The authenticator this fetcher serves was replaced by a config reload:
/// stop fetching.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRefreshing;

impl Handler<StopRefreshing> for JwksFetcher {
    type Result = ();

    fn handle(&mut self, _: StopRefreshing, ctx: &mut Context<Self>) {
        info!(
            "JWKS from {}: refresh stopped (the auth config was replaced)",
            self.url
        );
        ctx.stop();
    }
}
