//! Durable held notifications: the `.held` file is rewritten before a hold is acknowledged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{GuardSnapshotError, LoopGuard};

/// Writes the quarantine table to the `.held` file with group commit: requests that arrive
/// while a write is in progress are covered together by the next write, so a loop that
/// holds many notifications costs one fsync per batch of them, not one each.
pub struct HeldWriter {
    path: PathBuf,
    requested: AtomicU64,
    written: tokio::sync::Mutex<u64>,
}

impl HeldWriter {
    /// Creates a writer for `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            requested: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once the quarantine table, as it is now or later, is on disk.
    pub async fn persist(&self, guard: &Arc<LoopGuard>) -> Result<(), GuardSnapshotError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut written = self.written.lock().await;
        if *written >= ticket {
            return Ok(());
        }
        // Every change whose ticket is at most `covered` was made before its ticket was
        // taken, so the table read below contains it.
        let covered = self.requested.load(Ordering::SeqCst);
        let (guard, path) = (guard.clone(), self.path.clone());
        let result = tokio::task::spawn_blocking(move || guard.save_held(&path))
            .await
            .unwrap_or_else(|e| {
                Err(GuardSnapshotError::Io {
                    path: self.path.clone(),
                    action: "run the write task for",
                    source: std::io::Error::other(e.to_string()),
                })
            });
        result?;
        *written = covered;
        Ok(())
    }
}
