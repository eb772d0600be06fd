//! Consumer path: lookups through a cache with coalescing, RFC 9111 rules and
//! change-driven invalidation.

pub mod rules;
pub mod store;
