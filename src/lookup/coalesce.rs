//! Request coalescing: concurrent misses for one cache key make one upstream request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{CacheEntry, CacheKey};

/// What a writer's fetch produced, as its waiters see it.
#[derive(Debug, Clone)]
pub enum FlightResult {
    /// A response the waiters may be served.
    Shared(Arc<CacheEntry>),
    /// Nothing the waiters may use (uncacheable, an error, or the writer went away):
    /// each waiter fetches on its own.
    Unusable,
}

struct Flight {
    started: Instant,
    epoch: u64,
    result: watch::Sender<Option<FlightResult>>,
}

/// In-flight fetches by cache key. An entry lives only while its fetch runs.
#[derive(Default)]
pub struct Inflight {
    flights: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

/// The caller's role for one miss.
pub enum Role<'a> {
    /// Fetch, then `finish` the flight.
    Writer(WriterGuard<'a>),
    /// Wait for the writer's result.
    Waiter(watch::Receiver<Option<FlightResult>>),
}

/// Held by the request that fetches; dropping it without `finish` makes the waiters fetch
/// on their own.
pub struct WriterGuard<'a> {
    inflight: &'a Inflight,
    key: CacheKey,
    flight: Arc<Flight>,
}

impl Inflight {
    /// Joins the fetch for `key` as a waiter, or becomes its writer when there is none, the
    /// current writer has been at it longer than `writer_age`, or it started before the
    /// entity's latest change (`epoch`), so that its result could not be used.
    pub fn join(&self, key: CacheKey, writer_age: Duration, epoch: u64) -> Role<'_> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            if flight.started.elapsed() < writer_age && flight.epoch >= epoch {
                return Role::Waiter(flight.result.subscribe());
            }
        }
        let (result, _) = watch::channel(None);
        let flight = Arc::new(Flight {
            started: Instant::now(),
            epoch,
            result,
        });
        flights.insert(key, flight.clone());
        Role::Writer(WriterGuard {
            inflight: self,
            key,
            flight,
        })
    }
}

impl WriterGuard<'_> {
    /// Hands the result to the waiters.
    pub fn finish(self, result: FlightResult) {
        let _ = self.flight.result.send(Some(result));
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // Waiters that got no result fetch on their own.
        self.flight.result.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(FlightResult::Unusable);
                true
            } else {
                false
            }
        });
        let mut flights = self
            .inflight
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A newer writer may have replaced this flight after `writer_age`; leave it.
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

/// Waits at most `timeout` for the writer; `None` means fetch on your own.
pub async fn wait(
    mut receiver: watch::Receiver<Option<FlightResult>>,
    timeout: Duration,
) -> Option<Arc<CacheEntry>> {
    let outcome = tokio::time::timeout(timeout, receiver.wait_for(Option::is_some)).await;
    match outcome {
        Ok(Ok(result)) => match result.as_ref() {
            Some(FlightResult::Shared(entry)) => Some(entry.clone()),
            _ => None,
        },
        _ => None,
    }
}
