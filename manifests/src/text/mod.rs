//! The build2 manifest text format: the one place that knows how manifests
//! look on the wire (PROTOCOLS.md section 1).
//!
//! Everything above this module works with [`Manifest`] values (ordered
//! name/value pairs); nothing else in the workspace parses or writes the
//! text form by hand.

pub mod codepoint;
mod parser;
mod serializer;

use serde::{Deserialize, Serialize};
use std::fmt;

pub use parser::{parse_manifest, parse_stream};
pub use serializer::{serialize_manifest, serialize_stream};

/// The only format version this crate reads and writes; build2 has never
/// defined another, so anything else is a file we must not guess at.
pub const FORMAT_VERSION: &str = "1";

/// A place in a manifest's source text, kept with every pair so that errors
/// found later (a bad status, a missing field) still point a person at the
/// right line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// 1-based line number.
    pub line: u64,
    /// 1-based column, counted in Unicode code points.
    pub column: u64,
}

/// One `name: value` pair of a manifest.
///
/// Equality compares the name and value only: a manifest read from a file
/// and the same manifest built in memory are the same data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NameValue {
    /// The pair's name: non-empty, no whitespace, no `:`.
    pub name: String,
    /// The value, unescaped (continuations joined, multi-line form resolved).
    pub value: String,
    /// Where the name starts in the source (zero when built in memory).
    #[serde(skip)]
    pub name_pos: Position,
    /// Where the value starts in the source (zero when built in memory).
    #[serde(skip)]
    pub value_pos: Position,
}

impl PartialEq for NameValue {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.value == other.value
    }
}
impl Eq for NameValue {}

impl NameValue {
    /// A pair built in memory (no source position).
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        NameValue {
            name: name.into(),
            value: value.into(),
            name_pos: Position::default(),
            value_pos: Position::default(),
        }
    }
}

/// One manifest: its pairs in source order, without the format-version pair.
///
/// Order matters (repeatable fields, forward-compatible unknown fields are
/// written back where they were), so this is a list, not a map.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Name of the input this manifest came from (a file name, a URL, "stdin");
    /// used as the prefix of every error message about it.
    #[serde(skip)]
    pub source: String,
    /// Where the manifest's format-version pair starts.
    #[serde(skip)]
    pub start: Position,
    /// The pairs, in order.
    pub values: Vec<NameValue>,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}
impl Eq for Manifest {}

impl Manifest {
    /// An empty manifest whose errors will be reported against `source`.
    pub fn new(source: impl Into<String>) -> Self {
        Manifest {
            source: source.into(),
            start: Position::default(),
            values: Vec::new(),
        }
    }

    /// Appends a pair.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.push(NameValue::new(name, value));
    }

    /// Appends a pair when the value is present; optional fields use this so
    /// that absent ones are not written as empty.
    pub fn push_opt(&mut self, name: &str, value: Option<impl Into<String>>) {
        if let Some(v) = value {
            self.push(name, v);
        }
    }

    /// The first value named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|nv| nv.name == name)
            .map(|nv| nv.value.as_str())
    }

    /// Every value named `name`, in order (for repeatable fields).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |nv| nv.name == name)
            .map(|nv| nv.value.as_str())
    }
}

/// A manifest that could not be read. Displays as
/// `source:line:column: error: message`, the form compilers use, so editors
/// and people can jump to the spot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}:{column}: error: {message}")]
pub struct ParseError {
    /// The input's name, as given to the parser.
    pub source_name: String,
    /// 1-based line of the offending text.
    pub line: u64,
    /// 1-based column (code points) of the offending text.
    pub column: u64,
    /// What is wrong, for a person.
    pub message: String,
}

/// A manifest that cannot be written: a name or value the format cannot
/// carry. Names the manifest's source and the offending pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: error: cannot serialize '{name}': {message}")]
pub struct SerializeError {
    /// The manifest's source name (may be empty for in-memory manifests).
    pub source_name: String,
    /// The pair's name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// Makes arbitrary text (a build log) safe to carry in a manifest value
/// that build2 will accept: CR LF and lone CR become LF, tabs and newlines
/// stay, and every code point build2 refuses (see [`codepoint`]: C0 and C1
/// controls, format characters such as U+FEFF and U+200B, private-use,
/// noncharacters, reserved) becomes a visible escape, `\xNN` for ASCII
/// controls and `\u{XXXX}` for the rest. Nothing is dropped, so a log keeps
/// all it said.
pub fn sanitize_text(s: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\t' => out.push(c),
            c if codepoint::is_build2_text(c) => out.push(c),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
        }
    }
    out
}

/// Control characters our parser refuses outright in names and values (C0
/// controls other than newline and tab, and DEL), as build2's does. Other
/// code points build2 refuses are read, so that a guest's result with a
/// stray U+FEFF in a log is not lost whole: whoever forwards such text
/// passes it through [`sanitize_text`], and the serializer refuses it.
pub(crate) fn is_forbidden_control(c: char) -> bool {
    (c < ' ' && c != '\n' && c != '\t') || c == '\u{7f}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_text_and_escapes_controls() {
        assert_eq!(sanitize_text("a\r\nb\rc\x1b[0m\td"), "a\nb\nc\\x1b[0m\td");
    }

    #[test]
    fn sanitize_escapes_what_build2_refuses() {
        let s = sanitize_text("bom\u{feff} nel\u{85} zw\u{200b} pua\u{e000} nc\u{fffe} ok é ✓");
        assert_eq!(
            s,
            "bom\\u{feff} nel\\u{0085} zw\\u{200b} pua\\u{e000} nc\\u{fffe} ok é ✓"
        );
        assert!(s
            .chars()
            .all(|c| c == '\n' || c == '\t' || codepoint::is_build2_text(c)));
    }
}
