//! A deadline that is started, stopped and started again without a new
//! timer each time: what the listeners time a client's pauses with.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A pause timer: runs from [`Pause::start`] until [`Pause::stop`].
#[derive(Default)]
pub struct Pause {
    /// Made on first use (most clients never pause), then reset.
    timer: Option<Pin<Box<Sleep>>>,
    running: bool,
}

impl Pause {
    /// Starts timing a pause of at most `limit`, unless one is timed already.
    pub fn start(&mut self, limit: Duration) {
        if self.running {
            return;
        }
        self.running = true;
        let at = Instant::now() + limit;
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// The pause is over.
    pub fn stop(&mut self) {
        self.running = false;
    }

    /// Whether the pause being timed has passed its limit (the task is
    /// woken when it does).
    pub fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.running
            && self
                .timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }
}
