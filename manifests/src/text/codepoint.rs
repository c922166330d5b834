//! Which Unicode code points build2 accepts in manifest text, exactly as
//! libbutl decides it (`butl::codepoint_type`, libbutl/unicode.{ixx,cxx}):
//! its parser and serializer take only *graphic* code points plus newline,
//! CR and tab. A result carrying anything else (a zero-width space, a byte
//! order mark, a C1 control copied out of a build log) is refused by brep
//! as a whole, so what we write must pass this check, not Rust's idea of a
//! control character.
//!
//! The tables are libbutl's (Unicode 12.0 "Types of Code Points"), copied
//! rather than derived from a Unicode crate, because matching build2 is the
//! point: a newer Unicode version would call some code points graphic that
//! build2 still calls reserved.

/// libbutl's `codepoint_types` (one type per code point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodepointType {
    /// Letters, marks, numbers, punctuation, symbols, space separators.
    Graphic,
    /// Invisible formatting (U+00AD, U+200B..U+200F, U+FEFF, ...).
    Format,
    /// C0 and C1 controls and DEL.
    Control,
    /// Private-use areas.
    PrivateUse,
    /// Noncharacters (U+FDD0..U+FDEF and every U+xxFFFE/U+xxFFFF).
    NonCharacter,
    /// Unassigned planes and tag ranges.
    Reserved,
}

impl CodepointType {
    /// The name libbutl uses in its error messages.
    pub fn name(self) -> &'static str {
        match self {
            CodepointType::Graphic => "graphic",
            CodepointType::Format => "format",
            CodepointType::Control => "control",
            CodepointType::PrivateUse => "private-use",
            CodepointType::NonCharacter => "noncharacter",
            CodepointType::Reserved => "reserved",
        }
    }
}

type Range = (u32, u32);

const CONTROL: &[Range] = &[(0x00, 0x1F), (0x7F, 0x9F)];

const FORMAT: &[Range] = &[
    (0x000AD, 0x000AD),
    (0x00600, 0x00605),
    (0x0061C, 0x0061C),
    (0x006DD, 0x006DD),
    (0x0070F, 0x0070F),
    (0x008E2, 0x008E2),
    (0x0180E, 0x0180E),
    (0x0200B, 0x0200F),
    (0x0202A, 0x0202E),
    (0x02060, 0x02064),
    (0x02066, 0x0206F),
    (0x0FEFF, 0x0FEFF),
    (0x0FFF9, 0x0FFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

const PRIVATE_USE: &[Range] = &[(0x00E000, 0x00F8FF), (0x0F0000, 0x10FFFF)];

const NON_CHARACTER: &[Range] = &[(0xFDD0, 0xFDEF)];

const RESERVED: &[Range] = &[
    (0x30000, 0xE0000),
    (0xE0002, 0xE001F),
    (0xE0080, 0xE00FF),
    (0xE01F0, 0xEFFFF),
];

/// The lists are checked in libbutl's order: they overlap (U+E0000 is
/// reserved, U+E0001 format), and the first match wins.
const TABLES: &[(CodepointType, &[Range])] = &[
    (CodepointType::Control, CONTROL),
    (CodepointType::Format, FORMAT),
    (CodepointType::PrivateUse, PRIVATE_USE),
    (CodepointType::NonCharacter, NON_CHARACTER),
    (CodepointType::Reserved, RESERVED),
];

fn in_ranges(ranges: &[Range], c: u32) -> bool {
    // Sorted, disjoint ranges: the first range not entirely below `c`.
    let i = ranges.partition_point(|&(_, last)| last < c);
    ranges.get(i).is_some_and(|&(first, _)| first <= c)
}

/// The type of `c`, as libbutl's `codepoint_type` computes it.
pub fn codepoint_type(c: char) -> CodepointType {
    let c = c as u32;
    if (0x20..=0x7E).contains(&c) {
        return CodepointType::Graphic;
    }
    if c & 0xFFFF >= 0xFFFE {
        return CodepointType::NonCharacter;
    }
    TABLES
        .iter()
        .find(|(_, ranges)| in_ranges(ranges, c))
        .map_or(CodepointType::Graphic, |(t, _)| *t)
}

/// Whether build2 accepts `c` in a manifest name or value: graphic, or one
/// of the whitespace characters it allows (newline, CR, tab).
pub fn is_build2_text(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\t') || codepoint_type(c) == CodepointType::Graphic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_libbutl() {
        for (c, t) in [
            ('a', CodepointType::Graphic),
            (' ', CodepointType::Graphic),
            ('é', CodepointType::Graphic),
            ('\u{2028}', CodepointType::Graphic),
            ('\u{3000}', CodepointType::Graphic),
            ('\u{1F600}', CodepointType::Graphic),
            ('\n', CodepointType::Control),
            ('\u{7f}', CodepointType::Control),
            ('\u{85}', CodepointType::Control),
            ('\u{9f}', CodepointType::Control),
            ('\u{a0}', CodepointType::Graphic),
            ('\u{ad}', CodepointType::Format),
            ('\u{200b}', CodepointType::Format),
            ('\u{202e}', CodepointType::Format),
            ('\u{2065}', CodepointType::Graphic),
            ('\u{feff}', CodepointType::Format),
            ('\u{e000}', CodepointType::PrivateUse),
            ('\u{f8ff}', CodepointType::PrivateUse),
            ('\u{fdd0}', CodepointType::NonCharacter),
            ('\u{fffe}', CodepointType::NonCharacter),
            ('\u{1ffff}', CodepointType::NonCharacter),
            ('\u{10ffff}', CodepointType::NonCharacter),
            ('\u{10fffd}', CodepointType::PrivateUse),
            ('\u{30000}', CodepointType::Reserved),
            ('\u{e0000}', CodepointType::Reserved),
            ('\u{e0001}', CodepointType::Format),
            ('\u{e0020}', CodepointType::Format),
            ('\u{e0100}', CodepointType::Graphic),
            ('\u{e01f0}', CodepointType::Reserved),
        ] {
            assert_eq!(codepoint_type(c), t, "U+{:04X}", c as u32);
        }
        assert!(is_build2_text('\r') && is_build2_text('\t') && is_build2_text('\n'));
        assert!(!is_build2_text('\u{0}') && !is_build2_text('\u{feff}'));
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        for (t, ranges) in TABLES {
            for w in ranges.windows(2) {
                assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{t:?}: {w:?}");
            }
        }
    }
}
