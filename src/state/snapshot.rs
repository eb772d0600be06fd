//! Snapshot file: checksummed, written through a temporary file and rename.
//!
//! Format version 2 is UTF-8 text with one record per line:
//!
//! ```text
//! ekko-snapshot 2
//! {"entity_seed":"<64 hex>","event_seed":"<64 hex>","entities":2,"events":1}
//! {"id":"<32 hex>","fingerprint":"<64 hex>","spec":7,"forwarded_at_ms":1700000000000}
//! {"id":"<32 hex>","fingerprint":"<64 hex>","spec":7,"forwarded_at_ms":1700000000500}
//! {"id":"<32 hex>","seen_at_ms":1700000000900}
//! blake3 <64 hex>
//! ```
//!
//! The second line gives the tables' seeds and the length of the two sections that
//! follow: entity records, then event ids, each from least to most recently used. A
//! record names its key by the key's [`KeyId`] under the seed of its table, so a table
//! loaded with the same seed finds each record under its key again. The trailer is the
//! blake3 digest of every byte before it.
//!
//! Version 1 stored the keys themselves. This version does not read it: a version 1 file
//! is reported as [`SnapshotError::UnsupportedVersion`], and ekko starts empty.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::table::{BoundedTable, KeyId, ShardSeed};
use super::EntityRecord;
use crate::notify::fingerprint::Fingerprint;

/// First line of every snapshot: the magic word and the format version.
const HEADER: &str = "ekko-snapshot 2";

/// Start of the first line, before the format version.
const HEADER_PREFIX: &str = "ekko-snapshot ";

/// Prefix of the last line, which carries the checksum.
const TRAILER_PREFIX: &str = "blake3 ";

/// Maximum length of one line, so a damaged file cannot make the reader buffer gigabytes.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Serializes saves within the process, because they share the temporary file name.
static SAVE_LOCK: Mutex<()> = Mutex::new(());

/// Numbers of records written by a save or read by a load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Entity records written, or read from the file. A load into smaller bounds keeps
    /// fewer, see `BoundedTable::len`.
    pub entities: usize,
    /// Event ids written, or read from the file.
    pub events: usize,
}

/// Errors from reading or writing a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot file does not exist, as on the first start.
    #[error("snapshot {} not found; check the `state.snapshot` path if a snapshot was expected", path.display())]
    Missing {
        /// The snapshot path.
        path: PathBuf,
    },
    /// The file is a snapshot of another format version, such as version 1, which
    /// stored keys where this version stores key ids.
    #[error("snapshot {} has format version {version}, but this ekko reads only format version 2; ekko starts with empty state, and the next save replaces the file", path.display())]
    UnsupportedVersion {
        /// The snapshot path.
        path: PathBuf,
        /// The version on the file's first line, cut to 32 characters.
        version: String,
    },
    /// The file is not a complete, intact snapshot.
    #[error("snapshot {} is corrupt: {reason}; delete it or replace it with an intact copy", path.display())]
    Corrupt {
        /// The snapshot path.
        path: PathBuf,
        /// Description of the problem, with the line number where one applies.
        reason: String,
    },
    /// A file system operation failed.
    #[error("snapshot {}: {action} failed: {source}; fix the permissions or free space of its directory, or delete the file", path.display())]
    Io {
        /// The file or directory the operation was applied to.
        path: PathBuf,
        /// The operation, such as `open` or `rename`.
        action: &'static str,
        /// The error from the operating system.
        source: io::Error,
    },
}

/// Second line: shard seeds and section lengths.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    #[serde(borrow)]
    entity_seed: Cow<'a, str>,
    #[serde(borrow)]
    event_seed: Cow<'a, str>,
    entities: usize,
    events: usize,
}

/// One line of the entity section.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityLine<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    fingerprint: Cow<'a, str>,
    spec: u64,
    forwarded_at_ms: u64,
}

/// One line of the event section.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    seen_at_ms: u64,
}

/// Writes both tables to `path` through `<path>.tmp-<pid>`, fsyncs the file, renames it
/// over `path` and fsyncs the directory. The file gets mode 0600 on Unix.
///
/// On error the temporary file is removed and any earlier snapshot at `path` stays as it
/// was.
pub(crate) fn write(
    path: &Path,
    entities: &BoundedTable<EntityRecord>,
    events: &BoundedTable<u64>,
) -> Result<SnapshotStats, SnapshotError> {
    let _save = SAVE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let entity_entries = entities.entries();
    let event_entries = events.entries();
    let meta = Meta {
        entity_seed: hex(&entities.seed()).into(),
        event_seed: hex(&events.seed()).into(),
        entities: entity_entries.len(),
        events: event_entries.len(),
    };

    let temp = temp_path(path);
    let result = write_temp(&temp, &meta, &entity_entries, &event_entries)
        .and_then(|()| fs::rename(&temp, path).map_err(io_error(path, "rename")))
        .and_then(|()| sync_directory(path));
    if result.is_err() {
        // The temporary file may be absent already, and the first error is the one to report.
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| SnapshotStats {
        entities: meta.entities,
        events: meta.events,
    })
}

/// Reads the snapshot at `path` into new tables with the given bounds.
///
/// When a section has more records than its bound, the oldest are skipped, so the table
/// keeps the most recently used ones. A shard that receives more of them than its share
/// still evicts, so a table loaded into smaller bounds may contain fewer than its bound.
pub(crate) fn read(
    path: &Path,
    max_entities: NonZeroUsize,
    max_event_ids: NonZeroUsize,
) -> Result<(BoundedTable<EntityRecord>, BoundedTable<u64>, SnapshotStats), SnapshotError> {
    let file = File::open(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => SnapshotError::Missing { path: path.into() },
        _ => io_error(path, "open")(error),
    })?;
    let mut lines = LineReader::new(BufReader::new(file), path);

    lines.read_header()?;
    let (entity_seed, event_seed, stats) = lines.read_meta()?;
    let entities = BoundedTable::with_seed(max_entities, entity_seed);
    let events = BoundedTable::with_seed(max_event_ids, event_seed);
    lines.read_entities(&entities, stats.entities)?;
    lines.read_events(&events, stats.events)?;
    lines.read_trailer()?;
    Ok((entities, events, stats))
}

/// Creates the temporary file, writes every line and the trailer, and fsyncs it.
fn write_temp(
    temp: &Path,
    meta: &Meta<'_>,
    entities: &[(KeyId, EntityRecord)],
    events: &[(KeyId, u64)],
) -> Result<(), SnapshotError> {
    match fs::remove_file(temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(temp, "remove stale temporary file")(error)),
    }
    let file = create_private(temp).map_err(io_error(temp, "create"))?;

    let mut out = HashingWriter {
        inner: BufWriter::new(file),
        hasher: blake3::Hasher::new(),
    };
    write_body(&mut out, meta, entities, events).map_err(io_error(temp, "write"))?;

    let digest = out.hasher.finalize();
    let mut inner = out.inner;
    writeln!(inner, "{TRAILER_PREFIX}{}", digest.to_hex()).map_err(io_error(temp, "write"))?;
    let file = inner
        .into_inner()
        .map_err(|error| io_error(temp, "write")(error.into_error()))?;
    file.sync_all().map_err(io_error(temp, "fsync"))
}

fn write_body(
    out: &mut impl Write,
    meta: &Meta<'_>,
    entities: &[(KeyId, EntityRecord)],
    events: &[(KeyId, u64)],
) -> io::Result<()> {
    writeln!(out, "{HEADER}")?;
    write_line(out, meta)?;
    for (id, record) in entities {
        let line = EntityLine {
            id: id.to_string().into(),
            fingerprint: record.fingerprint.to_hex().into(),
            spec: record.spec,
            forwarded_at_ms: record.forwarded_at_ms,
        };
        write_line(out, &line)?;
    }
    for (id, seen_at_ms) in events {
        let line = EventLine {
            id: id.to_string().into(),
            seen_at_ms: *seen_at_ms,
        };
        write_line(out, &line)?;
    }
    Ok(())
}

/// Writes one record as JSON and a line end. JSON escapes control characters in strings,
/// so a record never contains a raw line end.
fn write_line(out: &mut impl Write, record: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// A writer that feeds every byte it writes to a blake3 hasher.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot line by line, hashing each line before the trailer.
struct LineReader<'p, R> {
    reader: R,
    path: &'p Path,
    line: Vec<u8>,
    line_number: usize,
    hasher: blake3::Hasher,
}

impl<'p, R: BufRead> LineReader<'p, R> {
    fn new(reader: R, path: &'p Path) -> Self {
        Self {
            reader,
            path,
            line: Vec::new(),
            line_number: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    fn read_header(&mut self) -> Result<(), SnapshotError> {
        self.next_line(true)?;
        if self.line.as_slice() == HEADER.as_bytes() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.line);
        match text.strip_prefix(HEADER_PREFIX) {
            Some(version) => Err(SnapshotError::UnsupportedVersion {
                path: self.path.into(),
                version: truncate(version, 32),
            }),
            None => Err(self.corrupt(format!(
                "line 1 is not the header {HEADER:?}, so this is not an ekko snapshot"
            ))),
        }
    }

    /// Reads the seeds and the section lengths.
    fn read_meta(&mut self) -> Result<(ShardSeed, ShardSeed, SnapshotStats), SnapshotError> {
        self.next_line(true)?;
        let meta: Meta<'_> = self.parse_line("header record")?;
        let entity_seed = parse_hex32(&meta.entity_seed);
        let event_seed = parse_hex32(&meta.event_seed);
        let stats = SnapshotStats {
            entities: meta.entities,
            events: meta.events,
        };
        match (entity_seed, event_seed) {
            (Some(entity_seed), Some(event_seed)) => Ok((entity_seed, event_seed, stats)),
            _ => Err(self.corrupt(format!(
                "line {}: a shard seed is not 64 hex digits",
                self.line_number
            ))),
        }
    }

    /// Reads `count` entity lines and inserts the newest ones that fit into `table`.
    fn read_entities(
        &mut self,
        table: &BoundedTable<EntityRecord>,
        count: usize,
    ) -> Result<(), SnapshotError> {
        let skip = count.saturating_sub(table.capacity());
        for index in 0..count {
            self.next_line(true)?;
            let line: EntityLine<'_> = self.parse_line("entity record")?;
            let id = self.parse_id(&line.id)?;
            let Some(digest) = parse_hex32(&line.fingerprint) else {
                let reason = format!(
                    "line {}: fingerprint is not 64 hex digits",
                    self.line_number
                );
                return Err(self.corrupt(reason));
            };
            if index >= skip {
                let record = EntityRecord {
                    fingerprint: Fingerprint(digest),
                    spec: line.spec,
                    forwarded_at_ms: line.forwarded_at_ms,
                };
                table.insert_id(id, record);
            }
        }
        Ok(())
    }

    /// Reads `count` event lines and inserts the newest ones that fit into `table`.
    fn read_events(
        &mut self,
        table: &BoundedTable<u64>,
        count: usize,
    ) -> Result<(), SnapshotError> {
        let skip = count.saturating_sub(table.capacity());
        for index in 0..count {
            self.next_line(true)?;
            let line: EventLine<'_> = self.parse_line("event record")?;
            let id = self.parse_id(&line.id)?;
            if index >= skip {
                table.insert_id(id, line.seen_at_ms);
            }
        }
        Ok(())
    }

    /// Checks the trailer's digest against the bytes read, and that nothing follows it.
    fn read_trailer(&mut self) -> Result<(), SnapshotError> {
        let expected = self.hasher.finalize();
        self.next_line(false)?;
        let found = std::str::from_utf8(&self.line)
            .ok()
            .and_then(|text| text.strip_prefix(TRAILER_PREFIX))
            .and_then(parse_hex32);
        let Some(found) = found else {
            let reason = format!(
                "line {} is not the checksum trailer `blake3 <64 hex digits>`",
                self.line_number
            );
            return Err(self.corrupt(reason));
        };
        if blake3::Hash::from_bytes(found) != expected {
            return Err(
                self.corrupt("checksum mismatch: the content was changed or damaged".into())
            );
        }
        let rest = self
            .reader
            .fill_buf()
            .map_err(io_error(self.path, "read"))?;
        if !rest.is_empty() {
            let reason = format!(
                "data follows the checksum trailer on line {}",
                self.line_number
            );
            return Err(self.corrupt(reason));
        }
        Ok(())
    }

    /// Reads the next line into `self.line` without its line end, and feeds the whole
    /// line to the hasher when `hash` is set.
    fn next_line(&mut self, hash: bool) -> Result<(), SnapshotError> {
        self.line.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .map_err(io_error(self.path, "read"))?;
        let number = self.line_number + 1;
        if read == 0 {
            let reason = format!("the file ends before line {number}; it is truncated");
            return Err(self.corrupt(reason));
        }
        if self.line.last() != Some(&b'\n') {
            let reason = if self.line.len() > MAX_LINE_BYTES {
                format!("line {number} is longer than {MAX_LINE_BYTES} bytes")
            } else {
                format!("line {number} has no line end; the file is truncated")
            };
            return Err(self.corrupt(reason));
        }
        if hash {
            self.hasher.update(&self.line);
        }
        self.line.pop();
        self.line_number = number;
        Ok(())
    }

    fn parse_line<'s, T: Deserialize<'s>>(&'s self, record_kind: &str) -> Result<T, SnapshotError> {
        serde_json::from_slice(&self.line).map_err(|error| {
            self.corrupt(format!(
                "line {}: invalid {record_kind}: {error}",
                self.line_number
            ))
        })
    }

    fn parse_id(&self, text: &str) -> Result<KeyId, SnapshotError> {
        text.parse().map_err(|_| {
            self.corrupt(format!(
                "line {}: key id is not 32 hex digits",
                self.line_number
            ))
        })
    }

    fn corrupt(&self, reason: String) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.into(),
            reason,
        }
    }
}

/// Creates a new file that only its owner can read and write, because snapshots contain
/// entity ids, which may be personal data.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // NOTE: on other platforms the file gets the default permissions of its directory.
    options.open(path)
}

/// Fsyncs the directory that contains `path`, so the rename survives a power failure.
fn sync_directory(path: &Path) -> Result<(), SnapshotError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        let handle = File::open(directory).map_err(io_error(directory, "open directory"))?;
        handle
            .sync_all()
            .map_err(io_error(directory, "fsync directory"))?;
    }
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io {
        path,
        action,
        source,
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(text)
        .ok()
        .map(|hash| *hash.as_bytes())
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
