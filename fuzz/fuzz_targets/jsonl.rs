//! `parse_jsonl` on arbitrary bytes: all or nothing, one job per non-empty line, and every job
//! it accepts survives the MessagePack round trip.
#![no_main]

use bgq::commands::publish::parse_jsonl;
use bgq::job::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse_jsonl(bytes) {
        Ok(jobs) => {
            let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            let lines = body.split(|b| *b == b'\n').count();
            assert_eq!(jobs.len(), lines, "one job per line");
            for stored in jobs {
                let job = Payload::from_msgpack(&stored).expect("decodes");
                assert!(matches!(job, Payload::Json(_)));
                assert_eq!(job.to_msgpack().expect("encodes"), stored);
            }
        }
        Err(err) => {
            assert_eq!(bgq::error::exit_code(&err), 2, "{err:#}");
            assert!(!format!("{err:#}").contains('\n'), "one line: {err:#}");
        }
    }
});
