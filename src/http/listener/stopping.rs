//! How far a sidecar's stop has got, as its proxy listeners' workers see
//! it: from the stop signal the listeners drain (every answer says
//! `Connection: close`, so keep-alive clients reconnect elsewhere while the
//! listener still serves); then they close, and once
//! `lifecycle.shutdown_grace` has run out a request still unanswered is cut
//! and an open WebSocket is closed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The stop of one sidecar, shared by both proxy listeners.
pub struct Stopping {
    grace: Duration,
    draining: AtomicBool,
    /// Told when the stop begins, for what waits for it (an HTTP/2
    /// connection's GOAWAY) rather than reading `draining` per answer.
    drain_began: watch::Sender<bool>,
    /// From when a request dropped unanswered was cut by the stop, and
    /// open tunnels close; `None` until the listeners close.
    cut_from: watch::Sender<Option<Instant>>,
}

impl Stopping {
    /// A sidecar not stopping yet, whose in-flight requests will get
    /// `grace` to finish once its listeners close.
    pub fn new(grace: Duration) -> Stopping {
        Stopping {
            grace,
            draining: AtomicBool::new(false),
            drain_began: watch::Sender::new(false),
            cut_from: watch::Sender::new(None),
        }
    }

    /// `lifecycle.shutdown_grace`.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The stop began: from now on every answer closes its connection.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_began.send_replace(true);
    }

    /// Resolves once the stop has begun ([`Stopping::drain`]); never while
    /// the sidecar is not stopping.
    pub fn drained(&self) -> impl Future<Output = ()> + 'static {
        let mut began = self.drain_began.subscribe();
        async move {
            if began.wait_for(|began| *began).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether answers close their connections (read once per answer).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The listeners close now: a request dropped unanswered after the
    /// grace from now was cut by the stop. Call it before asking the
    /// listeners to stop, so their own forced stop (no sooner than the
    /// grace after they were asked) always comes after this point.
    pub fn close(&self) {
        self.cut_from_now(self.grace);
    }

    /// The listeners stop at once (a second signal): whatever they drop
    /// from now on is cut.
    pub fn hurry(&self) {
        self.cut_from_now(Duration::ZERO);
    }

    fn cut_from_now(&self, after: Duration) {
        let at = Instant::now() + after;
        self.cut_from.send_if_modified(|cut_from| {
            let sooner = cut_from.is_none_or(|cut_from| at < cut_from);
            if sooner {
                *cut_from = Some(at);
            }
            sooner
        });
    }

    /// Whether a request dropped unanswered now was cut by the stop, rather
    /// than left by its client (read only when a request is dropped).
    pub fn cutting(&self) -> bool {
        self.cut_from
            .borrow()
            .is_some_and(|at| Instant::now() >= at)
    }

    /// Resolves once the grace after the listeners closed has run out (at
    /// once after [`Stopping::hurry`]): what an open tunnel waits for to
    /// close. Never resolves while the sidecar is not stopping.
    pub fn grace_over(&self) -> impl Future<Output = ()> + 'static {
        let mut cut_from = self.cut_from.subscribe();
        async move {
            loop {
                let Some(at) = *cut_from.borrow_and_update() else {
                    if cut_from.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                };
                // A hurry moves the point sooner: wait for it or for the point.
                let at = tokio::time::Instant::from_std(at);
                match tokio::time::timeout_at(at, cut_from.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => tokio::time::sleep_until(at).await,
                    Err(_) => {}
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_count_as_cuts_only_once_the_grace_after_the_close_has_run_out() {
        let stopping = Stopping::new(Duration::from_secs(3600));
        assert!(!stopping.draining() && !stopping.cutting());
        stopping.drain();
        stopping.close();
        assert!(stopping.draining());
        assert!(!stopping.cutting(), "the grace has an hour to run");
        stopping.hurry();
        assert!(stopping.cutting(), "a hurried stop cuts at once");
    }

    #[actix_rt::test]
    async fn drained_resolves_once_the_stop_begins() {
        let stopping = Stopping::new(Duration::from_secs(1));
        let drained = stopping.drained();
        let early = tokio::time::timeout(Duration::from_millis(20), stopping.drained()).await;
        assert!(early.is_err(), "not stopping yet");
        stopping.drain();
        drained.await;
        stopping.drained().await;
    }

    #[actix_rt::test]
    async fn the_grace_is_over_only_once_it_ran_out_after_the_close() {
        let stopping = Stopping::new(Duration::from_millis(50));
        let over = stopping.grace_over();
        stopping.drain();
        let started = Instant::now();
        stopping.close();
        over.await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        let hurried = Stopping::new(Duration::from_secs(3600));
        let over = hurried.grace_over();
        hurried.close();
        hurried.hurry();
        over.await;
    }
}
