//! Fingerprints: blake3 over the canonical JSON of an entity's masked state.

use serde_json::Value;

use super::canonical::write_canonical;
use super::mask::Mask;

/// A 32-byte blake3 digest of an entity's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a deleted entity (the source answered 404 or 410).
    pub fn deleted() -> Self {
        Self(*blake3::hash(b"ekko deleted entity v1").as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// What was hashed, for `ekko fingerprint` and tests.
#[derive(Debug, Clone)]
pub struct Computed {
    /// The canonical text that was hashed.
    pub canonical: String,
    /// Concrete pointers that the mask removed.
    pub removed: Vec<String>,
    /// The digest.
    pub fingerprint: Fingerprint,
}

/// Masks `state`, canonicalizes it and hashes it. The input is consumed because masking edits it.
pub fn compute(mut state: Value, mask: &Mask) -> Computed {
    let removed = mask.apply(&mut state);
    let mut canonical = String::new();
    write_canonical(&state, &mut canonical);
    // A domain prefix keeps state digests apart from the deleted marker.
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ekko state v1\0");
    hasher.update(canonical.as_bytes());
    Computed {
        canonical,
        removed,
        fingerprint: Fingerprint(*hasher.finalize().as_bytes()),
    }
}
