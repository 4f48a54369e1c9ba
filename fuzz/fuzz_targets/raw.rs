//! A `--raw` payload is stored and delivered byte for byte, whatever the bytes.
#![no_main]

use bgq::job::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let payload = Payload::Raw(bytes.to_vec());
    let stored = payload.to_msgpack().expect("encodes");
    assert_eq!(Payload::from_msgpack(&stored).expect("decodes"), payload);
    assert_eq!(payload.stdin_bytes().expect("stdin bytes"), bytes);
});
