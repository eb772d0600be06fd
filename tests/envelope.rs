//! Black-box tests of envelope decoding through `ekko::notify::envelope::decode`.

use ekko::notify::envelope::{decode, encode_batch, Decoded, Event};
use ekko::policy::{Format, Pointers};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// Personal data placed in bodies; no error message may repeat it.
const PERSONAL: &str = "Jane Roe";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn structured_headers() -> HeaderMap {
    headers(&[(
        "content-type",
        "application/cloudevents+json; charset=utf-8",
    )])
}

fn decode_single(format: &Format, headers: &HeaderMap, body: &[u8]) -> Event {
    match decode(format, headers, body) {
        Ok(Decoded::Single(event)) => event,
        Ok(Decoded::Batch(events)) => panic!("expected one event, got a batch of {}", events.len()),
        Err(error) => panic!("expected one event, got error: {error}"),
    }
}

fn decode_batch(body: &str) -> Vec<(Event, Box<serde_json::value::RawValue>)> {
    let headers = headers(&[("content-type", "application/cloudevents-batch+json")]);
    match decode(&Format::CloudEvents, &headers, body.as_bytes()) {
        Ok(Decoded::Batch(events)) => events,
        Ok(Decoded::Single(event)) => panic!("expected a batch, got one event: {event:?}"),
        Err(error) => panic!("expected a batch, got error: {error}"),
    }
}

fn pointers(id: &str, source: &str, kind: &str, subject: &str) -> Pointers {
    Pointers {
        id: Some(id.to_owned()),
        source: Some(source.to_owned()),
        kind: Some(kind.to_owned()),
        subject: Some(subject.to_owned()),
        data: None,
    }
}

fn publish_body(properties: Value, payload: &str, encoding: &str) -> Vec<u8> {
    let body = json!({
        "properties": properties,
        "routing_key": "hr.person.changed",
        "payload": payload,
        "payload_encoding": encoding,
        "props": {"ignored": true},
    });
    serde_json::to_vec(&body).unwrap()
}

// ----- structured mode -----------------------------------------------------------------------

#[test]
fn structured_event_reads_attributes() {
    let body = json!({
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/hr",
        "type": "person.changed",
        "subject": "person/123",
        "datacontenttype": "application/json",
        "time": "2024-05-01T10:00:00Z",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "sequence": 42,
        "replay": false,
        "myExt": "ignored",
        "data": {"name": PERSONAL},
    });
    let event = decode_single(
        &Format::CloudEvents,
        &structured_headers(),
        body.to_string().as_bytes(),
    );

    assert_eq!(event.id.as_deref(), Some("evt-1"));
    assert_eq!(event.source.as_deref(), Some("/hr"));
    assert_eq!(event.kind.as_deref(), Some("person.changed"));
    assert_eq!(event.subject.as_deref(), Some("person/123"));
    assert_eq!(event.data, Some(json!({"name": PERSONAL})));
    assert_eq!(event.field("time"), Some("2024-05-01T10:00:00Z"));
    assert_eq!(
        event.field("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(event.field("sequence"), Some("42"));
    assert_eq!(event.field("replay"), Some("false"));
    assert_eq!(event.field("myExt"), None);
    assert_eq!(event.field("datacontenttype"), None);
    assert_eq!(event.field("data"), None);
}

#[test]
fn structured_content_type_ignores_case_and_parameters() {
    let headers = headers(&[("content-type", "Application/CloudEvents+JSON;charset=UTF-8")]);
    let body = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
    let event = decode_single(&Format::CloudEvents, &headers, body.as_bytes());

    assert_eq!(event.id.as_deref(), Some("1"));
    assert_eq!(event.subject, None);
    assert_eq!(event.data, None);
    assert!(event.extra.is_empty(), "{:?}", event.extra);
}

#[test]
fn structured_null_data_is_absent() {
    let body =
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":null,"subject":null}"#;
    let event = decode_single(&Format::CloudEvents, &structured_headers(), body.as_bytes());

    assert_eq!(event.data, None);
    assert_eq!(event.subject, None);
}

#[test]
fn structured_data_base64_follows_content_type() {
    // "eyJhIjoxfQ==" is the base64 of {"a":1}; "aGVsbG8=" is the base64 of "hello".
    let cases = [
        (
            "json type",
            r#","datacontenttype":"application/json""#,
            "eyJhIjoxfQ==",
            json!({"a": 1}),
        ),
        (
            "+json type",
            r#","datacontenttype":"application/vnd.hr+json; charset=utf-8""#,
            "eyJhIjoxfQ==",
            json!({"a": 1}),
        ),
        ("no type, JSON bytes", "", "eyJhIjoxfQ", json!({"a": 1})),
        ("no type, other bytes", "", "aGVsbG8=", json!("aGVsbG8=")),
        (
            "binary type",
            r#","datacontenttype":"application/octet-stream""#,
            "eyJhIjoxfQ==",
            json!("eyJhIjoxfQ=="),
        ),
    ];
    for (name, content_type, encoded, expected) in cases {
        let body = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t"{content_type},"data_base64":"{encoded}"}}"#
        );
        let event = decode_single(&Format::CloudEvents, &structured_headers(), body.as_bytes());
        assert_eq!(event.data, Some(expected), "case {name}");
    }
}

#[test]
fn structured_mode_wins_over_ce_headers() {
    let headers = headers(&[
        ("content-type", "application/cloudevents+json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "from-header"),
    ]);
    let body = r#"{"specversion":"1.0","id":"from-body","source":"s","type":"t"}"#;
    let event = decode_single(&Format::CloudEvents, &headers, body.as_bytes());

    assert_eq!(event.id.as_deref(), Some("from-body"));
}

// ----- binary mode ---------------------------------------------------------------------------

#[test]
fn binary_event_reads_ce_headers() {
    let headers = headers(&[
        ("content-type", "application/json; charset=utf-8"),
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-2"),
        ("ce-source", "/hr"),
        ("ce-type", "person.changed"),
        ("ce-subject", "person%2F123"),
        ("ce-time", "2024-05-01T10:00:00Z"),
        ("ce-comment", "caf%C3%A9%20au%20lait"),
    ]);
    let body = json!({"name": PERSONAL}).to_string();
    let event = decode_single(&Format::CloudEvents, &headers, body.as_bytes());

    assert_eq!(event.id.as_deref(), Some("evt-2"));
    assert_eq!(event.source.as_deref(), Some("/hr"));
    assert_eq!(event.kind.as_deref(), Some("person.changed"));
    assert_eq!(event.subject.as_deref(), Some("person/123"));
    assert_eq!(event.field("time"), Some("2024-05-01T10:00:00Z"));
    assert_eq!(event.field("comment"), Some("café au lait"));
    assert_eq!(event.field("specversion"), None);
    assert_eq!(event.data, Some(json!({"name": PERSONAL})));
}

#[test]
fn binary_header_decoding_follows_binding() {
    // Only `%` followed by two hex digits decodes; anything else stays as sent.
    let cases = [
        ("slash", "person%2F123", "person/123"),
        ("lowercase hex", "person%2f123", "person/123"),
        ("one round only", "100%2525", "100%25"),
        ("invalid hex stays", "100%zz", "100%zz"),
        ("trailing percent stays", "50%", "50%"),
        ("quoted string", r#""a b""#, "a b"),
        ("quoted escape", r#""say \"hi\"""#, r#"say "hi""#),
    ];
    for (name, raw, expected) in cases {
        let headers = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "t"),
            ("ce-subject", raw),
        ]);
        let event = decode_single(&Format::CloudEvents, &headers, b"");
        assert_eq!(event.subject.as_deref(), Some(expected), "case {name}");
    }
}

/// Case name, content type, body and the expected data.
type BodyCase = (
    &'static str,
    Option<&'static str>,
    &'static [u8],
    Option<Value>,
);

#[test]
fn binary_body_becomes_data() {
    let cases: [BodyCase; 6] = [
        (
            "json type",
            Some("application/json"),
            br#"{"a":1}"#,
            Some(json!({"a": 1})),
        ),
        (
            "+json type",
            Some("application/vnd.hr+json"),
            b"[1,2]",
            Some(json!([1, 2])),
        ),
        (
            "no type, JSON body",
            None,
            b"{\"a\":1}",
            Some(json!({"a": 1})),
        ),
        ("no type, text body", None, b"hello", Some(json!("hello"))),
        (
            "text type",
            Some("text/plain"),
            b"{\"a\":1}",
            Some(json!("{\"a\":1}")),
        ),
        (
            "binary body",
            Some("application/octet-stream"),
            &[0xff, 0x00],
            Some(json!("/wA=")),
        ),
    ];
    for (name, content_type, body, expected) in cases {
        let mut headers = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "t"),
        ]);
        if let Some(content_type) = content_type {
            headers.insert("content-type", HeaderValue::from_static(content_type));
        }
        let event = decode_single(&Format::CloudEvents, &headers, body);
        assert_eq!(event.data, expected, "case {name}");
    }
}

#[test]
fn binary_empty_body_has_no_data() {
    let headers = headers(&[
        ("content-type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "s"),
        ("ce-type", "t"),
    ]);
    let event = decode_single(&Format::CloudEvents, &headers, b"");

    assert_eq!(event.data, None);
}

// ----- batch mode ----------------------------------------------------------------------------

#[test]
fn batch_keeps_each_element_text() {
    let first =
        r#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"p/1","data":{"n": 1}}"#;
    let second = r#"{ "specversion" : "1.0", "id" : "b", "source" : "s", "type" : "t" }"#;
    let body = format!("[\n  {first},\n  {second}\n]");
    let events = decode_batch(&body);

    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0.id.as_deref(), Some("a"));
    assert_eq!(events[0].0.subject.as_deref(), Some("p/1"));
    assert_eq!(events[0].0.data, Some(json!({"n": 1})));
    assert_eq!(events[0].1.get(), first);
    assert_eq!(events[1].0.id.as_deref(), Some("b"));
    assert_eq!(events[1].1.get(), second);
}

#[test]
fn batch_may_be_empty() {
    assert!(decode_batch("[]").is_empty());
    assert!(decode_batch(" [ ] ").is_empty());
}

#[test]
fn batch_elements_encode_back_in_order() {
    let first = r#"{"specversion":"1.0","id":"a","source":"s","type":"t"}"#;
    let second = r#"{"specversion":"1.0","id":"b","source":"s","type":"t"}"#;
    let events = decode_batch(&format!("[{first}, {second}]"));
    let encoded = encode_batch(events.iter().rev().map(|(_, raw)| raw.as_ref()));

    assert_eq!(&encoded[..], format!("[{second},{first}]").as_bytes());
}

// ----- RabbitMQ publish ----------------------------------------------------------------------

#[test]
fn rabbitmq_structured_payload_is_cloudevent() {
    let payload = json!({
        "specversion": "1.0", "id": "evt-3", "source": "/hr", "type": "person.changed",
        "subject": "person/9", "data": {"name": PERSONAL},
    });
    let body = publish_body(json!({}), &payload.to_string(), "string");
    let format = Format::RabbitmqPublish(Pointers::default());
    let event = decode_single(&format, &HeaderMap::new(), &body);

    assert_eq!(event.id.as_deref(), Some("evt-3"));
    assert_eq!(event.subject.as_deref(), Some("person/9"));
    assert_eq!(event.data, Some(json!({"name": PERSONAL})));
    assert_eq!(event.field("routing_key"), Some("hr.person.changed"));
}

#[test]
fn rabbitmq_base64_payload_is_decoded() {
    // The base64 of {"id":7,"name":"x"}.
    let body = publish_body(json!({}), "eyJpZCI6NywibmFtZSI6IngifQ==", "base64");
    let format = Format::RabbitmqPublish(Pointers {
        id: Some("/id".to_owned()),
        ..Pointers::default()
    });
    let event = decode_single(&format, &HeaderMap::new(), &body);

    assert_eq!(event.id.as_deref(), Some("7"));
    assert_eq!(event.data, Some(json!({"id": 7, "name": "x"})));
}

#[test]
fn rabbitmq_amqp_headers_give_attributes() {
    for prefix in ["cloudEvents:", "cloudEvents_"] {
        let properties = json!({"headers": {
            format!("{prefix}specversion"): "1.0",
            format!("{prefix}id"): "evt-4",
            format!("{prefix}source"): "/hr",
            format!("{prefix}type"): "person.changed",
            format!("{prefix}subject"): "person/5",
            format!("{prefix}sequence"): 17,
            "x-other": "kept out",
        }});
        let body = publish_body(properties, r#"{"name":"x"}"#, "string");
        let format = Format::RabbitmqPublish(pointers("/no", "/no", "/no", "/no"));
        let event = decode_single(&format, &HeaderMap::new(), &body);

        assert_eq!(event.id.as_deref(), Some("evt-4"), "prefix {prefix}");
        assert_eq!(event.source.as_deref(), Some("/hr"), "prefix {prefix}");
        assert_eq!(
            event.kind.as_deref(),
            Some("person.changed"),
            "prefix {prefix}"
        );
        assert_eq!(
            event.subject.as_deref(),
            Some("person/5"),
            "prefix {prefix}"
        );
        assert_eq!(event.field("sequence"), Some("17"), "prefix {prefix}");
        assert_eq!(event.field("x-other"), None, "prefix {prefix}");
        assert_eq!(
            event.field("routing_key"),
            Some("hr.person.changed"),
            "prefix {prefix}"
        );
        assert_eq!(event.data, Some(json!({"name": "x"})), "prefix {prefix}");
    }
}

#[test]
fn rabbitmq_pointers_fall_back_to_properties() {
    let properties =
        json!({"message_id": "msg-1", "app_id": "hr-app", "headers": {"x-trace": "t"}});
    let body = publish_body(
        properties,
        r#"{"person":{"id":123},"kind":"changed"}"#,
        "string",
    );
    let format = Format::RabbitmqPublish(Pointers {
        id: Some("/eventId".to_owned()),
        source: None,
        kind: Some("/kind".to_owned()),
        subject: Some("/person/id".to_owned()),
        data: Some("/person".to_owned()),
    });
    let event = decode_single(&format, &HeaderMap::new(), &body);

    assert_eq!(event.id.as_deref(), Some("msg-1"));
    assert_eq!(event.source.as_deref(), Some("hr-app"));
    assert_eq!(event.kind.as_deref(), Some("changed"));
    assert_eq!(event.subject.as_deref(), Some("123"));
    assert_eq!(event.data, Some(json!({"id": 123})));
    assert_eq!(event.field("routing_key"), Some("hr.person.changed"));
}

#[test]
fn rabbitmq_payload_pointer_beats_message_id() {
    let properties = json!({"message_id": "msg-1"});
    let body = publish_body(properties, r#"{"eventId":"evt-9"}"#, "string");
    let format = Format::RabbitmqPublish(Pointers {
        id: Some("/eventId".to_owned()),
        ..Pointers::default()
    });
    let event = decode_single(&format, &HeaderMap::new(), &body);

    assert_eq!(event.id.as_deref(), Some("evt-9"));
    assert_eq!(event.source, None);
    assert_eq!(event.data, Some(json!({"eventId": "evt-9"})));
}

// ----- generic JSON --------------------------------------------------------------------------

#[test]
fn json_pointers_read_fields() {
    let body = json!({"event": {"id": 9007199254740993_u64, "type": "updated"}, "app": "crm",
                      "customer": {"number": 42, "name": PERSONAL}});
    let format = Format::Json(Pointers {
        id: Some("/event/id".to_owned()),
        source: Some("/app".to_owned()),
        kind: Some("/event/type".to_owned()),
        subject: Some("/customer/number".to_owned()),
        data: Some("/customer".to_owned()),
    });
    let event = decode_single(&format, &HeaderMap::new(), body.to_string().as_bytes());

    assert_eq!(event.id.as_deref(), Some("9007199254740993"));
    assert_eq!(event.source.as_deref(), Some("crm"));
    assert_eq!(event.kind.as_deref(), Some("updated"));
    assert_eq!(event.subject.as_deref(), Some("42"));
    assert_eq!(event.data, Some(json!({"number": 42, "name": PERSONAL})));
    assert!(event.extra.is_empty(), "{:?}", event.extra);
}

#[test]
fn json_missing_pointers_leave_fields_unset() {
    let body = br#"{"id":null,"source":"","list":[{"k":"v"}]}"#;
    let format = Format::Json(pointers("/id", "/source", "/nothing", "/list/0/k"));
    let event = decode_single(&format, &HeaderMap::new(), body);

    assert_eq!(event.id, None);
    assert_eq!(event.source, None);
    assert_eq!(event.kind, None);
    assert_eq!(event.subject.as_deref(), Some("v"));
    assert_eq!(
        event.data,
        Some(serde_json::from_slice::<Value>(body).unwrap())
    );
}

#[test]
fn json_data_pointer_may_miss() {
    let format = Format::Json(Pointers {
        data: Some("/state".to_owned()),
        ..Pointers::default()
    });
    let event = decode_single(&format, &HeaderMap::new(), b"[1,2]");

    assert_eq!(event.data, None);
    assert_eq!(event.id, None);
}

#[test]
fn json_whole_document_may_be_any_value() {
    let format = Format::Json(Pointers {
        id: Some(String::new()),
        ..Pointers::default()
    });
    let event = decode_single(&format, &HeaderMap::new(), b"12345");

    assert_eq!(event.id.as_deref(), Some("12345"));
    assert_eq!(event.data, Some(json!(12345)));
}

// ----- errors --------------------------------------------------------------------------------

struct ErrorCase {
    name: &'static str,
    format: Format,
    headers: HeaderMap,
    body: String,
    expected: &'static str,
}

/// Applies `changes` to the members of `object`: a null value removes the member, any other
/// value replaces it.
fn with_changes(mut object: Value, changes: Value) -> Value {
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            object.as_object_mut().unwrap().remove(key);
        } else {
            object[key] = value.clone();
        }
    }
    object
}

fn structured_case(name: &'static str, body: Value, expected: &'static str) -> ErrorCase {
    ErrorCase {
        name,
        format: Format::CloudEvents,
        headers: structured_headers(),
        body: body.to_string(),
        expected,
    }
}

fn cloudevents_error_cases() -> Vec<ErrorCase> {
    let base = |changes: Value| {
        let event = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {"name": PERSONAL}});
        with_changes(event, changes)
    };
    vec![
        structured_case("missing id", base(json!({"id": null})),
            "cloudevents attribute `id` is missing: a structured event needs specversion, id, source and type"),
        structured_case("missing specversion", base(json!({"specversion": null})),
            "cloudevents attribute `specversion` is missing"),
        structured_case("missing type", base(json!({"type": null})),
            "cloudevents attribute `type` is missing"),
        structured_case("wrong specversion", base(json!({"specversion": "0.3"})),
            "cloudevents attribute `specversion` is `0.3`: ekko decodes only cloudevents specversion 1.0"),
        structured_case("numeric specversion", base(json!({"specversion": 1.0})),
            "cloudevents attribute `specversion` is a number: expected a string"),
        structured_case("numeric id", base(json!({"id": 5})),
            "cloudevents attribute `id` is a number: expected a string"),
        structured_case("empty source", base(json!({"source": ""})),
            "cloudevents attribute `source` is empty: expected a non-empty string"),
        structured_case("empty subject", base(json!({"subject": ""})),
            "cloudevents attribute `subject` is empty"),
        structured_case("object extension", base(json!({"person": {"name": PERSONAL}})),
            "cloudevents attribute `person` is an object: expected a string, number or boolean"),
        structured_case("data and data_base64", base(json!({"data_base64": "e30="})),
            "cloudevents attributes `data` and `data_base64` are both present"),
        structured_case("invalid base64", base(json!({"data": null, "data_base64": "ab$d"})),
            "cloudevents attribute `data_base64` is not valid base64 (RFC 4648): invalid character at offset 2"),
        structured_case("numeric data_base64", base(json!({"data": null, "data_base64": 7})),
            "cloudevents attribute `data_base64` is a number: expected a base64 string"),
        // "aGVsbG8=" is the base64 of "hello", which is not JSON.
        structured_case("data_base64 not JSON", base(json!({"data": null, "data_base64": "aGVsbG8=", "datacontenttype": "application/json"})),
            "cloudevents attribute `data_base64` does not decode to JSON although datacontenttype is `application/json`"),
        structured_case("array body", json!([{"name": PERSONAL}]),
            "structured cloudevent is an array: expected a JSON object (a batch needs content type application/cloudevents-batch+json)"),
        structured_case("string body", json!(PERSONAL),
            "structured cloudevent is a string: expected a JSON object"),
        ErrorCase {
            name: "structured body not JSON",
            format: Format::CloudEvents,
            headers: structured_headers(),
            body: format!("<person>{PERSONAL}</person>"),
            expected: "structured cloudevent body is not JSON: expected value at line 1 column 1",
        },
    ]
}

fn batch_case(name: &'static str, body: &str, expected: &'static str) -> ErrorCase {
    ErrorCase {
        name,
        format: Format::CloudEvents,
        headers: headers(&[("content-type", "application/cloudevents-batch+json")]),
        body: body.to_owned(),
        expected,
    }
}

fn batch_error_cases() -> Vec<ErrorCase> {
    let valid = r#"{"specversion":"1.0","id":"a","source":"s","type":"t"}"#;
    let untyped = r#"{"specversion":"1.0","id":"b","source":"s","data":{"name":"Jane Roe"}}"#;
    vec![
        batch_case("element without type", &format!("[{valid},{untyped}]"),
            "cloudevents batch element 1: cloudevents attribute `type` is missing"),
        batch_case("element not an object", "[3]",
            "cloudevents batch element 0: structured cloudevent is a number: expected a JSON object"),
        batch_case("object body", valid,
            "cloudevents batch body is an object: expected a JSON array of structured events"),
        batch_case("body not JSON", "[{\"name\": \"Jane Roe\"",
            "cloudevents batch body is not JSON: EOF while parsing"),
    ]
}

/// Builds a binary-mode request from valid headers; `None` removes a header, `Some` replaces it.
fn binary_case(
    name: &'static str,
    changes: &[(&str, Option<&str>)],
    body: &str,
    expected: &'static str,
) -> ErrorCase {
    let mut headers = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "s"),
        ("ce-type", "t"),
    ]);
    for (header, value) in changes {
        match value {
            None => {
                headers.remove(*header);
            }
            Some(value) => {
                let name = HeaderName::from_bytes(header.as_bytes()).unwrap();
                headers.insert(name, HeaderValue::from_str(value).unwrap());
            }
        }
    }
    ErrorCase {
        name,
        format: Format::CloudEvents,
        headers,
        body: body.to_owned(),
        expected,
    }
}

fn binary_error_cases() -> Vec<ErrorCase> {
    let mut duplicated = binary_case(
        "duplicate ce-id",
        &[],
        "",
        "header `ce-id` appears 2 times: send each ce- header once",
    );
    duplicated
        .headers
        .append("ce-id", HeaderValue::from_static("2"));
    vec![
        binary_case("missing ce-id", &[("ce-id", None)], "",
            "header `ce-id` is missing: a binary-mode event needs headers ce-specversion, ce-id, ce-source and ce-type"),
        binary_case("missing ce-source", &[("ce-source", None)], "", "header `ce-source` is missing"),
        binary_case("wrong ce-specversion", &[("ce-specversion", Some("0.3"))], "",
            "header `ce-specversion` is `0.3`: ekko decodes only cloudevents specversion 1.0"),
        binary_case("empty ce-type", &[("ce-type", Some(""))], "", "header `ce-type` is empty: expected a non-empty string"),
        binary_case("overlong UTF-8", &[("ce-subject", Some("%C0%A0"))], "",
            "header `ce-subject` is not valid UTF-8 after percent-decoding"),
        binary_case("unclosed quote", &[("ce-subject", Some("\"person"))], "",
            "header `ce-subject` has an invalid quoted string: a double quote is not closed"),
        binary_case("json type, body not JSON", &[("content-type", Some("application/json"))], "<person>Jane Roe</person>",
            "binary-mode body is not JSON although content type is `application/json`: expected value at line 1 column 1"),
        duplicated,
        ErrorCase {
            name: "json without ce headers",
            format: Format::CloudEvents,
            headers: headers(&[("content-type", "application/json")]),
            body: json!({"name": PERSONAL}).to_string(),
            expected: "request is not a cloudevent: expected content type application/cloudevents+json \
                       (structured mode), application/cloudevents-batch+json (batch mode) or a \
                       ce-specversion header (binary mode), got content type `application/json` and \
                       no ce-specversion header",
        },
        ErrorCase {
            name: "no content type",
            format: Format::CloudEvents,
            headers: HeaderMap::new(),
            body: json!({"name": PERSONAL}).to_string(),
            expected: "got no content type and no ce-specversion header",
        },
        ErrorCase {
            name: "unsupported event format",
            format: Format::CloudEvents,
            headers: headers(&[("content-type", "application/cloudevents+avro"), ("ce-specversion", "1.0")]),
            body: String::new(),
            expected: "content type `application/cloudevents+avro` is a cloudevents event format that ekko does not decode",
        },
    ]
}

fn rabbitmq_case(name: &'static str, body: Value, expected: &'static str) -> ErrorCase {
    ErrorCase {
        name,
        format: Format::RabbitmqPublish(Pointers {
            id: Some("/person".to_owned()),
            ..Pointers::default()
        }),
        headers: HeaderMap::new(),
        body: body.to_string(),
        expected,
    }
}

fn rabbitmq_error_cases() -> Vec<ErrorCase> {
    let publish = |changes: Value| {
        let body = json!({"properties": {}, "routing_key": "rk", "payload": "{\"person\":\"Jane Roe\"}", "payload_encoding": "string"});
        with_changes(body, changes)
    };
    let amqp = |headers: Value| publish(json!({"properties": {"headers": headers}}));
    vec![
        rabbitmq_case("payload not JSON", publish(json!({"payload": "<person>Jane Roe</person>"})),
            "rabbitmq payload is not JSON: expected value at line 1 column 1"),
        rabbitmq_case("payload invalid base64", publish(json!({"payload": "Jane Roe", "payload_encoding": "base64"})),
            "rabbitmq publish member `payload` is not valid base64 (RFC 4648) although payload_encoding is `base64`: invalid character at offset 4"),
        rabbitmq_case("base64 payload not JSON", publish(json!({"payload": "aGVsbG8=", "payload_encoding": "base64"})),
            "rabbitmq payload is not JSON: expected value at line 1 column 1"),
        rabbitmq_case("missing properties", publish(json!({"properties": null})),
            "rabbitmq publish member `properties` is missing: a publish body needs properties (may be empty), routing_key, payload and payload_encoding"),
        rabbitmq_case("missing routing_key", publish(json!({"routing_key": null})),
            "rabbitmq publish member `routing_key` is missing"),
        rabbitmq_case("missing payload", publish(json!({"payload": null})),
            "rabbitmq publish member `payload` is missing"),
        rabbitmq_case("missing payload_encoding", publish(json!({"payload_encoding": null})),
            "rabbitmq publish member `payload_encoding` is missing"),
        rabbitmq_case("unknown payload_encoding", publish(json!({"payload_encoding": "hex"})),
            "rabbitmq publish member `payload_encoding` is `hex`: expected `string` or `base64`"),
        rabbitmq_case("properties not an object", publish(json!({"properties": "Jane Roe"})),
            "rabbitmq publish member `properties` is a string: expected an object"),
        rabbitmq_case("numeric routing_key", publish(json!({"routing_key": 5})),
            "rabbitmq publish member `routing_key` is a number: expected a string"),
        rabbitmq_case("array body", json!([PERSONAL]),
            "rabbitmq publish body is an array: expected a JSON object with properties, routing_key, payload and payload_encoding"),
        rabbitmq_case("structured payload without source",
            publish(json!({"payload": "{\"specversion\":\"1.0\",\"id\":\"1\",\"type\":\"t\",\"data\":\"Jane Roe\"}"})),
            "rabbitmq payload: cloudevents attribute `source` is missing"),
        rabbitmq_case("amqp headers without type",
            amqp(json!({"cloudEvents:specversion": "1.0", "cloudEvents:id": "1", "cloudEvents:source": "s"})),
            "amqp application property `cloudEvents:type` is missing: an amqp binary-mode event needs application properties"),
        rabbitmq_case("amqp wrong specversion",
            amqp(json!({"cloudEvents:specversion": "1.0-rc1", "cloudEvents:id": "1", "cloudEvents:source": "s", "cloudEvents:type": "t"})),
            "amqp application property `cloudEvents:specversion` is `1.0-rc1`: ekko decodes only cloudevents specversion 1.0"),
        rabbitmq_case("amqp both prefixes",
            amqp(json!({"cloudEvents:id": "1", "cloudEvents_id": "2"})),
            "amqp application properties `cloudEvents:id` and `cloudEvents_id` are both present"),
        rabbitmq_case("amqp object value",
            amqp(json!({"cloudEvents:subject": {"name": PERSONAL}})),
            "amqp application property `cloudEvents:subject` is an object: expected a string, number or boolean"),
        rabbitmq_case("headers not an object", amqp(json!(PERSONAL)),
            "rabbitmq publish member `properties.headers` is a string: expected an object"),
        rabbitmq_case("message_id an object", publish(json!({"properties": {"message_id": {"n": 1}}, "payload": "{}"})),
            "rabbitmq publish member `properties.message_id` is an object: expected a string"),
        rabbitmq_case("pointer names object", publish(json!({"payload": "{\"person\":{\"name\":\"Jane Roe\"}}"})),
            "json pointer `/person` for `id` names an object: expected a string or number"),
    ]
}

fn json_case(
    name: &'static str,
    pointers: Pointers,
    body: &str,
    expected: &'static str,
) -> ErrorCase {
    ErrorCase {
        name,
        format: Format::Json(pointers),
        headers: HeaderMap::new(),
        body: body.to_owned(),
        expected,
    }
}

fn json_error_cases() -> Vec<ErrorCase> {
    let body = r#"{"person":{"name":"Jane Roe"},"tags":["Jane Roe"]}"#;
    vec![
        json_case(
            "body not JSON",
            Pointers::default(),
            "<person>Jane Roe</person>",
            "body is not JSON: expected value at line 1 column 1",
        ),
        json_case(
            "subject names object",
            Pointers {
                subject: Some("/person".to_owned()),
                ..Pointers::default()
            },
            body,
            "json pointer `/person` for `subject` names an object: expected a string or number",
        ),
        json_case(
            "type names array",
            Pointers {
                kind: Some("/tags".to_owned()),
                ..Pointers::default()
            },
            body,
            "json pointer `/tags` for `type` names an array: expected a string or number",
        ),
        json_case(
            "id names whole object",
            Pointers {
                id: Some(String::new()),
                ..Pointers::default()
            },
            body,
            "json pointer `` for `id` names an object",
        ),
        json_case(
            "invalid pointer",
            Pointers {
                source: Some("person".to_owned()),
                ..Pointers::default()
            },
            body,
            "json pointer `person` is invalid: a pointer is empty or starts with `/` (RFC 6901)",
        ),
    ]
}

fn check_error_cases(cases: Vec<ErrorCase>) {
    for case in cases {
        let name = case.name;
        let result = decode(&case.format, &case.headers, case.body.as_bytes());
        let Err(error) = result else {
            panic!("case {name}: expected an error, got {result:?}");
        };
        let message = error.to_string();
        assert!(
            message.contains(case.expected),
            "case {name}: message was: {message}"
        );
        assert!(
            !message.contains(PERSONAL),
            "case {name}: message repeats body data: {message}"
        );
        let first = message.chars().next();
        assert!(
            first.is_some_and(char::is_lowercase),
            "case {name}: message must start lowercase: {message}"
        );
    }
}

#[test]
fn structured_errors_name_the_attribute() {
    check_error_cases(cloudevents_error_cases());
}

#[test]
fn batch_errors_name_the_element() {
    check_error_cases(batch_error_cases());
}

#[test]
fn binary_errors_name_the_header() {
    check_error_cases(binary_error_cases());
}

#[test]
fn rabbitmq_errors_name_the_member() {
    check_error_cases(rabbitmq_error_cases());
}

#[test]
fn json_errors_name_the_pointer() {
    check_error_cases(json_error_cases());
}
