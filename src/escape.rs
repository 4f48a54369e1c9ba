//! Text that came from a publisher or a callback, made safe to show on a terminal.
//!
//! A queue name, serial group, identifier, callback name or output tail is data another program
//! wrote. Printed raw, an ESC starts a terminal command (OSC 52 writes the operator's clipboard,
//! `ESC [2J` clears the screen), a `\r` hides what came before it on the line, and a newline
//! splits a line that a script reads as one record. Human output shows such text through these
//! functions; `--json`, `--prometheus` and the notify command's stdin stay exact, since a program
//! reads them.
//!
//! The characters escaped are Unicode's controls (`char::is_control`): C0 (U+0000..U+001F), DEL
//! (U+007F) and C1 (U+0080..U+009F, which some terminals take as ESC sequences: U+009B is CSI).
//! They are written as Rust writes them: `\n`, `\t`, `\r`; other C0 and DEL as `\x1b`, `\x7f`;
//! C1 as `\u{9b}`, a character and not a byte (as UTF-8 it is the two bytes `c2 9b`).
//!
//! A backslash stays as it is. Escaping is then idempotent: escaped text passes unchanged, so a
//! second layer (stderr escapes every line: see `diagnostic`) changes nothing, and paths and
//! patterns read as written. The price is that an identifier holding a backslash and an `n` looks
//! like one holding a newline; `--json` tells them apart, and `publish` stores no control
//! characters in names (an older bgq did).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is a control character that human output shows escaped: C0, DEL or C1.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// `text` as one line: every control character escaped, newlines and tabs too. For names
/// (queue, serial group, identifier, callback) and anything else that must stay on its line.
pub fn line(text: &str) -> Cow<'_, str> {
    escape_where(text, is_control)
}

/// `text` as lines: newlines and tabs kept, every other control character escaped (`\r`, ESC and
/// so every OSC and CSI sequence, DEL, C1). For a callback's output tail.
pub fn text(text: &str) -> Cow<'_, str> {
    escape_where(text, |c| is_control(c) && c != '\n' && c != '\t')
}

/// JSON that `serde_json` wrote, with the control characters it leaves raw (DEL and C1; it
/// escapes C0 itself) written as JSON escapes (`\u007f`): still valid JSON, with the same value,
/// and safe on a terminal. Newlines between the lines of pretty-printed JSON are kept.
pub fn json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_control(c) && c != '\n') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_control(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` with each character for which `escaped` holds written as its escape.
fn escape_where(text: &str, escaped: impl Fn(char) -> bool) -> Cow<'_, str> {
    // Most text has nothing to escape: borrow it.
    let Some(first) = text.find(&escaped) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if escaped(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Appends the visible escape of control character `c`.
fn push_escape(out: &mut String, c: char) {
    let _ = match c {
        '\n' => out.write_str("\\n"),
        '\t' => out.write_str("\\t"),
        '\r' => out.write_str("\\r"),
        '\0'..='\x7f' => write!(out, "\\x{:02x}", u32::from(c)),
        _ => write!(out, "\\u{{{:x}}}", u32::from(c)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clipboard write, screen clear and line overwrite of issue 13.
    const HOSTILE: &str = "\x1b]52;c;SGVsbG8=\x07\x1b[2J\rhidden\n\tnext\x7f\u{9b}31m";

    fn no_controls_but(text: &str, kept: &[char]) -> bool {
        text.chars().all(|c| !is_control(c) || kept.contains(&c))
    }

    #[test]
    fn the_controls_are_c0_del_and_c1() {
        let controls: Vec<u32> = (0..0x110000)
            .filter_map(char::from_u32)
            .filter(|c| is_control(*c))
            .map(u32::from)
            .collect();
        let expected: Vec<u32> = (0..0x20).chain([0x7f]).chain(0x80..0xa0).collect();
        assert_eq!(controls, expected);
    }

    #[test]
    fn line_escapes_every_control_visibly() {
        assert_eq!(
            line(HOSTILE),
            "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\rhidden\\n\\tnext\\x7f\\u{9b}31m"
        );
        assert_eq!(line("a\0b"), "a\\x00b");
        for code in 0..0x100 {
            let c = char::from_u32(code).expect("a char");
            let shown = line(&c.to_string()).into_owned();
            assert!(no_controls_but(&shown, &[]), "{code:#x}: {shown:?}");
        }
    }

    #[test]
    fn line_leaves_printable_text_and_backslashes_alone() {
        for text in [
            "sendEmail-7",
            "invoice 7",
            "café ☕ 東京",
            "C:\\jobs\\n",
            "",
        ] {
            assert!(matches!(line(text), Cow::Borrowed(_)), "{text}");
            assert_eq!(line(text), text);
        }
    }

    #[test]
    fn text_keeps_newlines_and_tabs_only() {
        assert_eq!(
            text(HOSTILE),
            "\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\rhidden\n\tnext\\x7f\\u{9b}31m"
        );
        assert_eq!(text("line 1\nline 2\n"), "line 1\nline 2\n");
        assert!(no_controls_but(&text(HOSTILE), &['\n', '\t']));
    }

    #[test]
    fn escaping_twice_changes_nothing() {
        let once = line(HOSTILE).into_owned();
        assert_eq!(line(&once), once);
        assert_eq!(text(&once), once);
        let lines = text(HOSTILE).into_owned();
        assert_eq!(text(&lines), lines);
    }

    #[test]
    fn json_stays_valid_and_means_the_same() {
        let value = serde_json::json!({ "output": HOSTILE, "k\u{85}ey": ["\x7f"] });
        for written in [
            value.to_string(),
            serde_json::to_string_pretty(&value).expect("serialises"),
        ] {
            let safe = json(&written);
            assert!(no_controls_but(&safe, &['\n']), "{safe}");
            let read: serde_json::Value = serde_json::from_str(&safe).expect("valid JSON");
            assert_eq!(read, value);
        }
        assert!(!json(&value.to_string()).contains('\n'));
        assert!(matches!(json("{\"a\":\"b\"}"), Cow::Borrowed(_)));
    }
}
