//! `parse_json` on arbitrary bytes; what it accepts survives the MessagePack round trip that
//! `publish` and `process` put it through, and reaches the callback as one line of JSON that a
//! correct parser reads back as the same value. `encode_json`, which `publish` uses, accepts the
//! same inputs and stores the same bytes.
//!
//! Floats are checked with std's correctly rounded `f64::from_str`, not serde_json's default
//! parser, which can be one unit in the last place off (see README.md, "Found").
#![no_main]

use bgq::commands::publish::{encode_json, parse_json};
use bgq::job::Payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = parse_json(bytes) else {
        assert!(encode_json(bytes).is_err(), "encode_json accepts what parse_json refuses");
        return;
    };
    let payload = Payload::Json(value.clone());
    let stored = payload.to_msgpack().expect("an accepted value encodes");
    assert_eq!(encode_json(bytes).ok(), Some(stored.clone()), "publish stores the same bytes");
    let back = Payload::from_msgpack(&stored).expect("what was stored decodes");
    assert_eq!(back, payload, "MessagePack round trip");
    let line = back.stdin_bytes().expect("stdin bytes");
    assert_eq!(line.last(), Some(&b'\n'));
    let body = &line[..line.len() - 1];
    assert!(!body.contains(&b'\n'), "one line");
    let delivered = parse_json(body).expect("the callback gets valid JSON");
    same(&value, &delivered, body);
});

/// `published` and `delivered` are the same value; a float that the callback's text spells
/// differently from serde_json's reading is judged by what the text means.
fn same(published: &Value, delivered: &Value, text: &[u8]) {
    match (published, delivered) {
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(b) {
                same(a, b, text);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            assert!(a.keys().eq(b.keys()), "keys and their order");
            for (a, b) in a.values().zip(b.values()) {
                same(a, b, text);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.is_f64() => {
            let spelled = a.to_string();
            let meant: f64 = spelled.parse().expect("a float's text parses");
            assert_eq!(
                meant.to_bits(),
                a.as_f64().expect("f64").to_bits(),
                "the callback reads {spelled} as another float"
            );
            assert!(b.is_f64(), "{a} arrives as {b}");
        }
        (a, b) => assert_eq!(a, b, "in {}", String::from_utf8_lossy(text)),
    }
}
