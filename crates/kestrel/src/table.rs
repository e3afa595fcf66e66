//! Output of the manager commands (`kestrel vm|net|pool|vol`): human tables with aligned
//! columns, `key: value` blocks, and `--json` (one JSON document on stdout).
//!
//! Every command takes [`OutputArgs`] (`--json`) and prints through [`emit`]:
//!
//! ```ignore
//! let networks: Vec<NetworkInfo> = client.request(Method::GET, "/v1/networks", None::<&()>)?;
//! table::emit(args.output.json, &networks, |networks| {
//!     let mut table = Table::new(["NAME", "STATE", "BRIDGE"]);
//!     for n in networks {
//!         table.row([n.definition.name.clone(), state(n.active), n.bridge.clone()]);
//!     }
//!     table.render()
//! });
//! ```
//!
//! A reader that goes away (`kestrel vm list | head -1`) is not an error: output stops quietly.
#![allow(dead_code)] // the net/pool/vol commands use the rest

use std::fmt::Display;
use std::io::Write;

use clap::Args;
use serde::Serialize;

/// `--json`, flattened into every manager command.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Print the answer as JSON (the daemon API's body) instead of a human table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A human table: a header row, then rows, each column as wide as its widest cell. The last
/// column is not padded (no trailing spaces).
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// The space between columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these column headers (upper case by convention: `NAME`, `STATE`).
    pub fn new<I, S>(headers: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Display,
    {
        Table { headers: headers.into_iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Table
    where
        I: IntoIterator<Item = S>,
        S: Display,
    {
        let mut row: Vec<String> =
            cells.into_iter().take(self.headers.len()).map(|c| sanitize(&c.to_string())).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
        self
    }

    /// How many rows (not counting the header).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::with_capacity((self.rows.len() + 1) * (widths.iter().sum::<usize>() + 16));
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let last = line.len().saturating_sub(1);
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                out.push_str(cell);
                if i < last {
                    out.extend(std::iter::repeat_n(' ', w - width(cell)));
                    out.push_str(GAP);
                }
            }
            // A blank last cell would leave trailing spaces.
            let trimmed = out.trim_end_matches(' ').len();
            out.truncate(trimmed);
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines, keys aligned (what `kestrel vm info` prints).
#[derive(Clone, Debug, Default)]
pub struct KeyValues {
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    pub fn new() -> KeyValues {
        KeyValues::default()
    }

    /// Adds one line.
    pub fn add(&mut self, key: impl Display, value: impl Display) -> &mut KeyValues {
        self.pairs.push((key.to_string(), sanitize(&value.to_string())));
        self
    }

    /// Adds one line if there is a value.
    pub fn add_some<V: Display>(&mut self, key: impl Display, value: Option<V>) -> &mut KeyValues {
        if let Some(value) = value {
            self.add(key, value);
        }
        self
    }

    /// The lines, each `key:` padded to the longest key, then the value.
    pub fn render(&self) -> String {
        let key_width = self.pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.pairs {
            out.push_str(key);
            out.push(':');
            if !value.is_empty() {
                out.extend(std::iter::repeat_n(' ', key_width - width(key) + 1));
                out.push_str(value);
            }
            out.push('\n');
        }
        out
    }
}

/// The display width of a cell: characters, not bytes (names are ASCII, but paths and console
/// lines need not be).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// A cell on one line: control characters (a newline in a detail, an escape sequence from a
/// console line) would break the table or the terminal, so they become `?`.
fn sanitize(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
    } else {
        text.to_owned()
    }
}

/// Writes `text` to stdout. A closed stdout (the reader left) is not reported.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// `value` as pretty JSON, one document ending in a newline.
pub fn json_text<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing the API's own bodies (plain structs, string keys) cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Prints `value` as JSON with `--json`, else what `human` makes of it.
pub fn emit<T: Serialize + ?Sized>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        print(&json_text(value));
    } else {
        print(&human(value));
    }
}

/// An optional value for a table cell: `-` when absent.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn columns_align_under_their_headers() {
        let mut table = Table::new(["NAME", "STATE", "PID"]);
        table.row(["web", "running", "4242"]).row(["database-1", "stopped", "-"]);
        assert_eq!(
            table.render(),
            "NAME        STATE    PID\n\
             web         running  4242\n\
             database-1  stopped  -\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_blank_last_cells_leave_no_trailing_space() {
        let mut table = Table::new(["A", "B"]);
        table.row(["x"]).row(["y", "z", "dropped"]);
        assert_eq!(table.render(), "A  B\nx\ny  z\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(["NAME", "STATE"]).render(), "NAME  STATE\n");
    }

    #[test]
    fn control_characters_cannot_break_a_line() {
        let mut table = Table::new(["DETAIL"]);
        table.row(["two\nlines\x1b[2J"]);
        assert_eq!(table.render(), "DETAIL\ntwo?lines?[2J\n");
    }

    #[test]
    fn key_values_align_their_values() {
        let mut kv = KeyValues::new();
        kv.add("name", "web").add("state", "running").add_some("pid", None::<u32>).add("empty", "");
        assert_eq!(kv.render(), "name:  web\nstate: running\nempty:\n");
    }

    #[test]
    fn json_is_one_document_with_a_newline() {
        let text = json_text(&serde_json::json!({"name": "web"}));
        assert!(text.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["name"], "web");
    }

    proptest! {
        #[test]
        fn every_rendered_line_is_one_line_and_cells_start_at_the_same_column(
            rows in proptest::collection::vec(proptest::collection::vec("\\PC{0,12}|[a-z\n\t]{0,6}", 0..4), 0..6)
        ) {
            let mut table = Table::new(["ONE", "TWO", "THREE"]);
            for row in &rows {
                table.row(row.iter());
            }
            let text = table.render();
            let lines: Vec<&str> = text.lines().collect();
            prop_assert_eq!(lines.len(), rows.len() + 1);
            let second = lines[0].find("TWO").unwrap();
            for line in &lines {
                prop_assert!(!line.ends_with(' '));
                prop_assert!(!line.chars().any(char::is_control));
                // A line that goes on past the first column has the gap right before the
                // second: the columns line up whatever the cells hold.
                let chars: Vec<char> = line.chars().collect();
                if chars.len() > second {
                    prop_assert_eq!(&chars[second - 2..second], &[' ', ' ']);
                }
            }
        }
    }
}
