//! Canonical JSON (RFC 8785, JSON Canonicalization Scheme) for fingerprints.
//!
//! The output follows RFC 8785 with one deliberate deviation for large integers:
//!
//! - Object members are sorted by their names compared as sequences of UTF-16 code units
//!   (RFC 8785 §3.2.3). This differs from UTF-8 byte order when a name has a character above
//!   U+FFFF at the same position where another name has one in U+E000..=U+FFFF.
//! - No whitespace is written between tokens.
//! - Strings escape only `"`, `\` and control characters below U+0020 (RFC 8785 §3.2.2.2):
//!   `\b \t \n \f \r` in their short forms, the others as `\u00xx` with lowercase hex. Every
//!   other character, including U+007F and all non-ASCII, is written as literal UTF-8.
//! - Floating-point numbers are written like ECMAScript's `Number.prototype.toString`
//!   (RFC 8785 §3.2.2.3), and `-0` is written as `0`.
//! - Integers that `serde_json` stores as `i64` or `u64` are written with all their digits.
//!   Up to 2^53 in magnitude this is what RFC 8785 prescribes. Beyond 2^53 RFC 8785 would round
//!   the integer through an IEEE 754 double, so two 64-bit version counters that differ only in
//!   their low bits would get the same canonical form and the same fingerprint. ekko writes
//!   the exact digits instead, so a change in such a counter is never hashed away.
//!   A consequence is that `9007199254740993` and `9007199254740993.0` (which `serde_json`
//!   parses as a double, 2^53) have different canonical forms.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// Writes the canonical form of `value` (RFC 8785, with exact large integers) to the end of
/// `out`.
///
/// Existing content of `out` is kept. No allocation happens per node apart from the growth of
/// `out` and of one scratch list that is reused for objects whose members need reordering.
pub fn write_canonical(value: &Value, out: &mut String) {
    let mut scratch = Vec::new();
    write_value(value, out, &mut scratch);
}

/// Returns the canonical form of `value` (RFC 8785, with exact large integers) as a new string.
pub fn canonicalize(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// Members of the objects currently being written whose map order differs from UTF-16 order.
/// Each nesting level uses the tail above the entries of its parent and truncates it when done.
type Scratch<'a> = Vec<(&'a str, &'a Value)>;

fn write_value<'a>(value: &'a Value, out: &mut String, scratch: &mut Scratch<'a>) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => write_array(items, out, scratch),
        Value::Object(map) => write_object(map, out, scratch),
    }
}

fn write_array<'a>(items: &'a [Value], out: &mut String, scratch: &mut Scratch<'a>) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(item, out, scratch);
    }
    out.push(']');
}

fn write_object<'a>(map: &'a Map<String, Value>, out: &mut String, scratch: &mut Scratch<'a>) {
    out.push('{');

    // The default `serde_json` map iterates in UTF-8 byte order, which is nearly always UTF-16
    // order already, so the members are copied and sorted only when the order differs.
    let in_order = map
        .keys()
        .is_sorted_by(|a, b| compare_utf16(a, b) == Ordering::Less);
    if in_order {
        for (i, (name, member)) in map.iter().enumerate() {
            write_member(i, name, member, out, scratch);
        }
    } else {
        let start = scratch.len();
        scratch.extend(map.iter().map(|(name, member)| (name.as_str(), member)));
        scratch[start..].sort_unstable_by(|a, b| compare_utf16(a.0, b.0));
        let end = scratch.len();
        for i in start..end {
            let (name, member) = scratch[i];
            write_member(i - start, name, member, out, scratch);
        }
        scratch.truncate(start);
    }

    out.push('}');
}

fn write_member<'a>(
    position: usize,
    name: &str,
    member: &'a Value,
    out: &mut String,
    scratch: &mut Scratch<'a>,
) {
    if position > 0 {
        out.push(',');
    }
    write_string(name, out);
    out.push(':');
    write_value(member, out, scratch);
}

/// Compares two strings as sequences of UTF-16 code units (RFC 8785 §3.2.3).
///
/// UTF-8 byte order equals code point order, and code point order equals UTF-16 order except
/// that characters above U+FFFF (encoded with surrogates 0xD800..=0xDBFF first) sort before
/// U+E000..=U+FFFF. So only the first differing character needs a closer look.
fn compare_utf16(a: &str, b: &str) -> Ordering {
    let (a_bytes, b_bytes) = (a.as_bytes(), b.as_bytes());
    let Some(mismatch) = a_bytes.iter().zip(b_bytes).position(|(x, y)| x != y) else {
        return a_bytes.len().cmp(&b_bytes.len());
    };
    if a_bytes[mismatch] < 0x80 && b_bytes[mismatch] < 0x80 {
        return a_bytes[mismatch].cmp(&b_bytes[mismatch]);
    }

    // The common prefix is identical, so both strings have a character boundary at `start`.
    let mut start = mismatch;
    while start > 0 && !a.is_char_boundary(start) {
        start -= 1;
    }
    let a_char = a[start..].chars().next();
    let b_char = b[start..].chars().next();
    a_char.map(utf16_rank).cmp(&b_char.map(utf16_rank))
}

/// Maps a character to a number whose order is the UTF-16 code unit order: U+E000..=U+FFFF are
/// moved above U+10FFFF, where their surrogate-free encoding places them.
fn utf16_rank(c: char) -> u32 {
    let code = u32::from(c);
    if (0xE000..=0xFFFF).contains(&code) {
        code + 0x11_0000
    } else {
        code
    }
}

/// Writes `text` as a JSON string literal with RFC 8785 §3.2.2.2 escaping.
fn write_string(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";

    out.push('"');
    let mut literal_from = 0;
    for (i, &byte) in text.as_bytes().iter().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0C => "\\f",
            b'\r' => "\\r",
            0x00..=0x1F => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `i` is a character boundary.
        out.push_str(&text[literal_from..i]);
        literal_from = i + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0F)]));
        } else {
            out.push_str(short);
        }
    }
    out.push_str(&text[literal_from..]);
    out.push('"');
}

fn write_number(number: &Number, out: &mut String) {
    if let Some(unsigned) = number.as_u64() {
        write_integer(false, unsigned, out);
    } else if let Some(signed) = number.as_i64() {
        write_integer(signed < 0, signed.unsigned_abs(), out);
    } else if let Some(float) = number.as_f64() {
        write_float(float, out);
    } else {
        // Unreachable without serde_json's `arbitrary_precision` feature, which ekko does not
        // enable: every number is then a u64, an i64 or a finite f64.
        out.push_str(&number.to_string());
    }
}

/// Writes every decimal digit of an integer. See the module doc for why integers above 2^53
/// are not rounded through a double as RFC 8785 would do.
fn write_integer(negative: bool, magnitude: u64, out: &mut String) {
    let mut digits = [0u8; 20];
    let mut first = digits.len();
    let mut rest = magnitude;
    loop {
        first -= 1;
        // `rest % 10` is below 10, so the cast cannot truncate.
        digits[first] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }

    if negative {
        out.push('-');
    }
    for &digit in &digits[first..] {
        out.push(char::from(digit));
    }
}

/// Writes a double as ECMAScript's `Number.prototype.toString` does (RFC 8785 §3.2.2.3).
fn write_float(float: f64, out: &mut String) {
    if float == 0.0 {
        // Covers -0, which ECMAScript writes as `0`.
        out.push('0');
        return;
    }
    // `serde_json` never stores NaN or an infinity in a `Number`, so `float` is finite.
    let mut buffer = ryu_js::Buffer::new();
    out.push_str(buffer.format_finite(float));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utf16_order_puts_supplementary_first() {
        // U+1D11E is D834 DD1E in UTF-16, which sorts before U+FB33.
        assert_eq!(compare_utf16("\u{1d11e}", "\u{fb33}"), Ordering::Less);
        assert_eq!(compare_utf16("\u{fb33}", "\u{1d11e}"), Ordering::Greater);
        assert_eq!(compare_utf16("\u{e000}", "\u{10000}"), Ordering::Greater);
    }

    #[test]
    fn utf16_order_matches_encode_utf16() {
        let names = [
            "",
            "a",
            "ab",
            "b",
            "\u{7f}",
            "\u{80}",
            "\u{d7ff}",
            "\u{e000}",
            "\u{ffff}",
            "\u{10000}",
            "\u{10ffff}",
            "x\u{e000}",
            "x\u{10000}",
            "x",
            "é",
            "éa",
        ];
        for a in names {
            for b in names {
                let expected = a.encode_utf16().cmp(b.encode_utf16());
                assert_eq!(compare_utf16(a, b), expected, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn control_characters_use_lowercase_hex() {
        let text = "\u{0}\u{1f}\u{b}\u{7f}";
        assert_eq!(
            canonicalize(&json!(text)),
            "\"\\u0000\\u001f\\u000b\u{7f}\""
        );
    }

    #[test]
    fn integer_extremes_keep_every_digit() {
        assert_eq!(canonicalize(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(canonicalize(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(canonicalize(&json!(0)), "0");
    }

    #[test]
    fn write_canonical_appends_to_output() {
        let mut out = String::from("prefix:");
        write_canonical(&json!({"b": 1, "a": [true, null]}), &mut out);
        assert_eq!(out, "prefix:{\"a\":[true,null],\"b\":1}");
    }

    #[test]
    fn nested_reordered_objects_restore_scratch() {
        // Both levels need reordering, so the scratch list is shared by two nesting levels.
        let value = json!({
            "\u{fb33}": {"\u{fb33}": 1, "\u{1d11e}": 2},
            "\u{1d11e}": [{"\u{e000}": 3, "\u{10000}": 4}],
        });
        let expected = concat!(
            "{\"\u{1d11e}\":[{\"\u{10000}\":4,\"\u{e000}\":3}],",
            "\"\u{fb33}\":{\"\u{1d11e}\":2,\"\u{fb33}\":1}}"
        );
        assert_eq!(canonicalize(&value), expected);
    }
}
