//! `bgq::config::parse` on arbitrary UTF-8: it may refuse the text, never panic, and a refusal
//! is always one line (main prints it after `bgq: error: `).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(err) = bgq::config::parse(text, Path::new("/etc/bgq.toml")) {
        let message = format!("{err:#}");
        assert!(!message.is_empty());
        assert_eq!(
            bgq::error::exit_code(&err),
            2,
            "a config error is the user's: {message}"
        );
    }
});
