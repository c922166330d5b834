//! Reading the manifest text format.
//!
//! A hand-written byte scanner rather than a parser-combinator crate: the
//! escape rules (continuations, two multi-line forms, the `\\` at end of
//! value) follow build2's own scanner case by case, and a result manifest may
//! be 15 MiB, so the hot loop copies runs of plain bytes at once.
//!
//! All special characters are ASCII and the input is validated as UTF-8 up
//! front, so scanning bytes never splits a code point.

use super::{is_forbidden_control, Manifest, NameValue, ParseError, Position, FORMAT_VERSION};
use std::borrow::Cow;

/// Parses input that must hold exactly one manifest (a machine manifest, a
/// task, a result).
///
/// `source` names the input in error messages.
pub fn parse_manifest(input: &[u8], source: &str) -> Result<Manifest, ParseError> {
    let mut manifests = Parser::new(input, source)?.run(Some(1))?;
    match manifests.len() {
        1 => Ok(manifests.remove(0)),
        _ => Err(ParseError {
            source_name: source.to_string(),
            line: 1,
            column: 1,
            message: "empty input: expected a manifest starting with ': 1'".to_string(),
        }),
    }
}

/// Parses a stream of manifests (a bootstrapped machine, a task request,
/// ...). Empty input is an empty stream.
pub fn parse_stream(input: &[u8], source: &str) -> Result<Vec<Manifest>, ParseError> {
    Parser::new(input, source)?.run(None)
}

struct Parser<'a> {
    src: Cow<'a, [u8]>,
    source: &'a str,
    pos: usize,
    line: u64,
    line_start: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], source: &'a str) -> Result<Self, ParseError> {
        if let Err(e) = std::str::from_utf8(input) {
            let at = e.valid_up_to();
            let (line, column) = line_column(input, at);
            return Err(ParseError {
                source_name: source.to_string(),
                line,
                column,
                message: format!("invalid UTF-8 sequence (byte 0x{:02x})", input[at]),
            });
        }
        // CR is a line break, as in build2's parser: CR LF (files edited on
        // other systems) and a lone CR both read as LF, so a value holds
        // what build2 would make of the same bytes.
        let src = if memchr_cr(input) {
            let mut v = Vec::with_capacity(input.len());
            let mut i = 0;
            while i < input.len() {
                if input[i] == b'\r' {
                    if input.get(i + 1) != Some(&b'\n') {
                        v.push(b'\n');
                    }
                    i += 1;
                    continue;
                }
                v.push(input[i]);
                i += 1;
            }
            Cow::Owned(v)
        } else {
            Cow::Borrowed(input)
        };
        Ok(Parser {
            src,
            source,
            pos: 0,
            line: 1,
            line_start: 0,
        })
    }

    fn here(&self) -> Position {
        self.position_of(self.pos)
    }

    /// Position of byte offset `at`, which must lie on the current line.
    fn position_of(&self, at: usize) -> Position {
        let chars = self.src[self.line_start..at]
            .iter()
            .filter(|&&b| b & 0xc0 != 0x80)
            .count() as u64;
        Position {
            line: self.line,
            column: chars + 1,
        }
    }

    fn error_at(&self, at: Position, message: impl Into<String>) -> ParseError {
        ParseError {
            source_name: self.source.to_string(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.src.get(self.pos + off).copied()
    }

    /// Consumes one byte, keeping line bookkeeping right.
    fn bump(&mut self) {
        if self.src[self.pos] == b'\n' {
            self.line += 1;
            self.line_start = self.pos + 1;
        }
        self.pos += 1;
    }

    fn run(mut self, limit: Option<usize>) -> Result<Vec<Manifest>, ParseError> {
        let mut manifests = Vec::new();
        let mut have_version = false;
        loop {
            self.skip_blank_and_comments();
            if self.peek().is_none() {
                return Ok(manifests);
            }
            if limit == Some(manifests.len()) {
                let at = self.here();
                return Err(self.error_at(
                    at,
                    "a second manifest starts here, but a single manifest was expected",
                ));
            }
            let start = self.here();
            let name = self.parse_name()?;
            if !name.is_empty() {
                let message = if have_version {
                    "':' expected here (a new manifest starts with ':')".to_string()
                } else {
                    format!(
                        "format version pair expected before '{name}' \
                         (a manifest starts with ': {FORMAT_VERSION}')"
                    )
                };
                return Err(self.error_at(start, message));
            }
            self.expect_colon("")?;
            self.skip_inline_spaces();
            let (version, value_pos) = self.parse_value()?;
            if version.is_empty() {
                if !have_version {
                    return Err(self.error_at(
                        value_pos,
                        format!("format version value expected (': {FORMAT_VERSION}')"),
                    ));
                }
            } else if version != FORMAT_VERSION {
                return Err(self.error_at(
                    value_pos,
                    format!(
                        "unsupported format version '{version}' (only {FORMAT_VERSION} is supported)"
                    ),
                ));
            }
            have_version = true;
            self.end_of_pair();

            let mut manifest = Manifest::new(self.source);
            manifest.start = start;
            loop {
                self.skip_blank_and_comments();
                match self.peek() {
                    None | Some(b':') => break,
                    Some(_) => {}
                }
                let name_pos = self.here();
                let name = self.parse_name()?;
                self.expect_colon(&name)?;
                self.skip_inline_spaces();
                let (value, value_pos) = self.parse_value()?;
                self.end_of_pair();
                manifest.values.push(NameValue {
                    name,
                    value,
                    name_pos,
                    value_pos,
                });
            }
            manifests.push(manifest);
        }
    }

    /// Skips blank lines and comment lines between pairs. Only called at the
    /// start of a line, where `#` (after blanks) starts a comment.
    fn skip_blank_and_comments(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' => self.bump(),
                b'#' => {
                    while let Some(b) = self.peek() {
                        if b == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn skip_inline_spaces(&mut self) {
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn parse_name(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            match b {
                b':' | b' ' | b'\t' | b'\n' => break,
                b if b < 0x20 || b == 0x7f => {
                    let at = self.here();
                    return Err(
                        self.error_at(at, format!("invalid control character U+{b:04X} in name"))
                    );
                }
                _ => self.pos += 1,
            }
        }
        // The input was validated as UTF-8 and we stopped at an ASCII byte.
        Ok(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    fn expect_colon(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_inline_spaces();
        if self.peek() == Some(b':') {
            self.pos += 1;
            return Ok(());
        }
        let at = self.here();
        let found = match self.peek() {
            None => "end of input".to_string(),
            Some(b'\n') => "end of line".to_string(),
            Some(_) => "more text".to_string(),
        };
        Err(self.error_at(
            at,
            format!("':' expected after name '{name}', found {found}"),
        ))
    }

    /// After a value: the newline that ends the pair, if any.
    fn end_of_pair(&mut self) {
        if self.peek() == Some(b'\n') {
            self.bump();
        }
    }

    fn is_break_at(&self, off: usize) -> bool {
        matches!(self.peek_at(off), None | Some(b'\n'))
    }

    /// Reads a value, simple or multi-line, leaving the terminating newline
    /// unread. Mirrors build2's scanner so that files written by build2
    /// tools read the same here.
    fn parse_value(&mut self) -> Result<(String, Position), ParseError> {
        let mut value_pos = self.here();
        let introducer_pos = value_pos;
        let mut multi_line = false;

        // Old form: `name: \` then the lines.
        if self.peek() == Some(b'\\') && self.is_break_at(1) {
            self.pos += 1;
            if self.peek() == Some(b'\n') {
                self.bump();
            }
            multi_line = true;
        // Current form: `name:` then a line holding only `\`.
        } else if self.peek() == Some(b'\n')
            && self.peek_at(1) == Some(b'\\')
            && self.is_break_at(2)
        {
            self.bump();
            self.pos += 1;
            if self.peek() == Some(b'\n') {
                self.bump();
            }
            multi_line = true;
        }
        if multi_line {
            value_pos = self.here();
        }

        let mut value: Vec<u8> = Vec::new();
        // The previous byte was a newline that belonged to the syntax (the
        // introducer or a continuation), after which `\` + newline means
        // "end of value" (multi-line) or "literal newline" (simple).
        let mut special_newline = multi_line;
        let mut terminated = !multi_line;
        while let Some(c) = self.peek() {
            if special_newline {
                special_newline = false;
                if c == b'\\' && self.is_break_at(1) {
                    self.pos += 1;
                    if multi_line {
                        terminated = true;
                        break;
                    }
                    if self.peek() == Some(b'\n') {
                        self.bump();
                    }
                    value.push(b'\n');
                    continue;
                }
            }
            match c {
                b'\n' => {
                    if !multi_line {
                        break;
                    }
                    if self.peek_at(1) == Some(b'\\') && self.is_break_at(2) {
                        self.bump();
                        self.pos += 1;
                        terminated = true;
                        break;
                    }
                    self.bump();
                    value.push(b'\n');
                }
                b'\\' => match self.peek_at(1) {
                    None => self.pos += 1,
                    Some(b'\n') => {
                        self.pos += 1;
                        self.bump();
                        special_newline = true;
                    }
                    Some(b'\\') => {
                        // `\\` at the end of a line is one backslash that
                        // ends the line; elsewhere the first `\` is literal
                        // and the second is looked at again.
                        self.pos += 1;
                        value.push(b'\\');
                        if self.is_break_at(1) {
                            self.pos += 1;
                        }
                    }
                    Some(_) => {
                        self.pos += 1;
                        value.push(b'\\');
                    }
                },
                _ => {
                    let run_start = self.pos;
                    let bytes = &self.src[..];
                    let mut i = self.pos;
                    while i < bytes.len() {
                        let b = bytes[i];
                        if b == b'\\' || b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                            break;
                        }
                        i += 1;
                    }
                    if i == run_start {
                        // A control character: the format has no way to carry it.
                        let at = self.here();
                        return Err(self.error_at(
                            at,
                            format!("invalid control character U+{c:04X} in value"),
                        ));
                    }
                    value.extend_from_slice(&bytes[run_start..i]);
                    self.pos = i;
                }
            }
        }
        if !terminated {
            return Err(self.error_at(
                introducer_pos,
                "unterminated multi-line value: expected a line holding only '\\' \
                 before the end of input",
            ));
        }
        if !multi_line {
            while let Some(b' ' | b'\t') = value.last() {
                value.pop();
            }
        }
        // Only whole runs of a valid UTF-8 input and ASCII bytes were copied.
        let value = String::from_utf8(value).unwrap_or_else(|e| {
            debug_assert!(false, "parser split a code point");
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        });
        debug_assert!(!value.chars().any(is_forbidden_control));
        Ok((value, value_pos))
    }
}

fn memchr_cr(input: &[u8]) -> bool {
    input.contains(&b'\r')
}

/// Line and column (code points, 1-based) of byte offset `at`, for errors
/// found before the scanner runs (bad UTF-8).
fn line_column(input: &[u8], at: usize) -> (u64, u64) {
    let before = &input[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xc0 != 0x80)
        .count() as u64
        + 1;
    (line, column)
}
