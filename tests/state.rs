//! Tests for the bounded tables, the state store and its snapshot file.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use ekko::notify::fingerprint::Fingerprint;
use ekko::state::{BoundedTable, EntityRecord, KeyId, SnapshotError, StateStore};

fn bound(max: usize) -> NonZeroUsize {
    NonZeroUsize::new(max).expect("test bounds are positive")
}

fn record(n: u64) -> EntityRecord {
    EntityRecord {
        fingerprint: Fingerprint(*blake3::hash(&n.to_le_bytes()).as_bytes()),
        spec: 7,
        forwarded_at_ms: 1_700_000_000_000 + n,
    }
}

/// Builds a store with more entities and events than its bounds, and some entries read again
/// so the recency order differs from the insertion order.
fn filled_store(max_entities: usize, max_event_ids: usize) -> StateStore {
    let store = StateStore::new(bound(max_entities), bound(max_event_ids));
    for n in 0..(max_entities as u64 * 10) {
        store.commit(&format!("hr/person/{n}"), record(n));
        if n % 5 == 0 {
            store.entity(&format!("hr/person/{}", n / 2));
        }
    }
    for n in 0..(max_event_ids as u64 * 10) {
        store.record_event(&format!("hr\0event-{n}"), 1_700_000_000_000 + n);
    }
    store
}

fn snapshot_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state.snapshot")
}

fn save_filled(path: &Path) -> StateStore {
    let store = filled_store(40, 20);
    store.save(path).expect("save succeeds");
    store
}

fn load_error(path: &Path) -> SnapshotError {
    match StateStore::load(path, bound(40), bound(20)) {
        Ok(_) => panic!("load of {} succeeded", path.display()),
        Err(error) => error,
    }
}

fn corrupt_reason(path: &Path) -> String {
    match load_error(path) {
        SnapshotError::Corrupt { reason, .. } => reason,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Writes `body` followed by a valid checksum trailer.
fn write_with_trailer(path: &Path, body: &str) {
    let digest = blake3::hash(body.as_bytes()).to_hex();
    fs::write(path, format!("{body}blake3 {digest}\n")).expect("write test file");
}

#[test]
fn bound_holds_for_many_inserts() {
    for max in [1, 7, 16, 17, 1000] {
        let table = BoundedTable::new(bound(max));
        let mut evictions = 0;
        for n in 0..10_000u32 {
            if table.insert(&format!("key-{n}"), n) {
                evictions += 1;
            }
            assert!(table.len() <= max, "bound {max} exceeded after {n} inserts");
        }
        assert_eq!(table.capacity(), max);
        // Ten thousand random keys fill every shard, so the shard sizes must add up to the bound.
        assert_eq!(table.len(), max, "bound {max} not filled");
        assert_eq!(
            evictions + table.len(),
            10_000,
            "bound {max} eviction count"
        );
    }
}

#[test]
fn replacing_key_evicts_nothing() {
    let table = BoundedTable::new(bound(1));
    assert!(!table.insert("a", 1));
    assert!(!table.insert("a", 2));
    assert_eq!(table.get("a"), Some(2));
    assert!(table.insert("b", 3));
    assert_eq!(table.get("a"), None);
    assert_eq!(table.get("b"), Some(3));
}

#[test]
fn update_changes_in_place_and_evicts() {
    let table = BoundedTable::new(bound(1));
    let (seen, evicted) = table.update(
        "a",
        || vec![1],
        |v| {
            v.push(2);
            v.len()
        },
    );
    assert_eq!(
        (seen, evicted),
        (2, false),
        "a missing key starts from `fresh`"
    );
    let (seen, evicted) = table.update("a", Vec::new, |v| {
        v.push(3);
        v.len()
    });
    assert_eq!(
        (seen, evicted),
        (3, false),
        "an existing value is changed, not replaced"
    );
    assert_eq!(table.get("a"), Some(vec![1, 2, 3]));
    let (_, evicted) = table.update("b", Vec::new, |v| v.push(9));
    assert!(evicted, "a new key in a full table evicts the oldest");
    assert_eq!(table.get("a"), None);
    assert_eq!(table.get("b"), Some(vec![9]));
}

#[test]
fn retain_removes_rejected_values() {
    // Room for 625 keys per shard, so none of the 50 is evicted.
    let table = BoundedTable::new(bound(10_000));
    for n in 0..50u32 {
        table.insert(&format!("k{n}"), n);
    }
    let removed = table.retain(|value| value % 2 == 0);
    assert_eq!(removed, 25);
    assert_eq!(table.len(), 25);
    assert_eq!(table.get("k4"), Some(4));
    assert_eq!(table.get("k5"), None);
    table.insert("k51", 51);
    assert_eq!(
        table.get("k51"),
        Some(51),
        "the table stays usable after removals"
    );
}

#[test]
fn recently_read_entries_survive() {
    // Two entries per shard, so every insert into the hot key's shard must choose between
    // the hot key and an older one.
    let table = BoundedTable::new(bound(32));
    table.insert("hot", 0);
    table.insert("cold", 0);
    for n in 0..10_000u32 {
        table.insert(&format!("key-{n}"), n);
        assert_eq!(
            table.get("hot"),
            Some(0),
            "hot key evicted after {n} inserts"
        );
        // `peek` must not refresh the entry.
        table.peek("cold");
    }
    assert_eq!(table.peek("cold"), None);
}

#[test]
fn remove_and_clear_empty_table() {
    // Large shards, so the two keys never evict each other whatever their shards are.
    let table = BoundedTable::new(bound(1000));
    table.insert("a", 1);
    table.insert("b", 2);
    assert_eq!(table.remove("a"), Some(1));
    assert_eq!(table.remove("a"), None);
    assert_eq!(table.len(), 1);
    table.clear();
    assert!(table.is_empty());
    assert_eq!(table.get("b"), None);
}

#[test]
fn entries_run_from_oldest_to_newest() {
    let table = BoundedTable::new(bound(100));
    for n in 0..10u32 {
        table.insert(&format!("key-{n}"), n);
    }
    table.get("key-3");
    table.insert("key-5", 50);
    let ids: Vec<KeyId> = table.entries().into_iter().map(|(id, _)| id).collect();
    let expected = [0, 1, 2, 4, 6, 7, 8, 9, 3, 5].map(|n| table.key_id(&format!("key-{n}")));
    assert_eq!(ids, expected);
    assert_eq!(table.peek("key-5"), Some(50));
}

#[test]
fn table_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<BoundedTable<EntityRecord>>();
    assert_send_sync::<StateStore>();
}

#[test]
fn concurrent_inserts_keep_bound() {
    let table = Arc::new(BoundedTable::new(bound(100)));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let mut evictions = 0usize;
                for n in 0..5_000u32 {
                    if table.insert(&format!("w{worker}-{n}"), n) {
                        evictions += 1;
                    }
                    table.get(&format!("w{worker}-{}", n / 2));
                    assert!(table.len() <= 100);
                }
                evictions
            })
        })
        .collect();
    let evictions: usize = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker thread panicked"))
        .sum();
    assert_eq!(table.len(), 100);
    assert_eq!(evictions + table.len(), 8 * 5_000);
}

#[test]
fn committed_entity_is_returned() {
    let store = StateStore::new(bound(10), bound(10));
    assert_eq!(store.entity("hr/person/1"), None);
    assert!(!store.commit("hr/person/1", record(1)));
    assert_eq!(store.entity("hr/person/1"), Some(record(1)));
    store.commit("hr/person/1", record(2));
    assert_eq!(store.entity("hr/person/1"), Some(record(2)));
}

#[test]
fn event_window_decides_duplicates() {
    let store = StateStore::new(bound(10), bound(10));
    let never_seen = store.event_seen_within("hr\0e-1", 1_000, 60_000);
    assert!(!never_seen);

    store.record_event("hr\0e-1", 1_000);
    // (key, now_ms, window_ms, expected, case)
    let cases = [
        ("hr\0e-1", 1_000, 500, true, "same instant"),
        ("hr\0e-1", 1_499, 500, true, "inside window"),
        ("hr\0e-1", 1_500, 500, false, "window boundary"),
        ("hr\0e-1", 9_000, 500, false, "long after"),
        ("hr\0e-1", 400, 500, true, "clock set back"),
        ("hr\0e-1", 1_000, 0, false, "zero window"),
        ("hr\0e-2", 1_000, 500, false, "other id"),
    ];
    for (key, now_ms, window_ms, expected, case) in cases {
        let seen = store.event_seen_within(key, now_ms, window_ms);
        assert_eq!(seen, expected, "{case}");
    }

    store.record_event("hr\0e-1", 9_000);
    assert!(store.event_seen_within("hr\0e-1", 9_100, 500));
}

#[test]
fn round_trip_keeps_records_and_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let store = save_filled(&path);

    let (loaded, stats) = StateStore::load(&path, bound(40), bound(20)).expect("load succeeds");

    assert_eq!(stats.entities, store.entities.len());
    assert_eq!(stats.events, store.events.len());
    assert_eq!(loaded.entities.len(), store.entities.len());
    assert_eq!(loaded.events.len(), store.events.len());
    assert_eq!(loaded.entities.entries(), store.entities.entries());
    assert_eq!(loaded.events.entries(), store.events.entries());
}

#[test]
fn save_reports_written_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let store = StateStore::new(bound(1000), bound(1000));
    store.commit("a", record(1));
    store.commit("b", record(2));
    store.record_event("hr\0e-1", 5);
    let stats = store.save(&path).expect("save succeeds");
    assert_eq!(stats.entities, 2);
    assert_eq!(stats.events, 1);
}

#[test]
fn unusual_keys_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let keys = [
        "line\nbreak",
        "quote\"back\\slash",
        "nul\0tab\t",
        "päivä/日本",
        "",
    ];
    let store = StateStore::new(bound(100), bound(100));
    for (n, key) in keys.iter().enumerate() {
        store.commit(key, record(n as u64));
        store.record_event(key, n as u64);
    }
    store.save(&path).expect("save succeeds");

    let (loaded, _) = StateStore::load(&path, bound(100), bound(100)).expect("load succeeds");

    for (n, key) in keys.iter().enumerate() {
        assert_eq!(
            loaded.entities.peek(key),
            Some(record(n as u64)),
            "key {key:?}"
        );
        assert_eq!(loaded.events.peek(key), Some(n as u64), "key {key:?}");
    }
}

#[test]
fn long_key_round_trips() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let long_key = "x".repeat(2 << 20);
    let store = StateStore::new(bound(1000), bound(1000));
    store.commit(&long_key, record(1));
    store.commit("short", record(2));

    let stats = store.save(&path).expect("save succeeds");
    let (loaded, _) = StateStore::load(&path, bound(1000), bound(1000)).expect("load succeeds");

    assert_eq!(stats.entities, 2);
    assert_eq!(loaded.entities.peek(&long_key), Some(record(1)));
    assert_eq!(loaded.entities.peek("short"), Some(record(2)));
}

#[test]
fn snapshot_contains_no_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let store = StateStore::new(bound(10), bound(10));
    store.commit("hr/person/secret-name", record(1));
    store.record_event("urn:hr\0event-secret", 2);
    store.save(&path).expect("save succeeds");

    let text = fs::read_to_string(&path).expect("read snapshot");

    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains(&store.entities.key_id("hr/person/secret-name").to_string()));
}

#[test]
fn smaller_bounds_keep_newest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let store = filled_store(1000, 1000);
    store.save(&path).expect("save succeeds");
    let saved = store.entities.entries();
    let saved_events = store.events.entries();

    let (loaded, stats) = StateStore::load(&path, bound(10), bound(1)).expect("load succeeds");

    assert_eq!(stats.entities, saved.len());
    let newest: Vec<_> = saved[saved.len() - 10..].iter().map(|(id, _)| id).collect();
    let saved_values: HashMap<KeyId, EntityRecord> = saved.iter().cloned().collect();
    let loaded_entries = loaded.entities.entries();
    assert!(!loaded_entries.is_empty());
    assert!(loaded_entries.len() <= 10, "kept {}", loaded_entries.len());
    for (id, value) in &loaded_entries {
        assert!(newest.contains(&id), "{id} is not among the newest");
        assert_eq!(Some(value), saved_values.get(id));
    }
    let newest_entry = saved.last().expect("store is not empty");
    assert!(loaded_entries.contains(newest_entry));
    assert_eq!(
        loaded.events.entries(),
        saved_events[saved_events.len() - 1..]
    );
}

#[cfg(unix)]
#[test]
fn snapshot_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    fs::write(&path, "older file").expect("write older file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");

    save_filled(&path);

    let mode = fs::metadata(&path)
        .expect("snapshot exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn save_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    save_filled(&path);
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|entry| entry.expect("dir entry").file_name())
        .collect();
    assert_eq!(names, ["state.snapshot"]);
}

#[test]
fn save_replaces_older_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    let store = StateStore::new(bound(5), bound(5));
    store.commit("only", record(9));
    store.save(&path).expect("second save succeeds");

    let (loaded, stats) = StateStore::load(&path, bound(5), bound(5)).expect("load succeeds");

    assert_eq!(stats.entities, 1);
    assert_eq!(stats.events, 0);
    let id = loaded.entities.key_id("only");
    assert_eq!(loaded.entities.entries(), [(id, record(9))]);
    assert_eq!(loaded.entity("only"), Some(record(9)));
}

#[test]
fn save_into_missing_directory_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent").join("state.snapshot");
    let store = StateStore::new(bound(5), bound(5));
    match store.save(&path) {
        Err(error @ SnapshotError::Io { .. }) => {
            assert!(error.to_string().contains("absent"), "{error}");
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn missing_file_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    assert!(matches!(load_error(&path), SnapshotError::Missing { .. }));
}

#[test]
fn changed_content_fails_checksum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    let text = fs::read_to_string(&path).expect("read snapshot");
    fs::write(&path, text.replacen("\"spec\":7", "\"spec\":8", 1)).expect("write");

    let reason = corrupt_reason(&path);

    assert!(reason.contains("checksum"), "{reason}");
}

#[test]
fn truncated_file_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    let bytes = fs::read(&path).expect("read snapshot");
    let trailer_start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&byte| byte == b'\n')
        .expect("snapshot has several lines")
        + 1;

    for cut in [bytes.len() / 2, trailer_start, bytes.len() - 1, 0] {
        fs::write(&path, &bytes[..cut]).expect("write");
        let reason = corrupt_reason(&path);
        assert!(reason.contains("truncated"), "cut at {cut}: {reason}");
    }
}

#[test]
fn version_one_snapshot_is_unsupported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let seed = "0".repeat(64);
    let digest = "ab".repeat(32);
    let body = format!(
        "ekko-snapshot 1\n\
         {{\"entity_seed\":\"{seed}\",\"event_seed\":\"{seed}\",\"entities\":1,\"events\":0}}\n\
         {{\"k\":\"hr/person/1\",\"fingerprint\":\"{digest}\",\"spec\":3,\"forwarded_at_ms\":4}}\n"
    );
    write_with_trailer(&path, &body);

    let error = load_error(&path);
    let message = error.to_string();

    match error {
        SnapshotError::UnsupportedVersion { version, .. } => assert_eq!(version, "1"),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("version 1"), "{message}");
    assert!(message.contains("starts with empty state"), "{message}");
}

#[test]
fn newer_version_is_unsupported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    let text = fs::read_to_string(&path).expect("read snapshot");
    let body = text.replacen("ekko-snapshot 2\n", "ekko-snapshot 3\n", 1);
    let trailer_start = body.rfind("blake3 ").expect("snapshot has a trailer");
    write_with_trailer(&path, &body[..trailer_start]);

    match load_error(&path) {
        SnapshotError::UnsupportedVersion { version, .. } => assert_eq!(version, "3"),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn garbage_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let garbage: Vec<u8> = (0..4096u32).map(|n| (n * 7919 % 251) as u8).collect();
    for content in [&b"hello world\n"[..], &garbage, b"{\"k\":1}\n"] {
        fs::write(&path, content).expect("write");
        let reason = corrupt_reason(&path);
        assert!(reason.contains("not an ekko snapshot"), "{reason}");
    }
}

#[test]
fn malformed_line_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let seed = "0".repeat(64);
    let meta = format!(
        "{{\"entity_seed\":\"{seed}\",\"event_seed\":\"{seed}\",\"entities\":1,\"events\":0}}"
    );
    let id = "0".repeat(32);
    let digest = "ab".repeat(32);
    let cases = [
        (format!("{{\"id\":\"{id}\",\"spec\":1}}"), "line 3"),
        (
            format!("{{\"id\":\"{id}\",\"fingerprint\":\"xyz\",\"spec\":1,\"forwarded_at_ms\":2}}"),
            "fingerprint",
        ),
        (
            format!(
                "{{\"id\":\"a\",\"fingerprint\":\"{digest}\",\"spec\":1,\"forwarded_at_ms\":2}}"
            ),
            "key id",
        ),
        (
            format!(
                "{{\"k\":\"a\",\"fingerprint\":\"{digest}\",\"spec\":1,\"forwarded_at_ms\":2}}"
            ),
            "line 3",
        ),
        ("not json".to_owned(), "line 3"),
    ];
    for (line, expected) in cases {
        write_with_trailer(&path, &format!("ekko-snapshot 2\n{meta}\n{line}\n"));
        let reason = corrupt_reason(&path);
        assert!(reason.contains(expected), "{line}: {reason}");
    }
}

#[test]
fn handmade_snapshot_loads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    let seed = "0".repeat(64);
    let digest = "ab".repeat(32);
    // A key id is the first 16 bytes of the key's blake3 hash keyed with the table's seed.
    let id = |key: &str| {
        let hash = blake3::keyed_hash(&[0; 32], key.as_bytes());
        hash.to_hex()[..32].to_owned()
    };
    let (entity, event) = (id("hr/person/1"), id("hr\0e-1"));
    let body = format!(
        "ekko-snapshot 2\n\
         {{\"entity_seed\":\"{seed}\",\"event_seed\":\"{seed}\",\"entities\":1,\"events\":1}}\n\
         {{\"id\":\"{entity}\",\"fingerprint\":\"{digest}\",\"spec\":3,\"forwarded_at_ms\":4}}\n\
         {{\"id\":\"{event}\",\"seen_at_ms\":5}}\n"
    );
    write_with_trailer(&path, &body);

    let (loaded, _) = StateStore::load(&path, bound(5), bound(5)).expect("load succeeds");

    let expected = EntityRecord {
        fingerprint: Fingerprint([0xab; 32]),
        spec: 3,
        forwarded_at_ms: 4,
    };
    assert_eq!(loaded.entity("hr/person/1"), Some(expected));
    assert_eq!(loaded.events.peek("hr\0e-1"), Some(5));
}

#[test]
fn data_after_trailer_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    save_filled(&path);
    let mut bytes = fs::read(&path).expect("read snapshot");
    bytes.extend_from_slice(b"extra\n");
    fs::write(&path, bytes).expect("write");

    let reason = corrupt_reason(&path);

    assert!(reason.contains("follows the checksum trailer"), "{reason}");
}

#[test]
fn corrupt_error_names_path_and_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = snapshot_path(&dir);
    fs::write(&path, "garbage\n").expect("write");
    let message = load_error(&path).to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("delete it"), "{message}");
}
