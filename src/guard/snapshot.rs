//! The loop guard's snapshot files beside the state snapshot: `.guard` for damping records,
//! trace counts and audit rings, written periodically, and `.held` for quarantines with
//! their held notifications, written before a held notification is acknowledged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditEntry, GuardRecord, LoopGuard, Quarantine, TraceCount};

const GUARD_HEADER: &str = "ekko-guard-snapshot 1";
const HELD_HEADER: &str = "ekko-held-snapshot 1";

/// Why the guard snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GuardSnapshotError {
    /// No file at the path.
    #[error("guard snapshot {0} does not exist")]
    Missing(PathBuf),
    /// The file is not a complete guard snapshot of this version.
    #[error(
        "guard snapshot {path} is unusable: {reason}; delete it to start with an empty loop guard"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file system operation failed.
    #[error("cannot {action} guard snapshot {path}: {source}; check the directory's permissions and free space")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Contents {
    records: Vec<(String, GuardRecord)>,
    traces: Vec<(String, TraceCount)>,
    audit: Vec<(String, VecDeque<AuditEntry>)>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeldContents {
    quarantine: Vec<(String, Quarantine)>,
}

/// The held-notification file's path: the state snapshot's path with `.held` appended.
pub fn held_path(state_snapshot: &Path) -> PathBuf {
    let mut name = state_snapshot.as_os_str().to_owned();
    name.push(".held");
    PathBuf::from(name)
}

/// The guard snapshot's path: the state snapshot's path with `.guard` appended.
pub fn guard_path(state_snapshot: &Path) -> PathBuf {
    let mut name = state_snapshot.as_os_str().to_owned();
    name.push(".guard");
    PathBuf::from(name)
}

impl LoopGuard {
    /// Writes damping records, trace counts and audit rings to `path` through a temporary
    /// file and rename, with mode 0600; returns the number of damping records.
    pub fn save(&self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents = Contents {
            records: entries(self.records.entries()),
            traces: entries(self.traces.entries()),
            audit: entries(self.audit.entries()),
        };
        write_checksummed(path, GUARD_HEADER, &contents)?;
        Ok(contents.records.len())
    }

    /// Reads a guard snapshot into this (empty) guard; returns the number of damping records.
    pub fn load(&self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents: Contents = read_checksummed(path, GUARD_HEADER)?;
        let count = contents.records.len();
        for (key, record) in contents.records {
            self.records.insert(&key, record);
        }
        for (key, trace) in contents.traces {
            self.traces.insert(&key, trace);
        }
        for (key, ring) in contents.audit {
            self.audit.insert(&key, ring);
        }
        Ok(count)
    }

    /// Writes every quarantine with its held notification to `path`, fsynced before the
    /// rename, with mode 0600 because held notifications carry producers' bodies and
    /// headers. Returns the number of quarantines.
    pub fn save_held(&self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents = HeldContents {
            quarantine: self.quarantines(),
        };
        write_checksummed(path, HELD_HEADER, &contents)?;
        Ok(contents.quarantine.len())
    }

    /// Reads quarantines and held notifications; returns their number.
    pub fn load_held(&self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents: HeldContents = read_checksummed(path, HELD_HEADER)?;
        let count = contents.quarantine.len();
        self.quarantine_table().extend(contents.quarantine);
        Ok(count)
    }
}

fn write_checksummed(
    path: &Path,
    header: &str,
    contents: &impl Serialize,
) -> Result<(), GuardSnapshotError> {
    let json = serde_json::to_string(contents)
        .map_err(|e| io_error(path, "encode")(io::Error::other(e)))?;
    let checksum = blake3::hash(json.as_bytes()).to_hex();
    let temp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
    let written = write_file(&temp, &format!("{header}\n{json}\nblake3 {checksum}\n"))
        .and_then(|()| fs::rename(&temp, path).map_err(io_error(path, "rename")));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn entries<V>(list: Vec<(Box<str>, V)>) -> Vec<(String, V)> {
    list.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

fn write_file(path: &Path, text: &str) -> Result<(), GuardSnapshotError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error(path, "create"))?;
    file.write_all(text.as_bytes())
        .map_err(io_error(path, "write"))?;
    file.sync_all().map_err(io_error(path, "sync"))
}

fn read_checksummed<T: serde::de::DeserializeOwned>(
    path: &Path,
    header: &str,
) -> Result<T, GuardSnapshotError> {
    let file = File::open(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => GuardSnapshotError::Missing(path.to_owned()),
        _ => io_error(path, "open")(error),
    })?;
    let corrupt = |reason: &str| GuardSnapshotError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut lines = BufReader::new(file).lines();
    let mut next = || lines.next().transpose().map_err(io_error(path, "read"));
    if next()?.as_deref() != Some(header) {
        return Err(corrupt(&format!("the first line is not `{header}`")));
    }
    let json = next()?.ok_or_else(|| corrupt("the file ends after its header"))?;
    let trailer = next()?.ok_or_else(|| corrupt("the checksum line is missing"))?;
    let expected = format!("blake3 {}", blake3::hash(json.as_bytes()).to_hex());
    if trailer != expected {
        return Err(corrupt("the checksum does not match"));
    }
    serde_json::from_str(&json).map_err(|e| corrupt(&format!("the contents cannot be read: {e}")))
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> GuardSnapshotError {
    let path = path.to_owned();
    move |source| GuardSnapshotError::Io {
        path,
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{HeldNotification, Reason};
    use crate::notify::fingerprint::Fingerprint;
    use crate::policy::{LoopGuardConfig, StateConfig};
    use std::num::NonZeroUsize;
    use std::time::Duration;

    fn state_config() -> StateConfig {
        let n = NonZeroUsize::new(100).unwrap();
        StateConfig {
            max_entities: n,
            max_event_ids: n,
            max_traces: n,
            max_quarantined: n,
            snapshot: None,
            snapshot_interval: Duration::from_secs(60),
        }
    }

    fn held() -> HeldNotification {
        HeldNotification {
            method: http::Method::POST,
            path_and_query: "/events".into(),
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{}"),
            peer: "127.0.0.1:1".parse().unwrap(),
            fingerprint: Some(Fingerprint([1; 32])),
            event_key: None,
            hops: 0,
        }
    }

    #[test]
    fn quarantine_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = guard_path(&dir.path().join("state"));
        let guard = LoopGuard::new(&state_config());
        let config = LoopGuardConfig::default();
        guard.commit("a", Some(5), Some("hr"), Some("t1"), 10, &config);
        let detection = crate::guard::Detection {
            key: "a",
            route: "hr",
            reason: Reason::Oscillation,
            source: Some("iga"),
        };
        assert!(guard.enter(detection, held(), 20, &config));

        let held = held_path(&dir.path().join("state"));
        assert_eq!(guard.save(&path).unwrap(), 1);
        assert_eq!(guard.save_held(&held).unwrap(), 1);
        let loaded = LoopGuard::new(&state_config());
        assert_eq!(loaded.load(&path).unwrap(), 1);
        assert_eq!(loaded.load_held(&held).unwrap(), 1);

        assert_eq!(loaded.quarantine("a"), guard.quarantine("a"));
        assert_eq!(loaded.record("a"), guard.record("a"));
        assert_eq!(loaded.trace_forwards("t1", "a", 20), 1);
    }

    #[test]
    fn damaged_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.guard");
        let guard = LoopGuard::new(&state_config());
        guard.save(&path).unwrap();
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("records", "recordz");
        fs::write(&path, text).unwrap();

        let error = LoopGuard::new(&state_config()).load(&path).unwrap_err();
        assert!(
            matches!(error, GuardSnapshotError::Corrupt { .. }),
            "{error}"
        );
    }

    #[test]
    fn missing_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let error = LoopGuard::new(&state_config())
            .load(&dir.path().join("none"))
            .unwrap_err();
        assert!(matches!(error, GuardSnapshotError::Missing(_)));
    }
}
