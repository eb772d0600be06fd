//! Checks that an exchange exists before the first publish to it, so that a missing exchange
//! closes a short-lived probe channel instead of the shared confirm-mode channel.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ErrorKind, ExchangeKind};

/// Maximum number of exchange names remembered as existing per upstream. The least recently
/// used name is dropped first, and a dropped name is checked again before its next publish.
pub(super) const MAX_KNOWN_EXCHANGES: usize = 1024;

/// Exchange names that a passive declare found on the broker, least recently used first
/// out. An exchange deleted after it was remembered still closes the shared channel on
/// its next publish, and the publish path then removes it from this set.
pub(super) struct KnownExchanges {
    names: Mutex<lru::LruCache<String, ()>>,
}

impl KnownExchanges {
    pub(super) fn new() -> Self {
        let capacity = NonZeroUsize::new(MAX_KNOWN_EXCHANGES).unwrap_or(NonZeroUsize::MIN);
        Self {
            names: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// Returns whether `exchange` needs no check: it is remembered as existing, or it is
    /// the default exchange `""`, which every AMQP 0-9-1 broker has.
    pub(super) fn contains(&self, exchange: &str) -> bool {
        exchange.is_empty() || self.lock().get(exchange).is_some()
    }

    pub(super) fn insert(&self, exchange: &str) {
        self.lock().put(exchange.to_owned(), ());
    }

    pub(super) fn forget(&self, exchange: &str) {
        self.lock().pop(exchange);
    }

    /// Forgets every name, for a new connection: exchanges may have changed while ekko was
    /// disconnected.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, ()>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks whether `exchange` exists with a passive `exchange.declare` on a new channel,
/// which the broker closes with 404 NOT_FOUND when it does not. Returns `Ok(false)` for a
/// missing exchange.
///
/// # Errors
///
/// Returns the client error when the channel cannot be opened or the broker replies with
/// another error.
pub(super) async fn exchange_exists(
    connection: &Connection,
    exchange: &str,
) -> Result<bool, lapin::Error> {
    // Dropping the last handle of the probe channel closes it in the background, so a
    // completed probe costs no extra round trip.
    let channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    // A passive declare ignores the exchange type, so any type works here.
    let declared = channel
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(()) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Returns whether the broker closed a channel with 404 NOT_FOUND.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exchange_needs_no_check() {
        let known = KnownExchanges::new();
        assert!(known.contains(""));
        assert!(!known.contains("hr"));
    }

    #[test]
    fn forgotten_exchange_is_checked_again() {
        let known = KnownExchanges::new();
        known.insert("hr");
        assert!(known.contains("hr"));
        known.forget("hr");
        assert!(!known.contains("hr"));
    }

    #[test]
    fn least_recently_used_name_is_dropped() {
        let known = KnownExchanges::new();
        for index in 0..MAX_KNOWN_EXCHANGES {
            known.insert(&format!("hr-{index}"));
        }
        assert!(known.contains("hr-0"), "using hr-0 makes hr-1 the oldest");
        known.insert("hr-new");
        assert!(known.contains("hr-new"));
        assert!(known.contains("hr-0"));
        assert!(!known.contains("hr-1"));
        assert!(known.contains(&format!("hr-{}", MAX_KNOWN_EXCHANGES - 1)));
    }

    #[test]
    fn clear_forgets_every_name() {
        let known = KnownExchanges::new();
        known.insert("hr-a");
        known.insert("hr-b");
        known.clear();
        assert!(!known.contains("hr-a"));
        assert!(!known.contains("hr-b"));
    }
}
