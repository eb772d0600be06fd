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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mask(pointers: &[&str]) -> Mask {
        let owned: Vec<String> = pointers.iter().map(|p| (*p).to_owned()).collect();
        Mask::parse(&owned).expect("valid mask")
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn member_order_and_whitespace_are_ignored() {
        let first = compute(
            parse(r#"{"id":"7","name":{"given":"Ada","family":"Lovelace"}}"#),
            &Mask::default(),
        );
        let second = compute(
            parse(
                "{ \"name\" : { \"family\": \"Lovelace\", \"given\": \"Ada\" },\n \"id\": \"7\" }",
            ),
            &Mask::default(),
        );
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.canonical, second.canonical);
    }

    #[test]
    fn masked_field_change_is_ignored() {
        let ignore = mask(&["/meta/lastModified"]);
        let first = compute(
            json!({"id": 1, "meta": {"lastModified": "2024-01-01"}}),
            &ignore,
        );
        let second = compute(
            json!({"id": 1, "meta": {"lastModified": "2024-06-30"}}),
            &ignore,
        );
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.removed, ["/meta/lastModified"]);
    }

    #[test]
    fn unmasked_field_change_is_detected() {
        let ignore = mask(&["/meta/lastModified"]);
        let first = compute(json!({"id": 1, "active": true, "meta": {}}), &ignore);
        let second = compute(json!({"id": 1, "active": false, "meta": {}}), &ignore);
        assert_ne!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn large_counter_change_is_detected() {
        // Both counters round to the same double, so RFC 8785 alone would hash them equally.
        let first = compute(
            json!({"version": 9_007_199_254_740_993_u64}),
            &Mask::default(),
        );
        let second = compute(
            json!({"version": 9_007_199_254_740_992_u64}),
            &Mask::default(),
        );
        assert_ne!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn computed_reports_canonical_text_and_removals() {
        let computed = compute(
            json!({"b": [1, 2.5], "a": "x", "etag": "W/1"}),
            &mask(&["/etag"]),
        );
        assert_eq!(computed.canonical, r#"{"a":"x","b":[1,2.5]}"#);
        assert_eq!(computed.removed, ["/etag"]);
    }

    #[test]
    fn digest_covers_domain_prefix_and_canonical_text() {
        let computed = compute(json!({"id": 1}), &Mask::default());
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ekko state v1\0{\"id\":1}");
        assert_eq!(computed.fingerprint.0, *hasher.finalize().as_bytes());
    }

    #[test]
    fn deleted_marker_differs_from_states() {
        let deleted = Fingerprint::deleted();
        assert_eq!(deleted, Fingerprint::deleted());
        for state in [json!(null), json!({}), json!("ekko deleted entity v1")] {
            assert_ne!(compute(state, &Mask::default()).fingerprint, deleted);
        }
    }

    #[test]
    fn hex_is_lowercase_and_complete() {
        let fingerprint = Fingerprint([0xAB; 32]);
        assert_eq!(fingerprint.to_hex(), "ab".repeat(32));
    }
}
