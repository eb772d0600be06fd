//! Per-entity serialisation: notifications for one entity are decided one after another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::fingerprint::Fingerprint;

/// Result of fetching an entity's state from its source API.
#[derive(Debug, Clone)]
pub enum StateFetch {
    /// The source returned the entity, already fingerprinted.
    Found(Fingerprint),
    /// The source returned 404 or 410.
    Deleted,
    /// The fetch failed; the value is the `result` label (`timeout`, `connect_error`, ...).
    Failed(&'static str),
}

/// Data that the holders of one entity's lock pass on to the next holder.
#[derive(Debug, Default)]
pub struct EntitySlot {
    /// The newest source lookup for this entity and when it started. A notification that
    /// arrived before that start can reuse it: the state fetched is at least as new as the
    /// state that notification announced.
    pub last_lookup: Option<(Instant, StateFetch)>,
    /// The source API's response to the newest lookup, until a forward hands it to the
    /// lookup cache.
    pub own_fetch: Option<Arc<OwnFetch>>,
}

/// ekko's own fetch of an entity, kept so consumers reacting to the change hit the cache.
#[derive(Debug)]
pub struct OwnFetch {
    /// Upstream name.
    pub upstream: String,
    /// Request path on the upstream.
    pub path: String,
    /// The answer.
    pub response: http::Response<bytes::Bytes>,
}

type Slot = Arc<tokio::sync::Mutex<EntitySlot>>;

/// Table of entity locks. An entry lives only while some request holds or awaits it,
/// so the table is bounded by the number of requests in flight.
#[derive(Default)]
pub struct EntityLocks {
    table: Mutex<HashMap<String, Slot>>,
}

/// Exclusive access to one entity; dropping it lets the next notification in.
pub struct EntityGuard<'a> {
    locks: &'a EntityLocks,
    key: String,
    slot: Option<Slot>,
    guard: Option<OwnedMutexGuard<EntitySlot>>,
}

impl EntityLocks {
    /// Waits at most `wait` for exclusive access to `key`; `None` when the wait ran out.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Option<EntityGuard<'_>> {
        let slot = {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.entry(key.to_owned()).or_default().clone()
        };
        let mut entity = EntityGuard {
            locks: self,
            key: key.to_owned(),
            slot: Some(slot.clone()),
            guard: None,
        };
        // On timeout `entity` drops here and removes the table entry if no other request uses it.
        let guard = tokio::time::timeout(wait, slot.lock_owned()).await.ok()?;
        entity.guard = Some(guard);
        Some(entity)
    }

    /// Number of entities that have a request holding or awaiting their lock.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Returns whether no entity lock is held or awaited.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EntityGuard<'_> {
    /// Returns the data shared between this entity's successive lock holders.
    pub fn slot(&mut self) -> &mut EntitySlot {
        self.guard
            .as_mut()
            .expect("an EntityGuard is only handed out locked")
    }
}

impl Drop for EntityGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let Some(slot) = self.slot.take() else { return };
        let mut table = self.locks.table.lock().unwrap_or_else(|p| p.into_inner());
        // Clones are only made under the table lock, so the count is stable here:
        // the table's copy and ours mean no other request holds or awaits this entity.
        if Arc::strong_count(&slot) == 2 {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn table_entry_is_removed_after_last_holder() {
        let locks = EntityLocks::default();
        {
            let _guard = locks.acquire("a", Duration::from_secs(1)).await.unwrap();
            assert_eq!(locks.len(), 1);
        }
        assert!(locks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn second_holder_waits_then_times_out() {
        let locks = EntityLocks::default();
        let _first = locks.acquire("a", Duration::from_secs(1)).await.unwrap();
        let second = locks.acquire("a", Duration::from_secs(1)).await;
        assert!(second.is_none());
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn slot_data_passes_to_next_holder() {
        let locks = EntityLocks::default();
        let mut first = locks.acquire("a", Duration::from_secs(1)).await.unwrap();
        let waiter = locks.acquire("a", Duration::from_secs(5));
        first.slot().last_lookup = Some((Instant::now(), StateFetch::Deleted));
        let (mut second, ()) = tokio::join!(async { waiter.await.unwrap() }, async { drop(first) });
        assert!(matches!(
            second.slot().last_lookup,
            Some((_, StateFetch::Deleted))
        ));
    }
}
