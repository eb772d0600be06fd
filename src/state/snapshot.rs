//! Snapshot file: checksummed, written through a temporary file and rename.

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot file.
    #[error("snapshot {path} does not exist")]
    Missing {
        /// The path.
        path: String,
    },
    /// File system error.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The snapshot path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}
