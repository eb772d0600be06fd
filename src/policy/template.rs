//! Path patterns that match requests and templates that build entity keys and lookup paths.

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in one path segment: RFC 3986 unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters escaped in an entity key value: `%` and `/`, so that a value can never
/// imitate another key's separator (`a/b` + `c` versus `a` + `b/c`).
const KEY_VALUE: &AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b'/');

/// Error in a template or pattern, reported by policy validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`, or the reverse.
    #[error("unbalanced braces in `{0}`: write a placeholder as `{{name}}`")]
    Unbalanced(String),
    /// A placeholder whose name is empty or not `[A-Za-z0-9_]`.
    #[error("invalid placeholder name `{0}`: use letters, digits and `_`")]
    BadName(String),
    /// A path pattern that does not start with `/`.
    #[error("path `{0}` must start with `/`")]
    NotAbsolute(String),
    /// A placeholder that is not the whole path segment.
    #[error("placeholder in `{0}` must fill a whole path segment, as in `/a/{{id}}/b`")]
    PartialSegment(String),
}

/// Why a path could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The named field has no value.
    Missing(String),
    /// The named field's value is `.` or `..`.
    DotSegment(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A string with `{name}` placeholders, such as `hr/person/{subject}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template; `{{` and `}}` are not supported, so braces always delimit a name.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::Unbalanced(text.to_owned()));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find(['{', '}'])
                .filter(|&i| after.as_bytes()[i] == b'}')
                .ok_or_else(|| TemplateError::Unbalanced(text.to_owned()))?;
            let name = &after[..close];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            parts.push(Part::Field(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self {
            source: text.to_owned(),
            parts,
        })
    }

    /// Names of the placeholders, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders an entity key: values have `%`, `/` and control characters percent-encoded.
    ///
    /// Returns the name of the first placeholder that `lookup` has no value for.
    pub fn render_key<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<String, String> {
        self.render(lookup, KEY_VALUE)
    }

    /// Renders a text such as an AMQP exchange or routing key: values are inserted as they
    /// are, except that control characters are percent-encoded.
    ///
    /// Returns the name of the first placeholder that `lookup` has no value for.
    pub fn render_text<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<String, String> {
        self.render(lookup, percent_encoding::CONTROLS)
    }

    /// Renders a URL path: each value is percent-encoded as one path segment, so a value
    /// such as `../admin` or `a?b` can never change the path or the query.
    ///
    /// A value of `.` or `..` is rejected: those characters need no encoding, and a server
    /// that removes dot segments (RFC 3986 §5.2.4) would fetch another resource.
    pub fn render_path<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<String, PathError> {
        let mut dot_field = None;
        let rendered = self.render(
            |name| {
                let value = lookup(name)?;
                if value == "." || value == ".." {
                    dot_field.get_or_insert_with(|| name.to_owned());
                }
                Some(value)
            },
            SEGMENT,
        );
        match (rendered, dot_field) {
            (Err(name), _) => Err(PathError::Missing(name)),
            (Ok(_), Some(name)) => Err(PathError::DotSegment(name)),
            (Ok(path), None) => Ok(path),
        }
    }

    fn render<'a>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<&'a str>,
        escape: &'static AsciiSet,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(name) => {
                    let value = lookup(name).ok_or_else(|| name.clone())?;
                    out.extend(utf8_percent_encode(value, escape));
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// A request path pattern such as `/api/exchanges/{vhost}/hr/publish`.
///
/// A `{name}` segment matches exactly one non-empty segment; the captured value is
/// percent-decoded once (`%2F` becomes `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses a pattern; placeholders must fill whole segments.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if !text.starts_with('/') {
            return Err(TemplateError::NotAbsolute(text.to_owned()));
        }
        let mut segments = Vec::new();
        for raw in text[1..].split('/') {
            let template =
                Template::parse(raw).map_err(|_| TemplateError::Unbalanced(text.to_owned()))?;
            match template.parts.as_slice() {
                [Part::Field(name)] => segments.push(Segment::Capture(name.clone())),
                [] => segments.push(Segment::Literal(String::new())),
                [Part::Literal(lit)] => segments.push(Segment::Literal(lit.clone())),
                _ => return Err(TemplateError::PartialSegment(text.to_owned())),
            }
        }
        Ok(Self {
            source: text.to_owned(),
            segments,
        })
    }

    /// Names of the captures, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path (without query); returns the captured values by name.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let mut captured = Vec::new();
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) => {
                    if lit != part {
                        return None;
                    }
                }
                Segment::Capture(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_decode_str(part).decode_utf8().ok()?;
                    captured.push((name.clone(), value.into_owned()));
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(captured)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_cannot_imitate_separators() {
        let template = Template::parse("t/{a}/{b}").unwrap();
        let first = template
            .render_key(|n| Some(if n == "a" { "x/y" } else { "z" }))
            .unwrap();
        let second = template
            .render_key(|n| Some(if n == "a" { "x" } else { "y/z" }))
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(first, "t/x%2Fy/z");
    }

    #[test]
    fn path_values_stay_in_one_segment() {
        let template = Template::parse("/persons/{id}").unwrap();
        let path = template.render_path(|_| Some("../admin?x=1#f")).unwrap();
        assert_eq!(path, "/persons/..%2Fadmin%3Fx%3D1%23f");
    }

    #[test]
    fn dot_segment_values_are_rejected() {
        let template = Template::parse("/persons/{id}").unwrap();
        for value in [".", ".."] {
            let result = template.render_path(|_| Some(value));
            assert_eq!(
                result,
                Err(PathError::DotSegment("id".to_owned())),
                "{value}"
            );
        }
        assert_eq!(
            template.render_path(|_| Some("...")).unwrap(),
            "/persons/..."
        );
    }

    #[test]
    fn missing_field_is_named() {
        let template = Template::parse("p/{subject}").unwrap();
        assert_eq!(template.render_key(|_| None), Err("subject".to_owned()));
    }

    #[test]
    fn unbalanced_braces_are_rejected() {
        assert!(Template::parse("a/{b").is_err());
        assert!(Template::parse("a/b}").is_err());
        assert!(Template::parse("a/{}").is_err());
    }

    #[test]
    fn pattern_captures_decoded_segments() {
        let pattern = PathPattern::parse("/api/exchanges/{vhost}/hr/publish").unwrap();
        let caps = pattern.matches("/api/exchanges/%2F/hr/publish").unwrap();
        assert_eq!(caps, vec![("vhost".to_owned(), "/".to_owned())]);
        assert!(pattern.matches("/api/exchanges/%2F/hr/publish/x").is_none());
        assert!(pattern.matches("/api/exchanges//hr/publish").is_none());
        assert!(pattern.matches("/api/exchanges/a/other/publish").is_none());
    }

    #[test]
    fn partial_segment_placeholder_is_rejected() {
        assert_eq!(
            PathPattern::parse("/a/x{id}"),
            Err(TemplateError::PartialSegment("/a/x{id}".to_owned()))
        );
    }
}
