//! The terminal on stdout: whether there is one, how wide it is, and whether to colour.

use std::io::IsTerminal;

/// When to colour output (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Only on a terminal, and never with `NO_COLOR` set.
    #[default]
    Auto,
    /// Always, even when piped.
    Always,
    /// Never.
    Never,
}

/// A colour for a piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Headers.
    Bold,
    /// Done well.
    Green,
    /// Needs a look.
    Yellow,
    /// Failed.
    Red,
    /// Running now.
    Cyan,
    /// Waiting on something.
    Magenta,
    /// Of no further interest.
    Dim,
}

impl Paint {
    fn sgr(self) -> &'static str {
        match self {
            Paint::Bold => "1",
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Red => "31",
            Paint::Cyan => "36",
            Paint::Magenta => "35",
            Paint::Dim => "2",
        }
    }
}

/// How human output is shown on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Whether to colour.
    pub color: bool,
    /// The terminal's width, when stdout is a terminal; tables fit it.
    pub width: Option<usize>,
}

impl Style {
    /// The style for stdout under `choice`, `NO_COLOR` and the terminal (if any).
    pub fn for_stdout(choice: ColorChoice) -> Style {
        let terminal = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        };
        Style {
            color,
            width: if terminal { stdout_width() } else { None },
        }
    }

    /// Plain text: no colour, no width limit.
    pub fn plain() -> Style {
        Style {
            color: false,
            width: None,
        }
    }

    /// `text` in `paint`, when colouring.
    pub fn paint(&self, text: &str, paint: Paint) -> String {
        if self.color && !text.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", paint.sgr())
        } else {
            text.to_owned()
        }
    }
}

/// The width of the terminal on stdout.
fn stdout_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // Hand-written: nix has no safe call for it (its ioctl macros only declare unsafe functions).
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which is live and ours for the call; on
    // a descriptor that is not a terminal it fails with ENOTTY and writes nothing.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paints_only_when_colouring() {
        let plain = Style::plain();
        assert_eq!(plain.paint("READY", Paint::Green), "READY");
        let colour = Style {
            color: true,
            width: None,
        };
        assert_eq!(colour.paint("READY", Paint::Green), "\x1b[32mREADY\x1b[0m");
        assert_eq!(colour.paint("", Paint::Green), "");
    }
}
