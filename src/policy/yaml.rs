//! Policy YAML read into a tree whose every node and mapping key carries its line.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, NonFiniteFloatPolicy, Spanned};

/// One YAML node and the 1-based line where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub line: u64,
    pub value: Value,
}

/// The content of a node. Mappings keep their entries in document order, duplicates included,
/// so that validation can report each duplicate key.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Map(Vec<Entry>),
    Seq(Vec<Node>),
    Scalar(Scalar),
    Null,
}

/// One mapping entry: the key's text and line, and the value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub key: String,
    pub line: u64,
    pub value: Node,
}

/// The type that YAML resolved a plain scalar to (YAML 1.2 core schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScalarKind {
    Str,
    Int,
    Float,
    Bool,
}

/// A non-null scalar as text.
///
/// `source` is the text as written when `${VAR}` references were substituted, so that an
/// error message can show it in place of the substituted text, which may contain a secret.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
    pub source: Option<String>,
}

impl Scalar {
    fn new(text: String, kind: ScalarKind) -> Self {
        Self {
            text,
            kind,
            source: None,
        }
    }

    /// Describes the value for an error message without revealing substituted variables.
    pub fn message_text(&self) -> String {
        match &self.source {
            None => format!("`{}`", self.text),
            Some(source) => format!("`{source}` after substitution (value not shown)"),
        }
    }

    /// Describes a URL for an error message like [`Scalar::message_text`], with everything
    /// between the scheme and the last `@` shown as `***`, because that part may contain a
    /// password, even in a URL too malformed to split into its parts.
    pub fn url_message_text(&self) -> String {
        if self.source.is_some() {
            return self.message_text();
        }
        let (scheme, rest) = match self.text.split_once("://") {
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), self.text.as_str()),
        };
        match rest.rsplit_once('@') {
            Some((_, host)) => format!("`{scheme}***@{host}`"),
            None => self.message_text(),
        }
    }
}

/// A YAML syntax error: the parser's message and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    pub line: u64,
    pub message: String,
}

/// Parses one YAML document into a [`Node`] tree.
///
/// Duplicate keys are kept (validation reports them), booleans are only `true`/`false`,
/// and merge keys (`<<`) are expanded as YAML 1.1 defines them.
pub(super) fn read(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
        with_snippet: false,
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
    };
    match serde_saphyr::from_str_with_options::<Option<Node>>(text, options) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Ok(Node {
            line: 1,
            value: Value::Null,
        }),
        Err(err) => Err(SyntaxError {
            line: err.location().map_or(0, |at| at.line()),
            message: err.to_string(),
        }),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            line: spanned.referenced.line(),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML mapping, sequence or scalar")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Bool)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Int)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Int)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Int)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Int)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_string(), ScalarKind::Float)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v.to_owned(), ScalarKind::Str)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::new(v, ScalarKind::Str)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let Value::Scalar(scalar) = key.value else {
                return Err(de::Error::custom(
                    "mapping keys must be plain scalars such as `timeout`",
                ));
            };
            let value = map.next_value::<Node>()?;
            entries.push(Entry {
                key: scalar.text,
                line: key.line,
                value,
            });
        }
        Ok(Value::Map(entries))
    }
}

/// A `${VAR}` reference that could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SubstitutionFailure {
    pub line: u64,
    pub path: String,
    pub message: String,
}

/// The outcome of [`substitute_variables`].
#[derive(Debug, Default)]
pub(super) struct SubstitutionReport {
    /// Variables that were substituted, as (name, value), one entry per use.
    pub used: Vec<(String, String)>,
    pub failures: Vec<SubstitutionFailure>,
}

/// Replaces `${NAME}` with `env(NAME)` in every string scalar of the tree, and `$${` with `${`.
///
/// Keys are left as they are. A scalar with a substitution gets its written text in
/// [`Scalar::source`]. Each unset variable, invalid name or unclosed `${` is one failure.
pub(super) fn substitute_variables(
    node: &mut Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> SubstitutionReport {
    let mut report = SubstitutionReport::default();
    substitute_node(node, "", env, &mut report);
    report
}

fn substitute_node(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut SubstitutionReport,
) {
    let line = node.line;
    match &mut node.value {
        Value::Map(entries) => {
            for entry in entries {
                let child = join_key(path, &entry.key);
                substitute_node(&mut entry.value, &child, env, report);
            }
        }
        Value::Seq(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute_node(item, &format!("{path}[{index}]"), env, report);
            }
        }
        Value::Scalar(scalar) if scalar.kind == ScalarKind::Str && scalar.text.contains('$') => {
            let result = substitute(&scalar.text, env);
            for message in result.errors {
                let path = path.to_owned();
                report.failures.push(SubstitutionFailure {
                    line,
                    path,
                    message,
                });
            }
            if result.used.is_empty() {
                scalar.text = result.text;
            } else {
                scalar.source = Some(std::mem::replace(&mut scalar.text, result.text));
                report.used.extend(result.used);
            }
        }
        Value::Scalar(_) | Value::Null => {}
    }
}

/// The result of substituting `${VAR}` references in one string.
struct Substitution {
    text: String,
    /// Variables that were substituted, with their values.
    used: Vec<(String, String)>,
    errors: Vec<String>,
}

/// Replaces `${NAME}` with `env(NAME)` and `$${` with `${` in one string. Any other `$` stays.
fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Substitution {
    let mut result = Substitution {
        text: String::with_capacity(text.len()),
        used: Vec::new(),
        errors: Vec::new(),
    };
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        result.text.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            result.text.push_str("${");
            rest = tail;
            continue;
        }
        let Some(tail) = after.strip_prefix("${") else {
            result.text.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(close) = tail.find('}') else {
            result.errors.push("`${` has no closing `}`; write a variable as `${NAME}`, or a literal `${` as `$${`".to_owned());
            return result;
        };
        substitute_variable(&tail[..close], env, &mut result);
        rest = &tail[close + 1..];
    }
    result.text.push_str(rest);
    result
}

fn substitute_variable(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    result: &mut Substitution,
) {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        result.errors.push(format!(
            "`${{{name}}}` is not a valid variable name; use letters, digits and `_`, or write a literal `${{` as `$${{`"
        ));
        return;
    }
    match env(name) {
        Some(value) => {
            result.text.push_str(&value);
            result.used.push((name.to_owned(), value));
        }
        None => result.errors.push(format!(
            "environment variable `{name}` is not set; set it, or write a literal `${{` as `$${{`"
        )),
    }
}

/// Joins `key` to its parent's dotted key path, as in `upstreams.mq.timeout`.
pub(super) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn scalar(text: &str, kind: ScalarKind) -> Value {
        Value::Scalar(Scalar::new(text.to_owned(), kind))
    }

    #[test]
    fn entries_carry_key_lines() {
        let node = read("a: 1\nb:\n  c: x\n  d: [true, 1.5]\n").unwrap();
        let Value::Map(entries) = node.value else {
            panic!("root is not a mapping: {node:?}");
        };
        assert_eq!(entries[0].key, "a");
        assert_eq!(entries[0].line, 1);
        assert_eq!(entries[0].value.value, scalar("1", ScalarKind::Int));
        assert_eq!(entries[1].line, 2);
        let Value::Map(inner) = &entries[1].value.value else {
            panic!("`b` is not a mapping");
        };
        assert_eq!(inner[1].line, 4);
        let Value::Seq(items) = &inner[1].value.value else {
            panic!("`d` is not a sequence");
        };
        assert_eq!(items[0].value, scalar("true", ScalarKind::Bool));
        assert_eq!(items[1].value, scalar("1.5", ScalarKind::Float));
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let node = read("a: 1\na: 2\n").unwrap();
        let Value::Map(entries) = node.value else {
            panic!("root is not a mapping");
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].line, 2);
    }

    #[test]
    fn yaml_11_booleans_stay_strings() {
        let node = read("a: yes\nb: ~\nc: '30'\n").unwrap();
        let Value::Map(entries) = node.value else {
            panic!("root is not a mapping");
        };
        assert_eq!(entries[0].value.value, scalar("yes", ScalarKind::Str));
        assert_eq!(entries[1].value.value, Value::Null);
        assert_eq!(entries[2].value.value, scalar("30", ScalarKind::Str));
    }

    #[test]
    fn syntax_error_has_line() {
        let err = read("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "line {} of {err:?}", err.line);
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(read("# nothing\n").unwrap().value, Value::Null);
    }

    #[test]
    fn substitution_replaces_and_escapes() {
        let env = |name: &str| (name == "A").then(|| "x".to_owned());
        let result = substitute("a${A}b$${A}c$d", &env);
        assert_eq!(result.text, "axb${A}c$d");
        assert_eq!(result.used, vec![("A".to_owned(), "x".to_owned())]);
        assert!(result.errors.is_empty());
    }

    #[test]
    fn substituted_scalar_keeps_written_text() {
        let mut node = read("a:\n  - \"x${A}\"\n  - ${B}\n").unwrap();
        let env = |name: &str| (name == "A").then(|| "1".to_owned());
        let report = substitute_variables(&mut node, &env);
        assert_eq!(report.used, vec![("A".to_owned(), "1".to_owned())]);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].path, "a[1]");
        assert_eq!(report.failures[0].line, 3);
        let Value::Map(entries) = &node.value else {
            panic!("root is not a mapping");
        };
        let Value::Seq(items) = &entries[0].value.value else {
            panic!("`a` is not a list");
        };
        let Value::Scalar(first) = &items[0].value else {
            panic!("item is not a scalar");
        };
        assert_eq!(first.text, "x1");
        assert_eq!(first.source.as_deref(), Some("x${A}"));
    }

    #[test]
    fn substitution_reports_bad_references() {
        assert_eq!(substitute("${B}", &no_env).errors.len(), 1);
        assert_eq!(substitute("${1X}", &no_env).errors.len(), 1);
        assert_eq!(substitute("${OPEN", &no_env).errors.len(), 1);
    }
}
