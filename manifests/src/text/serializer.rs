//! Writing the manifest text format.
//!
//! Output is what build2's serializer writes: `: 1` first, the current
//! multi-line form (`name:` then a line holding `\`) for values with
//! newlines or edge blanks, long simple values wrapped with `\`
//! continuations at about 78 columns, and no trailing `:` after a stream.

use super::codepoint::{codepoint_type, is_build2_text};
use super::{Manifest, SerializeError, FORMAT_VERSION};

/// Column after which a simple value is continued on the next line; with
/// the `\` that makes 78 columns, build2's line width.
const WRAP_COLUMN: usize = 77;
/// A name longer than this puts its value in multi-line form so that the
/// value still has room on its lines.
const MAX_SIMPLE_VALUE_START: usize = 39;
/// Break at a blank only once this far into a line, so wrapped text does
/// not leave very short lines.
const MIN_BREAK_AT_BLANK: usize = 57;

/// Writes one manifest, starting with the format version pair.
pub fn serialize_manifest(manifest: &Manifest) -> Result<String, SerializeError> {
    serialize_stream(std::slice::from_ref(manifest))
}

/// Writes a stream of manifests: the first starts with `: 1`, the others
/// with `:` (inheriting the version). No trailing `:` ends the stream.
pub fn serialize_stream(manifests: &[Manifest]) -> Result<String, SerializeError> {
    let size: usize = manifests
        .iter()
        .flat_map(|m| m.values.iter())
        .map(|nv| nv.name.len() + nv.value.len() + nv.value.len() / 64 + 8)
        .sum();
    let mut out = String::with_capacity(size + 8 * manifests.len());
    for (i, manifest) in manifests.iter().enumerate() {
        if i == 0 {
            out.push_str(": ");
            out.push_str(FORMAT_VERSION);
            out.push('\n');
        } else {
            out.push_str(":\n");
        }
        for nv in &manifest.values {
            let columns = check_name(manifest, &nv.name)?;
            check_value(manifest, &nv.name, &nv.value)?;
            out.push_str(&nv.name);
            out.push(':');
            if !nv.value.is_empty() {
                write_value(&mut out, &nv.value, columns + 1);
            }
            out.push('\n');
        }
    }
    Ok(out)
}

fn error(manifest: &Manifest, name: &str, message: impl Into<String>) -> SerializeError {
    SerializeError {
        source_name: manifest.source.clone(),
        name: name.to_string(),
        message: message.into(),
    }
}

/// Checks that `name` can be written and returns its width in code points.
fn check_name(manifest: &Manifest, name: &str) -> Result<usize, SerializeError> {
    if name.is_empty() {
        return Err(error(manifest, name, "empty name"));
    }
    if name.starts_with('#') {
        return Err(error(
            manifest,
            name,
            "name starts with '#' (would read as a comment)",
        ));
    }
    let mut columns = 0;
    for c in name.chars() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                return Err(error(manifest, name, "name contains whitespace"))
            }
            ':' => return Err(error(manifest, name, "name contains ':'")),
            c if !is_build2_text(c) => {
                return Err(error(
                    manifest,
                    name,
                    format!(
                        "name contains U+{:04X}, a {} code point build2 refuses",
                        c as u32,
                        codepoint_type(c).name()
                    ),
                ))
            }
            _ => columns += 1,
        }
    }
    Ok(columns)
}

/// A value build2 reads back unchanged: only graphic code points, newline
/// and tab (a CR would be read as a line break).
fn check_value(manifest: &Manifest, name: &str, value: &str) -> Result<(), SerializeError> {
    // ASCII text is the bulk of every log: check it bytewise, and look at
    // code points only past the first byte that is not plain ASCII.
    let plain = |b: u8| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\t';
    let Some(start) = value.bytes().position(|b| !plain(b)) else {
        return Ok(());
    };
    let bad = value[start..]
        .char_indices()
        .find(|&(_, c)| c == '\r' || !is_build2_text(c));
    match bad {
        None => Ok(()),
        Some((at, c)) => Err(error(
            manifest,
            name,
            format!(
                "value contains U+{:04X} at byte {}, a {} code point build2 refuses \
                 (run text such as build logs through sanitize_text first)",
                c as u32,
                start + at,
                codepoint_type(c).name()
            ),
        )),
    }
}

/// Writes a non-empty, checked value after `name:`; `column` is where the
/// value would start.
fn write_value(out: &mut String, value: &str, column: usize) {
    let needs_multi_line = column + 1 > MAX_SIMPLE_VALUE_START
        || value.contains('\n')
        || value.starts_with([' ', '\t'])
        || value.ends_with([' ', '\t']);
    if needs_multi_line {
        out.push_str("\n\\\n");
        for (i, line) in value.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            write_line(out, line, 0);
        }
        out.push_str("\n\\");
    } else {
        out.push(' ');
        write_line(out, value, column + 1);
    }
}

/// Writes one line of a value starting at `column`, wrapping with `\`
/// continuations and escaping a final backslash (which would otherwise
/// read as a continuation).
fn write_line(out: &mut String, line: &str, column: usize) {
    // Fast path: fits as is (bytes bound code points from above).
    if column + line.len() <= WRAP_COLUMN {
        out.push_str(line);
    } else {
        write_wrapped(out, line, column);
    }
    if line.ends_with('\\') {
        out.push('\\');
    }
}

fn write_wrapped(out: &mut String, line: &str, mut column: usize) {
    let mut previous = '\0';
    for (at, c) in line.char_indices() {
        let is_last = at + c.len_utf8() == line.len();
        // Never break right after a backslash: the continuation would then
        // read as an escaped backslash.
        if previous != '\\' {
            let mut break_here = false;
            if c == ' ' || c == '\t' {
                // Break at this blank if the next word would pass the edge.
                let rest = &line[at + 1..];
                let (word, at_end) = match rest.find([' ', '\t']) {
                    Some(w) => (w + 1, false),
                    None => (rest.len() + 1, true),
                };
                let limit = if at_end { WRAP_COLUMN + 1 } else { WRAP_COLUMN };
                if column + word > limit {
                    break_here = column > MIN_BREAK_AT_BLANK;
                }
            }
            let limit = if is_last {
                WRAP_COLUMN + 1
            } else {
                WRAP_COLUMN
            };
            if column >= limit {
                break_here = true;
            }
            if break_here {
                out.push_str("\\\n");
                column = 0;
            }
        }
        out.push(c);
        column += 1;
        previous = c;
    }
}
