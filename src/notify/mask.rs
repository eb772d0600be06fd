//! Masks: JSON pointers with `*` wildcards that remove volatile fields before hashing.
//!
//! A mask pointer is an RFC 6901 JSON pointer (`/meta/lastModified`, with `~0` for `~` and
//! `~1` for `/` inside a token) where a token that is exactly `*` matches every array element
//! and every object member at that level. So an object member literally named `*` cannot be
//! addressed on its own: `/*` always matches all members, including one named `*`.
//!
//! A matched object member is removed from its object. A matched array element is replaced by
//! JSON `null` instead of being removed, because removing it would shift the indices of the
//! elements after it and change what the remaining array means.

use std::fmt::Write as _;

use serde_json::Value;

/// Invalid mask pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON pointer `{pointer}`: {reason}")]
pub struct MaskError {
    /// The pointer as written.
    pub pointer: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// A compiled list of mask pointers. The default mask contains no pointer and removes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mask {
    /// The pointers as written, sorted and without duplicates.
    pointers: Vec<String>,
    /// The pointers merged into one tree whose wildcard branches are copied into their sibling
    /// member branches, so walking a document follows exactly one node per level.
    root: Node,
}

/// One reference token of a mask pointer, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: every array element and every object member.
    Any,
    /// An object member name. `index` is its value as an array index when the name is a
    /// decimal number without leading zeros (RFC 6901 §4).
    Member { name: String, index: Option<usize> },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// A pointer ends here, so the value reached is masked.
    terminal: bool,
    children: Vec<(Token, Node)>,
}

impl Mask {
    /// Compiles pointers such as `/meta/lastModified` or `/emails/*/verifiedAt`.
    ///
    /// Each pointer must start with `/` (RFC 6901), and `~` must be followed by `0` or `1`.
    ///
    /// # Errors
    ///
    /// Returns a [`MaskError`] for the first invalid pointer: the empty pointer (which would
    /// mask the whole document), a pointer without a leading `/`, or an invalid `~` escape.
    pub fn parse(pointers: &[String]) -> Result<Self, MaskError> {
        let mut root = Node::default();
        for pointer in pointers {
            let tokens = parse_pointer(pointer)?;
            root.insert(&tokens);
        }
        root.spread_wildcards();

        let mut sorted = pointers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        Ok(Self {
            pointers: sorted,
            root,
        })
    }

    /// Returns the compiled pointers as written, sorted and without duplicates.
    pub fn pointers(&self) -> &[String] {
        &self.pointers
    }

    /// Removes every matching field and returns the concrete pointers removed, in document order.
    ///
    /// A matched object member is removed. A matched array element is replaced by `null` so the
    /// indices of the other elements stay the same. Document order is the order in which
    /// `serde_json`'s map iterates the members, which is sorted by name in ekko's build.
    /// A pointer whose path does not exist in `value` is skipped. When one match contains
    /// another, only the outer one is masked and returned.
    ///
    /// The returned pointers are plain RFC 6901 pointers with `~0` and `~1` escapes, so a
    /// removed member literally named `*` is returned as `/*`.
    pub fn apply(&self, value: &mut Value) -> Vec<String> {
        let mut removed = Vec::new();
        let mut path = String::new();
        mask_value(value, &self.root, &mut path, &mut removed);
        removed
    }

    /// Returns a stable digest of the compiled pointers: the first 8 bytes, little endian, of a
    /// blake3 hash over the sorted, deduplicated pointers.
    ///
    /// The caller stores it per entity to tell whether a stored fingerprint was computed with
    /// the same mask. Pointer order and duplicates do not change it. Two masks that match the
    /// same fields but are written differently (`/a/*` versus `/a/*` plus `/a/b`) get different
    /// digests, which at worst makes the caller forward one notification that was unchanged.
    pub fn spec_hash(&self) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ekko mask v1\0");
        for pointer in &self.pointers {
            // The length prefix keeps `["/a", "/b"]` apart from a single pointer `/a/b`.
            hasher.update(&(pointer.len() as u64).to_le_bytes());
            hasher.update(pointer.as_bytes());
        }

        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

fn parse_pointer(pointer: &str) -> Result<Vec<Token>, MaskError> {
    let invalid = |reason: String| MaskError {
        pointer: pointer.to_owned(),
        reason,
    };
    if pointer.is_empty() {
        return Err(invalid(
            "the empty pointer would mask the whole document and give every state the same \
             fingerprint, so name a field instead, such as `/meta/lastModified`"
                .to_owned(),
        ));
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(invalid(format!(
            "a JSON pointer must start with `/` (RFC 6901), so write `/{pointer}` instead"
        )));
    };

    rest.split('/')
        .map(|raw| parse_token(raw).map_err(invalid))
        .collect()
}

fn parse_token(raw: &str) -> Result<Token, String> {
    if raw == "*" {
        return Ok(Token::Any);
    }

    let mut name = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => name.push('~'),
            Some('1') => name.push('/'),
            _ => {
                return Err(format!(
                    "`~` in token `{raw}` must be followed by `0` or `1` (RFC 6901), \
                     so write `~0` for a literal `~` and `~1` for `/`"
                ))
            }
        }
    }

    let index = parse_array_index(&name);
    Ok(Token::Member { name, index })
}

/// Parses an RFC 6901 array index: `0` or decimal digits without a leading zero. An index too
/// large for `usize` is treated as a member name only, since no array can be that long.
fn parse_array_index(name: &str) -> Option<usize> {
    let digits_only = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (name.len() > 1 && name.starts_with('0')) {
        return None;
    }
    name.parse().ok()
}

impl Node {
    fn insert(&mut self, tokens: &[Token]) {
        let Some((first, rest)) = tokens.split_first() else {
            self.terminal = true;
            return;
        };
        let position = match self.children.iter().position(|(token, _)| token == first) {
            Some(position) => position,
            None => {
                self.children.push((first.clone(), Node::default()));
                self.children.len() - 1
            }
        };
        self.children[position].1.insert(rest);
    }

    /// Adds every pointer of `other` to `self`.
    fn merge(&mut self, other: &Node) {
        self.terminal |= other.terminal;
        for (token, other_child) in &other.children {
            match self.children.iter_mut().find(|(own, _)| own == token) {
                Some((_, child)) => child.merge(other_child),
                None => self.children.push((token.clone(), other_child.clone())),
            }
        }
    }

    /// Copies the `*` branch into each member branch at every level, so a member that has its
    /// own branch is matched by that branch alone.
    fn spread_wildcards(&mut self) {
        let any = self.any_child().cloned();
        if let Some(any) = any {
            for (token, child) in &mut self.children {
                if matches!(token, Token::Member { .. }) {
                    child.merge(&any);
                }
            }
        }
        for (_, child) in &mut self.children {
            child.spread_wildcards();
        }
    }

    fn any_child(&self) -> Option<&Node> {
        self.children
            .iter()
            .find(|(token, _)| *token == Token::Any)
            .map(|(_, child)| child)
    }

    fn child_for_member(&self, member: &str) -> Option<&Node> {
        let exact = self.children.iter().find(|(token, _)| match token {
            Token::Member { name, .. } => name == member,
            Token::Any => false,
        });
        exact.map(|(_, child)| child).or_else(|| self.any_child())
    }

    fn child_for_index(&self, position: usize) -> Option<&Node> {
        let exact = self.children.iter().find(|(token, _)| match token {
            Token::Member { index, .. } => *index == Some(position),
            Token::Any => false,
        });
        exact.map(|(_, child)| child).or_else(|| self.any_child())
    }
}

/// Masks the matches of `node`'s children inside `value`. `path` is the escaped pointer of
/// `value` and is restored before returning.
fn mask_value(value: &mut Value, node: &Node, path: &mut String, removed: &mut Vec<String>) {
    if node.children.is_empty() {
        return;
    }
    match value {
        Value::Object(map) => map.retain(|name, member| {
            let Some(child) = node.child_for_member(name) else {
                return true;
            };
            let parent_len = path.len();
            push_escaped_token(path, name);
            let keep = mask_or_descend(member, child, path, removed);
            path.truncate(parent_len);
            keep
        }),
        Value::Array(items) => {
            for (position, item) in items.iter_mut().enumerate() {
                let Some(child) = node.child_for_index(position) else {
                    continue;
                };
                let parent_len = path.len();
                // Writing to a `String` cannot fail.
                let _ = write!(path, "/{position}");
                if !mask_or_descend(item, child, path, removed) {
                    *item = Value::Null;
                }
                path.truncate(parent_len);
            }
        }
        _ => {}
    }
}

/// Records `path` and returns false when `child` ends a pointer, so the caller masks `value`.
/// Otherwise masks inside `value` and returns true.
fn mask_or_descend(
    value: &mut Value,
    child: &Node,
    path: &mut String,
    removed: &mut Vec<String>,
) -> bool {
    if child.terminal {
        removed.push(path.clone());
        return false;
    }
    mask_value(value, child, path, removed);
    true
}

/// Appends `/` and `name` with RFC 6901 escapes (`~` as `~0`, `/` as `~1`).
fn push_escaped_token(path: &mut String, name: &str) {
    path.push('/');
    for c in name.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            _ => path.push(c),
        }
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

    fn parse_error(pointer: &str) -> MaskError {
        Mask::parse(&[pointer.to_owned()]).expect_err("invalid mask")
    }

    #[test]
    fn empty_pointer_is_rejected() {
        let error = parse_error("");
        assert_eq!(error.pointer, "");
        assert!(error.reason.contains("whole document"), "{error}");
    }

    #[test]
    fn pointer_without_slash_is_rejected() {
        let error = parse_error("meta/lastModified");
        assert!(error.reason.contains("must start with `/`"), "{error}");
        assert!(error.reason.contains("`/meta/lastModified`"), "{error}");
    }

    #[test]
    fn invalid_tilde_escape_is_rejected() {
        for pointer in ["/a~2b", "/a~", "/~/x"] {
            let error = parse_error(pointer);
            assert_eq!(error.pointer, pointer);
            assert!(error.reason.contains("`~0`"), "{error}");
        }
    }

    #[test]
    fn object_member_is_removed() {
        let mut value = json!({"meta": {"lastModified": "2024-01-01", "version": 3}, "id": 1});
        let removed = mask(&["/meta/lastModified"]).apply(&mut value);
        assert_eq!(removed, ["/meta/lastModified"]);
        assert_eq!(value, json!({"meta": {"version": 3}, "id": 1}));
    }

    #[test]
    fn escaped_names_round_trip() {
        let mut value = json!({"a/b": 1, "c~d": 2, "e": 3});
        let removed = mask(&["/a~1b", "/c~0d"]).apply(&mut value);
        assert_eq!(removed, ["/a~1b", "/c~0d"]);
        assert_eq!(value, json!({"e": 3}));
    }

    #[test]
    fn wildcard_matches_every_array_element() {
        let mut value = json!({"emails": [
            {"value": "a@example.org", "verifiedAt": 1},
            {"value": "b@example.org"},
            {"value": "c@example.org", "verifiedAt": 3},
        ]});
        let removed = mask(&["/emails/*/verifiedAt"]).apply(&mut value);
        assert_eq!(removed, ["/emails/0/verifiedAt", "/emails/2/verifiedAt"]);
        let expected = json!({"emails": [
            {"value": "a@example.org"},
            {"value": "b@example.org"},
            {"value": "c@example.org"},
        ]});
        assert_eq!(value, expected);
    }

    #[test]
    fn wildcard_matches_every_object_member() {
        let mut value = json!({"meta": {"created": 1, "etag": "x"}, "id": 7});
        let removed = mask(&["/meta/*"]).apply(&mut value);
        assert_eq!(removed, ["/meta/created", "/meta/etag"]);
        assert_eq!(value, json!({"meta": {}, "id": 7}));
    }

    #[test]
    fn final_array_element_becomes_null() {
        let mut value = json!({"tags": ["a", "b", "c"]});
        let removed = mask(&["/tags/1"]).apply(&mut value);
        assert_eq!(removed, ["/tags/1"]);
        assert_eq!(value, json!({"tags": ["a", null, "c"]}));
    }

    #[test]
    fn missing_path_is_skipped() {
        let original = json!({"a": {"b": [1, 2]}, "c": "text"});
        let mut value = original.clone();
        let removed = mask(&["/x", "/a/b/5", "/a/b/0/deeper", "/c/0", "/a/b/x"]).apply(&mut value);
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(value, original);
    }

    #[test]
    fn leading_zero_is_not_an_index() {
        let mut value = json!({"list": [1, 2], "map": {"01": 1, "1": 2}});
        let removed = mask(&["/list/01", "/map/01"]).apply(&mut value);
        assert_eq!(removed, ["/map/01"]);
        assert_eq!(value, json!({"list": [1, 2], "map": {"1": 2}}));
    }

    #[test]
    fn numeric_token_matches_object_member() {
        let mut value = json!({"0": "zero", "1": "one"});
        let removed = mask(&["/0"]).apply(&mut value);
        assert_eq!(removed, ["/0"]);
        assert_eq!(value, json!({"1": "one"}));
    }

    #[test]
    fn wildcard_and_concrete_branches_combine() {
        let mut value = json!({"a": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]});
        let removed = mask(&["/a/0/y", "/a/*/x"]).apply(&mut value);
        assert_eq!(removed, ["/a/0/x", "/a/0/y", "/a/1/x"]);
        assert_eq!(value, json!({"a": [{}, {"y": 4}]}));
    }

    #[test]
    fn outer_match_hides_inner_match() {
        let mut value = json!({"a": {"b": 1}, "c": 2});
        let removed = mask(&["/a/b", "/a"]).apply(&mut value);
        assert_eq!(removed, ["/a"]);
        assert_eq!(value, json!({"c": 2}));
    }

    #[test]
    fn removed_pointers_follow_document_order() {
        let mut value = json!({"z": 1, "a": 2, "m": [0, 1]});
        let removed = mask(&["/z", "/m/1", "/a", "/m/0"]).apply(&mut value);
        assert_eq!(removed, ["/a", "/m/0", "/m/1", "/z"]);
    }

    #[test]
    fn member_named_star_matches_wildcard() {
        let mut value = json!({"*": 1, "b": 2});
        let removed = mask(&["/*"]).apply(&mut value);
        assert_eq!(removed, ["/*", "/b"]);
        assert_eq!(value, json!({}));
    }

    #[test]
    fn empty_member_name_is_addressable() {
        let mut value = json!({"": 1, "a": {"": 2}});
        let removed = mask(&["/a/"]).apply(&mut value);
        assert_eq!(removed, ["/a/"]);
        assert_eq!(value, json!({"": 1, "a": {}}));
    }

    #[test]
    fn default_mask_removes_nothing() {
        let original = json!({"a": 1});
        let mut value = original.clone();
        assert!(Mask::default().apply(&mut value).is_empty());
        assert_eq!(value, original);
        assert!(Mask::default().pointers().is_empty());
    }

    #[test]
    fn spec_hash_ignores_order_and_duplicates() {
        let first = mask(&["/a", "/b/*"]);
        let second = mask(&["/b/*", "/a", "/a"]);
        assert_eq!(first.spec_hash(), second.spec_hash());
        assert_eq!(first.pointers(), ["/a", "/b/*"]);
    }

    #[test]
    fn spec_hash_differs_between_masks() {
        let hashes = [
            Mask::default().spec_hash(),
            mask(&["/a"]).spec_hash(),
            mask(&["/a/b"]).spec_hash(),
            mask(&["/a", "/b"]).spec_hash(),
            mask(&["/a/*"]).spec_hash(),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn spec_hash_follows_documented_encoding() {
        // Callers store this digest per entity, so its encoding is fixed: a domain tag, then
        // each sorted pointer as a little-endian u64 length and its bytes.
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ekko mask v1\0");
        for pointer in ["/emails/*/verifiedAt", "/meta/lastModified"] {
            hasher.update(&(pointer.len() as u64).to_le_bytes());
            hasher.update(pointer.as_bytes());
        }
        let digest = hasher.finalize();
        let expected = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));

        let hash = mask(&["/meta/lastModified", "/emails/*/verifiedAt"]).spec_hash();
        assert_eq!(hash, expected);
    }
}
