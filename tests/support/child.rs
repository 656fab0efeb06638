//! Child processes the tests start (the sidecar binary, redis-server,
//! nginx, a WSGI app, dnsmasq, Prometheus): killed and reaped when their
//! owner is dropped, and signalled by name.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};

/// A child process killed and reaped when dropped, so a failing test
/// leaves none running; derefs to the [`Child`] for its id and status.
pub struct OwnedChild(Child);

impl OwnedChild {
    /// Takes ownership of a started child.
    pub fn new(child: Child) -> OwnedChild {
        OwnedChild(child)
    }

    /// Sends the signal named `name` (`TERM`, `HUP`, `STOP`...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills the process and waits for it to end.
    pub fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for OwnedChild {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for OwnedChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
