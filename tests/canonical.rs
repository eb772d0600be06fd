//! Canonical JSON (RFC 8785) cases, the large-integer deviation, and properties of masks and
//! fingerprints.

use std::fmt::Write as _;

use ekko::notify::canonical::canonicalize;
use ekko::notify::fingerprint::compute;
use ekko::notify::mask::Mask;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

fn canonical_of_text(text: &str) -> String {
    let value: Value = serde_json::from_str(text).expect("valid JSON");
    canonicalize(&value)
}

fn canonical_of_bits(bits: u64) -> String {
    let number = Number::from_f64(f64::from_bits(bits)).expect("finite double");
    canonicalize(&Value::Number(number))
}

#[test]
fn numbers_follow_ecmascript_format() {
    let cases = [
        ("1e21", "1e+21"),
        ("1E30", "1e+30"),
        ("1e-7", "1e-7"),
        ("-1e-7", "-1e-7"),
        ("0.000001", "0.000001"),
        ("0.000000000000000000000000001", "1e-27"),
        ("123456789012345680000", "123456789012345680000"),
        ("1e20", "100000000000000000000"),
        ("4.50", "4.5"),
        ("2e-3", "0.002"),
        ("100.0", "100"),
        ("0.1", "0.1"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("333333333.33333329", "333333333.3333333"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("0e10", "0"),
        ("5e-324", "5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("-1.7976931348623157e308", "-1.7976931348623157e+308"),
    ];
    for (input, expected) in cases {
        assert_eq!(canonical_of_text(input), expected, "input {input}");
    }
}

#[test]
fn double_bit_patterns_format_exactly() {
    // IEEE 754 bit patterns chosen to sit next to the format's switching points.
    let cases = [
        (0x0000_0000_0000_0000, "0"),
        (0x8000_0000_0000_0000, "0"),
        (0x0000_0000_0000_0001, "5e-324"),
        (0x8000_0000_0000_0001, "-5e-324"),
        (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
        (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
        (0x4340_0000_0000_0000, "9007199254740992"),
        (0xc340_0000_0000_0000, "-9007199254740992"),
        (0x4430_0000_0000_0000, "295147905179352830000"),
        (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
        (0x44b5_2d02_c7e1_4af6, "1e+23"),
        (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
        (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
        (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
        (0x444b_1ae4_d6e2_ef50, "1e+21"),
        (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
        (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
        (0x41b3_de43_5555_5553, "333333333.3333332"),
        (0x41b3_de43_5555_5554, "333333333.33333325"),
        (0x41b3_de43_5555_5555, "333333333.3333333"),
        (0x41b3_de43_5555_5556, "333333333.3333334"),
        (0x41b3_de43_5555_5557, "333333333.33333343"),
        (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
        (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
    ];
    for (bits, expected) in cases {
        assert_eq!(canonical_of_bits(bits), expected, "bits {bits:#018x}");
    }
}

#[test]
fn large_integers_keep_exact_digits() {
    // Deliberate deviation from RFC 8785, which would write 9007199254740992 for the first
    // two. A 64-bit counter that changes in its low bits must change the canonical form.
    let cases = [
        ("9007199254740993", "9007199254740993"),
        ("-9007199254740993", "-9007199254740993"),
        ("18446744073709551615", "18446744073709551615"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("9007199254740992", "9007199254740992"),
        ("-42", "-42"),
    ];
    for (input, expected) in cases {
        assert_eq!(canonical_of_text(input), expected, "input {input}");
    }
}

#[test]
fn integer_written_as_double_rounds() {
    // serde_json parses a fraction or exponent as a double, so the RFC 8785 rule applies.
    assert_eq!(canonical_of_text("9007199254740993.0"), "9007199254740992");
    assert_eq!(
        canonical_of_text("1.8446744073709552e19"),
        "18446744073709552000"
    );
}

#[test]
fn members_sort_by_utf16_code_units() {
    let input = r#"{
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\ud834\udd1e": "G Clef",
        "\ud83d\ude00": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    let expected = concat!(
        "{\"\\r\":\"Carriage Return\",",
        "\"1\":\"One\",",
        "\"\u{80}\":\"Control\",",
        "\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",",
        "\"\u{20ac}\":\"Euro Sign\",",
        "\"\u{1d11e}\":\"G Clef\",",
        "\"\u{1f600}\":\"Emoji: Grinning Face\",",
        "\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
    );
    assert_eq!(canonical_of_text(input), expected);
}

#[test]
fn sample_document_is_canonical() {
    let input = r#"{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"#;
    let expected = concat!(
        r#"{"literals":[null,true,false],"#,
        r#""numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#,
        "\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
    );
    assert_eq!(canonical_of_text(input), expected);
}

#[test]
fn strings_escape_only_required_characters() {
    let cases = [
        ("\u{8}\t\n\u{c}\r", r#""\b\t\n\f\r""#),
        (
            "\u{0}\u{1}\u{b}\u{e}\u{1f}",
            r#""\u0000\u0001\u000b\u000e\u001f""#,
        ),
        ("\"\\", r#""\"\\""#),
        ("/ <>&' \u{7f}", "\"/ <>&' \u{7f}\""),
        (
            "\u{e9}\u{20ac}\u{1f600}\u{2028}",
            "\"\u{e9}\u{20ac}\u{1f600}\u{2028}\"",
        ),
        ("", "\"\""),
    ];
    for (text, expected) in cases {
        assert_eq!(
            canonicalize(&Value::String(text.to_owned())),
            expected,
            "text {text:?}"
        );
    }
}

#[test]
fn literals_and_nesting_have_no_whitespace() {
    let input = "[ { } , [ ] , { \"a\" : [ null , true , false , { \"b\" : { } } ] } ]";
    assert_eq!(
        canonical_of_text(input),
        r#"[{},[],{"a":[null,true,false,{"b":{}}]}]"#
    );
}

fn member_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c1]{0,3}",
        // Characters around the point where UTF-16 order differs from code point order.
        "[a\\x{7f}\\x{80}\\x{ffff}\\x{e000}\\x{10000}\\x{1d11e}]{0,3}",
        any::<String>(),
    ]
}

fn finite_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite double", Number::from_f64),
        (-1000i32..1000, -30i32..30).prop_filter_map("finite double", |(m, e)| Number::from_f64(
            f64::from(m) * 10f64.powi(e)
        )),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        finite_number().prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((member_name(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Writes `value` as JSON text with members in a rotated order and whitespace chosen by
/// `seed`, so the same value gets many different texts.
fn write_shuffled(value: &Value, seed: &mut u64, out: &mut String) {
    const WHITESPACE: [&str; 5] = ["", " ", "\n", "\t ", "\r\n  "];
    fn next(seed: &mut u64, limit: usize) -> usize {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as usize % limit
    }
    out.push_str(WHITESPACE[next(seed, WHITESPACE.len())]);
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_shuffled(item, seed, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            if !members.is_empty() {
                let rotation = next(seed, members.len());
                members.rotate_left(rotation);
                members.reverse();
            }
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{} :", Value::String(name.clone()));
                write_shuffled(member, seed, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
    out.push_str(WHITESPACE[next(seed, WHITESPACE.len())]);
}

fn escape_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

proptest! {
    #[test]
    fn canonical_form_is_idempotent(value in json_value()) {
        let canonical = canonicalize(&value);
        let reparsed: Value = serde_json::from_str(&canonical).expect("canonical text parses");
        prop_assert_eq!(canonicalize(&reparsed), canonical);
    }

    #[test]
    fn input_layout_never_changes_output(value in json_value(), seed in any::<u64>()) {
        let mut text = String::new();
        let mut state = seed;
        write_shuffled(&value, &mut state, &mut text);
        let reparsed: Value = serde_json::from_str(&text).expect("shuffled text parses");
        prop_assert_eq!(canonicalize(&reparsed), canonicalize(&value));
    }

    #[test]
    fn doubles_round_trip_through_text(float in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let canonical = canonicalize(&Value::Number(Number::from_f64(float).expect("finite")));
        let parsed: f64 = canonical.parse().expect("canonical number parses");
        prop_assert_eq!(parsed, if float == 0.0 { 0.0 } else { float });
        prop_assert!(!canonical.contains('E') && !canonical.ends_with(".0"), "{}", canonical);
    }

    #[test]
    fn mask_removes_exactly_listed_members(
        members in prop::collection::btree_map("[a-c~/.]{1,3}", json_value(), 1..8),
        picks in prop::collection::vec(any::<bool>(), 8),
    ) {
        let masked: Vec<String> = members
            .keys()
            .zip(&picks)
            .filter(|(_, pick)| **pick)
            .map(|(name, _)| name.clone())
            .collect();
        let pointers: Vec<String> = masked.iter().map(|n| format!("/{}", escape_token(n))).collect();
        let mask = Mask::parse(&pointers).expect("valid pointers");

        let mut value = Value::Object(members.clone().into_iter().collect());
        let removed = mask.apply(&mut value);

        // The map iterates by name, so the expected document order is the pointers' order.
        prop_assert_eq!(&removed, &pointers);
        let remaining: Map<String, Value> = members
            .into_iter()
            .filter(|(name, _)| !masked.contains(name))
            .collect();
        prop_assert_eq!(value, Value::Object(remaining));
    }

    #[test]
    fn mask_nulls_every_matched_element(
        items in prop::collection::vec(json_value(), 0..8),
    ) {
        let mask = Mask::parse(&["/list/*".to_owned()]).expect("valid pointer");
        let mut value = serde_json::json!({ "list": items.clone(), "other": 1 });
        let removed = mask.apply(&mut value);

        let expected: Vec<String> = (0..items.len()).map(|i| format!("/list/{i}")).collect();
        prop_assert_eq!(removed, expected);
        let nulls = vec![Value::Null; items.len()];
        prop_assert_eq!(value, serde_json::json!({ "list": nulls, "other": 1 }));
    }

    #[test]
    fn unmasked_difference_changes_fingerprint(
        base in prop::collection::btree_map("[a-e]{1,2}", json_value(), 0..6),
        first in json_value(),
        second in json_value(),
        volatile_a in json_value(),
        volatile_b in json_value(),
    ) {
        prop_assume!(canonicalize(&first) != canonicalize(&second));
        let mask = Mask::parse(&["/meta/etag".to_owned()]).expect("valid pointer");
        let state = |field: &Value, etag: &Value| {
            let mut object: Map<String, Value> = base.clone().into_iter().collect();
            object.insert("field".to_owned(), field.clone());
            object.insert("meta".to_owned(), serde_json::json!({ "etag": etag }));
            Value::Object(object)
        };

        let changed_a = compute(state(&first, &volatile_a), &mask).fingerprint;
        let changed_b = compute(state(&second, &volatile_a), &mask).fingerprint;
        prop_assert_ne!(changed_a, changed_b);

        let masked_b = compute(state(&first, &volatile_b), &mask).fingerprint;
        prop_assert_eq!(changed_a, masked_b);
    }
}
