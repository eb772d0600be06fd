//! The loop guard's snapshot files beside the state snapshot: `.guard` for damping records,
//! trace counts and audit rings, written periodically, and `.held` for quarantines with
//! their held notifications, written before a held notification is acknowledged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditEntry, GuardRecord, LoopGuard, Quarantine, TraceCount};
use crate::state::{BoundedTable, KeyId};

/// First line of the `.guard` file. Version 2 names entities and traces by the key ids of
/// the tables and stores the tables' seeds; version 1 stored the keys.
const GUARD_HEADER: &str = "ekko-guard-snapshot 2";
const HELD_HEADER: &str = "ekko-held-snapshot 1";

/// Why the guard snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GuardSnapshotError {
    /// No file at the path.
    #[error("guard snapshot {0} does not exist")]
    Missing(PathBuf),
    /// The file has another format version, such as a `.guard` file of version 1, which
    /// stored keys where version 2 stores key ids.
    #[error("guard snapshot {path} has format version {version}, but this ekko reads only `{expected}`; it starts without what the file contains, and the next save replaces the file")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version on the file's first line, cut to 32 characters.
        version: String,
        /// The first line this ekko reads.
        expected: &'static str,
    },
    /// The file is not a complete guard snapshot.
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
    /// Seeds of the three tables, 64 hex digits each, so a load derives the same key ids.
    records_seed: String,
    traces_seed: String,
    audit_seed: String,
    records: Vec<(KeyId, GuardRecord)>,
    traces: Vec<(KeyId, TraceCount)>,
    audit: Vec<(KeyId, VecDeque<AuditEntry>)>,
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
    /// file and rename, with mode 0600; returns the number of damping records. Entries
    /// are named by key id with each table's seed, see [`KeyId`].
    pub fn save(&self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents = Contents {
            records_seed: hex(&self.records.seed()),
            traces_seed: hex(&self.traces.seed()),
            audit_seed: hex(&self.audit.seed()),
            records: self.records.entries(),
            traces: self.traces.entries(),
            audit: self.audit.entries(),
        };
        write_checksummed(path, GUARD_HEADER, &contents)?;
        Ok(contents.records.len())
    }

    /// Replaces this guard's damping records, trace counts and audit rings with those of
    /// the guard snapshot at `path`, keeping this guard's bounds. Returns the number of
    /// damping records in the file.
    ///
    /// # Errors
    ///
    /// `Missing` when there is no file, `UnsupportedVersion` for a file of another format
    /// version, `Corrupt` for a damaged file and `Io` when it cannot be read. The guard
    /// then stays as it was.
    pub fn load(&mut self, path: &Path) -> Result<usize, GuardSnapshotError> {
        let contents: Contents = read_checksummed(path, GUARD_HEADER)?;
        let seed = |text: &str| {
            parse_hex32(text).ok_or_else(|| GuardSnapshotError::Corrupt {
                path: path.to_owned(),
                reason: format!("table seed {text:?} is not 64 hex digits"),
            })
        };
        let records = restore(
            &self.records,
            seed(&contents.records_seed)?,
            contents.records,
        );
        let traces = restore(&self.traces, seed(&contents.traces_seed)?, contents.traces);
        let audit = restore(&self.audit, seed(&contents.audit_seed)?, contents.audit);
        let count = records.1;
        self.records = records.0;
        self.traces = traces.0;
        self.audit = audit.0;
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

/// Builds a table with the bound of `like` and the saved `seed`, holding `entries`; returns
/// it with the number of entries read.
fn restore<V: Clone>(
    like: &BoundedTable<V>,
    seed: [u8; 32],
    entries: Vec<(KeyId, V)>,
) -> (BoundedTable<V>, usize) {
    let bound = NonZeroUsize::new(like.capacity()).unwrap_or(NonZeroUsize::MIN);
    let table = BoundedTable::with_seed(bound, seed);
    let count = entries.len();
    for (id, value) in entries {
        table.insert_id(id, value);
    }
    (table, count)
}

fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(text)
        .ok()
        .map(|hash| *hash.as_bytes())
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
    header: &'static str,
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
    let first = next()?.unwrap_or_default();
    if first != header {
        let (magic, _) = header.rsplit_once(' ').expect("header has a version");
        return Err(
            match first.strip_prefix(magic).and_then(|v| v.strip_prefix(' ')) {
                Some(version) => GuardSnapshotError::UnsupportedVersion {
                    path: path.to_owned(),
                    version: version.chars().take(32).collect(),
                    expected: header,
                },
                None => corrupt(&format!("the first line is not `{header}`")),
            },
        );
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
        guard.commit("a", Some(5), None, Some("hr"), Some("t1"), 10, &config);
        let detection = crate::guard::Detection {
            key: "a",
            route: "hr",
            reason: Reason::Oscillation,
            source: Some("iga"),
            prior: None,
        };
        assert!(guard.enter(detection, held(), 20, &config));

        let held = held_path(&dir.path().join("state"));
        assert_eq!(guard.save(&path).unwrap(), 1);
        assert_eq!(guard.save_held(&held).unwrap(), 1);
        let mut loaded = LoopGuard::new(&state_config());
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
    fn version_one_file_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.guard");
        let json = r#"{"records":[],"traces":[],"audit":[]}"#;
        let checksum = blake3::hash(json.as_bytes()).to_hex();
        fs::write(
            &path,
            format!("ekko-guard-snapshot 1\n{json}\nblake3 {checksum}\n"),
        )
        .unwrap();

        let error = LoopGuard::new(&state_config()).load(&path).unwrap_err();

        assert!(
            matches!(&error, GuardSnapshotError::UnsupportedVersion { version, .. } if version == "1"),
            "{error}"
        );
        assert!(error.to_string().contains("state.guard"), "{error}");
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
