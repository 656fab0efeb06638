//! Watching a file by polling its metadata, for the files Kubernetes
//! ConfigMaps deliver: the config file and the `file` discovery source's
//! endpoints file.
//!
//! Each poll is a `stat` (no read). inotify-style watches miss the symlink
//! swap a ConfigMap update makes (`..data` is repointed; the watched file
//! itself is never written); a stat follows the link and sees a new inode.
//! A change is reported once the file has stayed the same for one poll
//! (debounced), so a file caught half-written is not read.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What identifies one version of the file: a ConfigMap swap changes the
/// inode, an edit in place the time or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// One watched file: which version was last read, and whether it is due
/// to be read again.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    /// Read again this often whatever the metadata says (`None`: only on change).
    refresh: Option<Duration>,
    /// The stamp of the version last read (`None`: the file was missing).
    read: Option<Stamp>,
    /// A new stamp seen on the last poll and not read yet.
    pending: Option<Option<Stamp>>,
    last_read: Option<Instant>,
}

impl FileWatch {
    /// A watch on `path`, due at once (nothing has been read yet), then on
    /// each settled change and, with `refresh`, at least that often.
    pub fn new(path: PathBuf, refresh: Option<Duration>) -> Self {
        FileWatch {
            path,
            refresh,
            read: None,
            pending: None,
            last_read: None,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Polls the file: `true` when it should be read now (the first poll, a
    /// change that held still since the last poll, or `refresh` elapsed).
    /// A `true` counts as read: the next one needs another change.
    pub fn due(&mut self) -> bool {
        let stamp = self.stamp();
        let due = match self.last_read {
            None => true,
            Some(last_read) => {
                let changed = stamp != self.read;
                let settled = changed && self.pending == Some(stamp);
                self.pending = (changed && !settled).then_some(stamp);
                settled
                    || self
                        .refresh
                        .is_some_and(|every| last_read.elapsed() >= every)
            }
        };
        if due {
            self.read = stamp;
            self.pending = None;
            self.last_read = Some(Instant::now());
        }
        due
    }

    /// Whether a change was seen on the last poll that has not held still
    /// yet: a file that is still being written or swapped.
    pub fn settling(&self) -> bool {
        self.pending.is_some()
    }

    fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("outrigger-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    #[test]
    fn a_change_is_due_once_it_held_still_for_one_poll() {
        let path = scratch("settle.yaml");
        std::fs::write(&path, "a: 1\n").expect("write");
        let mut watch = FileWatch::new(path.clone(), None);
        assert!(watch.due(), "the first poll reads");
        assert!(!watch.due(), "nothing changed");
        let next = path.with_extension("next");
        std::fs::write(&next, "a: 22\n").expect("write");
        std::fs::rename(&next, &path).expect("swap in");
        assert!(!watch.due(), "a change is seen, not read yet");
        assert!(watch.due(), "it held still: read it");
        assert!(!watch.due(), "read once");
        std::fs::remove_file(&path).expect("remove");
        assert!(!watch.due());
        assert!(watch.due(), "a file that went away is a change too");
    }

    #[test]
    fn refresh_makes_it_due_without_a_change() {
        let path = scratch("refresh.yaml");
        std::fs::write(&path, "a: 1\n").expect("write");
        let mut watch = FileWatch::new(path, Some(Duration::ZERO));
        assert!(watch.due());
        assert!(watch.due(), "refresh elapsed");
    }
}
