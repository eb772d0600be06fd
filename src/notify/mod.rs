//! Producer path: decode the notification, fingerprint the entity, decide, forward, commit.

pub mod canonical;
pub mod envelope;
pub mod fingerprint;
pub mod mask;
