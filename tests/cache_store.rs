//! Tests for the lookup cache's byte-bounded, sharded LRU store.

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use ekko::lookup::store::{CacheEntry, CacheKey, CacheStore, MIN_SHARD_BYTES};
use http::{HeaderMap, HeaderValue, StatusCode};

/// A store small enough to have one shard, so LRU order is exact across all its entries.
const ONE_SHARD_BYTES: usize = MIN_SHARD_BYTES;

fn entry(route: &str, entity: &str, body_len: usize) -> CacheEntry {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::ETAG, HeaderValue::from_static("\"v1\""));
    CacheEntry {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(vec![b'x'; body_len]),
        route: route.to_owned(),
        entity: entity.to_owned(),
        path: format!("/{route}/{entity}"),
        epoch: 1,
        stored_at_ms: 1_700_000_000_000,
        upstream_age_s: 0,
        fresh_until_ms: 1_700_000_060_000,
        stale_until_ms: 1_700_000_120_000,
    }
}

fn key(n: u64) -> CacheKey {
    CacheKey::build(&[b"api", &n.to_le_bytes()])
}

/// Body length for entry `n`: varies from 0 to 4,999 bytes in a scattered order.
fn varied_len(n: u64) -> usize {
    (n.wrapping_mul(7919) % 5000) as usize
}

#[test]
fn key_differs_across_part_splits() {
    let first = CacheKey::build(&[b"ab", b"c"]);
    let second = CacheKey::build(&[b"a", b"bc"]);
    let joined = CacheKey::build(&[b"abc"]);

    assert_ne!(first, second);
    assert_ne!(first, joined);
    assert_ne!(second, joined);
}

#[test]
fn key_same_for_same_parts() {
    let parts: [&[u8]; 3] = [b"api", b"/hr/v1/persons/7", b"accept=json"];

    assert_eq!(CacheKey::build(&parts), CacheKey::build(&parts));
    assert_ne!(CacheKey::build(&parts), CacheKey::build(&parts[..2]));
}

#[test]
fn byte_bound_holds_over_many_entries() {
    let max = 3 * MIN_SHARD_BYTES + 7;
    let store = CacheStore::new(max);
    let mut evictions = 0;

    for n in 0..10_000 {
        let evicted = store
            .insert(key(n), entry("hr-person", &n.to_string(), varied_len(n)))
            .expect("every entry fits in a shard");
        evictions += evicted;
        assert!(store.bytes() <= max, "bytes {} > {max}", store.bytes());
    }

    assert_eq!(store.shard_count(), 3);
    assert!(evictions > 0, "the test inserts more than the bound");
    assert_eq!(evictions + store.len(), 10_000);
    let counted: usize = (0..10_000)
        .filter_map(|n| store.get(&key(n)))
        .map(|stored| stored.size_bytes())
        .sum();
    assert_eq!(store.bytes(), counted);
}

#[test]
fn recently_read_entry_survives_eviction() {
    let size = entry("r", "e", 1000).size_bytes();
    let store = CacheStore::new(3 * size);
    for n in 0..3 {
        assert_eq!(store.insert(key(n), entry("r", "e", 1000)), Some(0));
    }

    assert!(store.get(&key(0)).is_some());
    assert_eq!(store.insert(key(3), entry("r", "e", 1000)), Some(1));

    assert!(store.get(&key(0)).is_some());
    assert!(store.get(&key(1)).is_none());
    assert!(store.get(&key(2)).is_some());
    assert!(store.get(&key(3)).is_some());
}

#[test]
fn eviction_frees_enough_for_large_entry() {
    let small = entry("r", "e", 100).size_bytes();
    let store = CacheStore::new(ONE_SHARD_BYTES);
    let mut inserted = 0;
    while store.bytes() + small <= ONE_SHARD_BYTES {
        store.insert(key(inserted), entry("r", "e", 100));
        inserted += 1;
    }

    let evicted = store
        .insert(key(u64::MAX), entry("r", "e", 10 * small))
        .expect("the entry fits in the shard");

    assert!(evicted >= 10, "evicted only {evicted}");
    assert!(store.bytes() <= ONE_SHARD_BYTES);
    assert_eq!(store.len() as u64, inserted - evicted as u64 + 1);
    assert!(store.get(&key(0)).is_none());
    assert!(store.get(&key(inserted - 1)).is_some());
}

#[test]
fn entry_over_shard_budget_rejected() {
    let store = CacheStore::new(ONE_SHARD_BYTES);
    for n in 0..10 {
        store.insert(key(n), entry("r", "e", 1000));
    }
    let bytes = store.bytes();

    let outcome = store.insert(key(99), entry("r", "e", ONE_SHARD_BYTES));

    assert_eq!(outcome, None);
    assert_eq!(store.len(), 10);
    assert_eq!(store.bytes(), bytes);
    assert!(store.get(&key(99)).is_none());
    assert!((0..10).all(|n| store.get(&key(n)).is_some()));
}

#[test]
fn shard_budget_limits_entry_size() {
    let store = CacheStore::new(16 * MIN_SHARD_BYTES);

    let outcome = store.insert(key(1), entry("r", "e", MIN_SHARD_BYTES + 1));

    assert_eq!(store.shard_count(), 16);
    assert_eq!(outcome, None);
    assert!(store.is_empty());
}

#[test]
fn rejected_replacement_drops_old_entry() {
    let store = CacheStore::new(ONE_SHARD_BYTES);
    store.insert(key(1), entry("r", "e", 100));

    let outcome = store.insert(key(1), entry("r", "e", ONE_SHARD_BYTES));

    assert_eq!(outcome, None);
    assert!(store.get(&key(1)).is_none());
    assert_eq!(store.bytes(), 0);
}

#[test]
fn replacing_key_updates_bytes() {
    let store = CacheStore::new(ONE_SHARD_BYTES);
    let small = entry("r", "e", 100);
    let large = entry("r", "e", 5000);
    let other = entry("r", "f", 300);
    store.insert(key(2), other.clone());

    assert_eq!(store.insert(key(1), small.clone()), Some(0));
    assert_eq!(store.bytes(), small.size_bytes() + other.size_bytes());
    assert_eq!(store.insert(key(1), large.clone()), Some(0));
    assert_eq!(store.bytes(), large.size_bytes() + other.size_bytes());
    assert_eq!(store.insert(key(1), small.clone()), Some(0));
    assert_eq!(store.bytes(), small.size_bytes() + other.size_bytes());

    assert_eq!(store.len(), 2);
    assert_eq!(
        store.get(&key(1)).map(|stored| stored.body.len()),
        Some(100)
    );
}

#[test]
fn replacement_in_full_shard_evicts_nothing() {
    let size = entry("r", "e", 1000).size_bytes();
    let store = CacheStore::new(2 * size);
    store.insert(key(1), entry("r", "e", 1000));
    store.insert(key(2), entry("r", "e", 1000));

    assert_eq!(store.insert(key(1), entry("r", "e", 1000)), Some(0));
    assert_eq!(store.len(), 2);
    assert_eq!(store.bytes(), 2 * size);
}

#[test]
fn get_shares_stored_body() {
    let store = CacheStore::new(ONE_SHARD_BYTES);
    store.insert(key(1), entry("r", "e", 100));

    let first = store.get(&key(1)).expect("entry is stored");
    let second = store.get(&key(1)).expect("entry is stored");

    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(first.body.as_ptr(), second.body.as_ptr());
}

#[test]
fn remove_frees_bytes() {
    let store = CacheStore::new(ONE_SHARD_BYTES);
    store.insert(key(1), entry("r", "e", 100));
    let remaining = entry("r", "f", 200);
    store.insert(key(2), remaining.clone());

    assert!(store.remove(&key(1)));
    assert!(!store.remove(&key(1)));
    assert_eq!(store.bytes(), remaining.size_bytes());
    assert_eq!(store.len(), 1);
}

#[test]
fn purge_removes_matching_entity() {
    let store = CacheStore::new(4 * MIN_SHARD_BYTES);
    let mut remaining_bytes = 0;
    for n in 0..200 {
        let entity = if n % 4 == 0 {
            "hr/person/7"
        } else {
            "hr/person/8"
        };
        let stored = entry("hr-person", entity, varied_len(n));
        if n % 4 != 0 {
            remaining_bytes += stored.size_bytes();
        }
        store.insert(key(n), stored);
    }

    let purged = store.purge(|stored| stored.entity == "hr/person/7");

    assert_eq!(purged, 50);
    assert_eq!(store.len(), 150);
    assert_eq!(store.bytes(), remaining_bytes);
    assert!((0..200).step_by(4).all(|n| store.get(&key(n)).is_none()));
    assert_eq!(store.purge(|stored| stored.entity == "hr/person/7"), 0);
}

#[test]
fn concurrent_inserts_keep_bound() {
    let max = 4 * MIN_SHARD_BYTES + 3;
    let store = Arc::new(CacheStore::new(max));

    let workers: Vec<_> = (0..8u64)
        .map(|worker| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut evictions = 0;
                for i in 0..2000 {
                    let n = worker * 1_000_000 + i;
                    let stored = entry("r", &n.to_string(), varied_len(n));
                    evictions += store.insert(key(n), stored).expect("entry fits");
                    assert!(store.bytes() <= max, "bytes {} > {max}", store.bytes());
                }
                evictions
            })
        })
        .collect();
    let evictions: usize = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker finishes"))
        .sum();

    assert!(evictions > 0, "the test inserts more than the bound");
    assert_eq!(evictions + store.len(), 8 * 2000);
    assert!(store.bytes() <= max);
}

#[test]
fn entries_per_route_sums_match_store() {
    let store = CacheStore::new(4 * MIN_SHARD_BYTES);
    let routes = ["student", "hr-person", "directory"];
    let mut expected = vec![(0usize, 0usize); routes.len()];
    for n in 0..300u64 {
        let index = (n % 3) as usize;
        let stored = entry(routes[index], &n.to_string(), varied_len(n));
        expected[index].0 += 1;
        expected[index].1 += stored.size_bytes();
        store.insert(key(n), stored);
    }

    let per_route = store.entries_per_route();

    let names: Vec<&str> = per_route.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["directory", "hr-person", "student"]);
    for (name, entries, bytes) in &per_route {
        let index = routes
            .iter()
            .position(|route| route == name)
            .expect("known route");
        assert_eq!((*entries, *bytes), expected[index], "route {name}");
    }
    let total_entries: usize = per_route.iter().map(|(_, entries, _)| entries).sum();
    let total_bytes: usize = per_route.iter().map(|(_, _, bytes)| bytes).sum();
    assert_eq!(total_entries, store.len());
    assert_eq!(total_bytes, store.bytes());
}

#[test]
fn entries_per_route_empty_store() {
    assert!(CacheStore::new(MIN_SHARD_BYTES)
        .entries_per_route()
        .is_empty());
}
