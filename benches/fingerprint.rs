//! Fingerprint cost against serde_json's parse of the same SCIM person document.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ekko::notify::canonical::canonicalize;
use ekko::notify::fingerprint::compute;
use ekko::notify::mask::Mask;
use serde_json::{json, Value};

/// Builds a SCIM 2.0 user (RFC 7643), with the enterprise extension when `enterprise` is set.
/// `groups` sets the number of group memberships and entitlements, which sets the document size.
fn scim_person(groups: usize, enterprise: bool) -> Value {
    let memberships: Vec<Value> = (0..groups)
        .map(|i| {
            json!({
                "value": format!("8c9e{i:04}-6f1b-4d2a-9b7e-1a2b3c4d5e6f"),
                "$ref": format!("https://idm.example.org/scim/v2/Groups/8c9e{i:04}-6f1b-4d2a-9b7e-1a2b3c4d5e6f"),
                "display": format!("Department {} / Team {}", i / 7, i % 7),
                "type": if i % 3 == 0 { "indirect" } else { "direct" },
            })
        })
        .collect();
    let entitlements: Vec<Value> = (0..groups)
        .map(|i| json!({"value": format!("app-{}:role-{}", i % 11, i), "primary": i == 0}))
        .collect();

    let mut person = json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
        ],
        "id": "2819c223-7f76-453a-919d-413861904646",
        "externalId": "701984",
        "userName": "bjensen@example.org",
        "name": {
            "formatted": "Ms. Barbara J Jensen, III",
            "familyName": "Jensen",
            "givenName": "Barbara",
            "middleName": "Jane",
            "honorificPrefix": "Ms.",
            "honorificSuffix": "III"
        },
        "displayName": "Babs Jensen",
        "preferredLanguage": "en-US",
        "locale": "en-US",
        "timezone": "Europe/Amsterdam",
        "active": true,
        "emails": [
            {"value": "bjensen@example.org", "type": "work", "primary": true, "verifiedAt": "2024-03-01T08:15:00Z"},
            {"value": "babs@jensen.example", "type": "home", "verifiedAt": "2023-11-20T19:02:11Z"}
        ],
        "phoneNumbers": [{"value": "+31 20 555 0100", "type": "work"}],
        "addresses": [{
            "streetAddress": "Keizersgracht 100",
            "locality": "Amsterdam",
            "postalCode": "1015 AA",
            "country": "NL",
            "type": "work",
            "primary": true
        }],
        "groups": memberships,
        "entitlements": entitlements,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
            "employeeNumber": "701984",
            "costCenter": "4130",
            "organization": "Example University",
            "division": "Faculty of Science",
            "department": "Informatics",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"}
        },
        "meta": {
            "resourceType": "User",
            "created": "2010-01-23T04:56:22Z",
            "lastModified": "2024-05-13T04:42:34Z",
            "version": "W/\"3694e05e9dff591\"",
            "location": "https://idm.example.org/scim/v2/Users/2819c223-7f76-453a-919d-413861904646"
        }
    });

    if !enterprise {
        let fields = person.as_object_mut().expect("object");
        fields.remove("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User");
        fields.insert(
            "schemas".to_owned(),
            json!(["urn:ietf:params:scim:schemas:core:2.0:User"]),
        );
    }
    person
}

fn bench_fingerprint(c: &mut Criterion) {
    let mask = Mask::parse(&[
        "/meta/lastModified".to_owned(),
        "/meta/version".to_owned(),
        "/emails/*/verifiedAt".to_owned(),
    ])
    .expect("valid mask");

    // These sizes give documents of about 1 KiB and 16 KiB. The bench id contains the byte count.
    for (label, groups, enterprise) in [("1KiB", 0, false), ("16KiB", 66, true)] {
        let person = scim_person(groups, enterprise);
        let bytes = serde_json::to_vec(&person).expect("serializable");
        let parsed: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let mut group = c.benchmark_group(format!("fingerprint/{label}"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));

        group.bench_with_input(
            BenchmarkId::new("parse", bytes.len()),
            &bytes,
            |b, bytes| {
                b.iter(|| serde_json::from_slice::<Value>(black_box(bytes)).expect("valid JSON"))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("canonicalize", bytes.len()),
            &parsed,
            |b, value| b.iter(|| canonicalize(black_box(value))),
        );
        group.bench_with_input(
            BenchmarkId::new("parse_mask_canonicalize_hash", bytes.len()),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let value: Value =
                        serde_json::from_slice(black_box(bytes)).expect("valid JSON");
                    compute(value, &mask).fingerprint
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_fingerprint);
criterion_main!(benches);
