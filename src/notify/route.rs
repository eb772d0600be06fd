//! Notification routes compiled for matching: masks parsed, fingerprint settings hashed.

use http::Method;

use super::mask::{Mask, MaskError};
use crate::policy::{FingerprintSource, NotificationRoute};

/// A route ready for requests.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// The route as the policy states it.
    pub route: NotificationRoute,
    /// The compiled `fingerprint.ignore` pointers.
    pub mask: Mask,
    /// Digest of the fingerprint settings, stored with each fingerprint. A stored
    /// fingerprint with another digest was made under other settings and is not compared,
    /// so changing the mask makes the next notification per entity pass instead of
    /// looking like a change of every entity's state.
    pub spec: u64,
}

/// A matched route and the values captured from the request path.
pub struct Matched<'a> {
    /// The route.
    pub route: &'a CompiledRoute,
    /// `{name}` captures from `match.path`, percent-decoded.
    pub captures: Vec<(String, String)>,
}

impl CompiledRoute {
    /// Compiles one route; fails only on a mask that policy validation should have caught.
    pub fn compile(route: NotificationRoute) -> Result<Self, MaskError> {
        let mask = Mask::parse(&route.fingerprint.ignore)?;
        let mut hasher = blake3::Hasher::new();
        match &route.fingerprint.source {
            FingerprintSource::Payload => hasher.update(b"payload"),
            FingerprintSource::Lookup { upstream, path } => {
                hasher
                    .update(b"lookup\0")
                    .update(upstream.as_bytes())
                    .update(b"\0");
                hasher.update(path.to_string().as_bytes())
            }
            FingerprintSource::None => hasher.update(b"none"),
        };
        hasher.update(&mask.spec_hash().to_le_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        Ok(Self {
            route,
            mask,
            spec: u64::from_le_bytes(first),
        })
    }
}

/// Outcome of matching a request against the routes.
pub enum RouteMatch<'a> {
    /// A route matches method and path.
    Found(Matched<'a>),
    /// Some route matches the path but none the method; the value lists allowed methods.
    WrongMethod(Vec<Method>),
    /// No route matches the path.
    NotFound,
}

/// Finds the first route matching `method` and `path`, in policy order.
pub fn find<'a>(routes: &'a [CompiledRoute], method: &Method, path: &str) -> RouteMatch<'a> {
    let mut allowed = Vec::new();
    for route in routes {
        let Some(captures) = route.route.path.matches(path) else {
            continue;
        };
        if route.route.method == *method {
            return RouteMatch::Found(Matched { route, captures });
        }
        allowed.push(route.route.method.clone());
    }
    if allowed.is_empty() {
        RouteMatch::NotFound
    } else {
        RouteMatch::WrongMethod(allowed)
    }
}
