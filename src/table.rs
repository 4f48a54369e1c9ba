//! Tables for people: columns aligned under a header, fitted to the terminal's width by
//! shortening the columns that may be shortened, with optional colour. A cell is one line of
//! visible text: its control characters are shown escaped (`escape::line`), whoever wrote them.

use std::borrow::Cow;

use crate::escape;
use crate::term::{Paint, Style};

/// One cell: its text, as shown, and colour.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    text: String,
    paint: Option<Paint>,
}

impl Cell {
    /// A plain cell.
    pub fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: shown(text.into()),
            paint: None,
        }
    }

    /// A coloured cell (coloured only when the style colours).
    pub fn painted(text: impl Into<String>, paint: Paint) -> Cell {
        Cell {
            text: shown(text.into()),
            paint: Some(paint),
        }
    }
}

/// `text` escaped once, here, so that widths and shortening count what the terminal shows and a
/// name cannot break its row or send the terminal a command.
fn shown(text: String) -> String {
    match escape::line(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// A column's header and whether its cells may be shortened to fit.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header text.
    pub header: &'static str,
    /// Whether cells may be shortened (names, not numbers or states).
    pub shrinks: bool,
}

/// A table to print.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<Cell>>,
}

/// Shortened cells keep at least this many characters.
const MIN_SHRUNK: usize = 6;
/// Between columns.
const GAP: &str = "  ";

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[Column]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    /// The table as lines, fitted to `style.width` when there is one.
    pub fn render(&self, style: &Style) -> String {
        let widths = self.widths(style.width);
        // A header is shortened only in an empty column (see `widths`).
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|column| Cell::painted(column.header, Paint::Bold))
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                let text = shorten(&cell.text, *width);
                // Padded before painting, so that escapes do not count as width.
                let padding = if index == last {
                    String::new()
                } else {
                    " ".repeat(width.saturating_sub(text.chars().count()))
                };
                let shown = match cell.paint {
                    Some(paint) => style.paint(&text, paint),
                    None => text,
                };
                line.push_str(&shown);
                line.push_str(&padding);
                if index != last {
                    line.push_str(GAP);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Each column's width: its widest cell, less where the table must fit `limit`.
    fn widths(&self, limit: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.header.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.text.chars().count());
            }
        }
        let Some(limit) = limit else {
            return widths;
        };
        let total = |widths: &[usize]| {
            widths.iter().sum::<usize>() + GAP.len() * widths.len().saturating_sub(1)
        };
        // First the columns with nothing in them (every cell `-`): their header is all they
        // show, and it may be shortened too, before any name loses a character.
        let empty: Vec<bool> = (0..self.columns.len())
            .map(|index| {
                self.columns[index].shrinks
                    && self.rows.iter().all(|row| {
                        row.get(index)
                            .is_none_or(|cell| matches!(cell.text.as_str(), "" | "-"))
                    })
            })
            .collect();
        while total(&widths) > limit {
            let widest = (0..widths.len())
                .filter(|&index| empty[index] && widths[index] > MIN_SHRUNK)
                .max_by_key(|&index| widths[index]);
            match widest {
                Some(index) => widths[index] -= 1,
                None => break,
            }
        }
        while total(&widths) > limit {
            // Take one character from the widest column that may still give one.
            let widest = self
                .columns
                .iter()
                .zip(&widths)
                .enumerate()
                .filter(|(_, (column, width))| {
                    column.shrinks && **width > MIN_SHRUNK.max(column.header.len())
                })
                .max_by_key(|(_, (_, width))| **width)
                .map(|(index, _)| index);
            match widest {
                Some(index) => widths[index] -= 1,
                None => break,
            }
        }
        widths
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::new(&[
            Column {
                header: "ID",
                shrinks: false,
            },
            Column {
                header: "NAME",
                shrinks: true,
            },
            Column {
                header: "STATE",
                shrinks: false,
            },
        ]);
        table.push(vec![
            Cell::new("12"),
            Cell::new("a-rather-long-identifier-name"),
            Cell::painted("READY", Paint::Green),
        ]);
        table
    }

    #[test]
    fn aligns_columns_under_the_header() {
        let text = sample().render(&Style::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  NAME                           STATE");
        assert_eq!(lines[1], "12  a-rather-long-identifier-name  READY");
    }

    #[test]
    fn fits_the_width_by_shortening_flexible_columns() {
        let style = Style {
            color: false,
            width: Some(24),
        };
        let text = sample().render(&style);
        for line in text.lines() {
            assert!(line.chars().count() <= 24, "{line:?}");
        }
        assert!(text.contains("12  a-rather-lon…  READY"), "{text}");
    }

    #[test]
    fn empty_columns_shrink_before_names() {
        let mut table = Table::new(&[
            Column {
                header: "NAME",
                shrinks: true,
            },
            Column {
                header: "SERIAL_GROUP",
                shrinks: true,
            },
            Column {
                header: "STATE",
                shrinks: false,
            },
        ]);
        table.push(vec![
            Cell::new("a-long-name-of-a-job"),
            Cell::new("-"),
            Cell::new("READY"),
        ]);
        let style = Style {
            color: false,
            width: Some(35),
        };
        let text = table.render(&style);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME                  SERIA…  STATE", "{text}");
        assert_eq!(lines[1], "a-long-name-of-a-job  -       READY", "{text}");
        // Narrower still: the name gives way once the empty column is as short as it goes.
        let style = Style {
            color: false,
            width: Some(30),
        };
        let text = table.render(&style);
        assert!(text.contains("a-long-name-of…  -       READY"), "{text}");
    }

    #[test]
    fn control_characters_are_escaped_and_counted_as_shown() {
        let mut table = Table::new(&[
            Column {
                header: "NAME",
                shrinks: true,
            },
            Column {
                header: "STATE",
                shrinks: false,
            },
        ]);
        table.push(vec![Cell::new("a\nb\x1b[2J"), Cell::new("READY")]);
        table.push(vec![Cell::new("plain"), Cell::new("READY")]);
        let text = table.render(&Style::plain());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME         STATE");
        assert_eq!(lines[1], "a\\nb\\x1b[2J  READY");
        assert_eq!(lines[2], "plain        READY");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn colour_does_not_shift_columns() {
        let style = Style {
            color: true,
            width: None,
        };
        let text = sample().render(&style);
        assert!(text.contains("\x1b[32mREADY\x1b[0m"), "{text}");
        assert!(
            text.starts_with("\x1b[1mID\x1b[0m  \x1b[1mNAME\x1b[0m"),
            "{text}"
        );
    }
}
