//! The manifest text format: round trips of awkward values, both
//! multi-line forms, streams, and every class of parse error with its
//! exact line and column.

use manifests::{parse_manifest, parse_stream, serialize_manifest, serialize_stream, Manifest};

fn manifest(pairs: &[(&str, &str)]) -> Manifest {
    let mut m = Manifest::new("test");
    for (n, v) in pairs {
        m.push(*n, *v);
    }
    m
}

fn round_trip(m: &Manifest) -> String {
    let text = serialize_manifest(m).expect("serializable");
    let back = parse_manifest(text.as_bytes(), "rt").unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(&back, m, "round trip changed the manifest; text:\n{text}");
    text
}

#[test]
fn awkward_values_round_trip() {
    let long_words = "word ".repeat(60);
    let long_words = long_words.trim_end();
    let long_nospace = "x".repeat(500);
    let m = manifest(&[
        ("plain", "value"),
        ("leading-space", "  starts with blanks"),
        ("trailing-space", "ends with a blank "),
        ("tab", "\tindented"),
        ("newlines", "line one\nline two\n\nline four"),
        ("hash", "# not a comment"),
        ("hash-lines", "a\n# still data\n  # and this"),
        ("backslash-end", "ends with \\"),
        ("two-backslashes-end", "ends with two \\\\"),
        ("backslash-middle", "a\\b\\\\c"),
        ("only-backslash", "\\"),
        ("line-only-backslash", "before\n\\\nafter"),
        ("multi-line-ends-backslash", "one\\\ntwo\\"),
        ("long-words", long_words),
        ("long-nospace", &long_nospace),
        ("non-ascii", "Grüße, 世界, emoji 🚀, ümlaut at the end ü"),
        ("long-non-ascii", &"äöü€".repeat(50)),
        ("colon", "a: b: c"),
        ("empty", ""),
        ("trailing-newline", "text\n"),
        ("leading-newline", "\ntext"),
        ("blank-lines-only", "\n\n"),
        (
            "a-very-long-name-that-pushes-the-value-past-the-middle",
            "short",
        ),
    ]);
    let text = round_trip(&m);
    // The serializer emits the current multi-line form and wraps lines.
    assert!(
        text.contains("newlines:\n\\\nline one\nline two\n\nline four\n\\\n"),
        "{text}"
    );
    assert!(text.contains("hash: # not a comment\n"), "{text}");
    assert!(text.contains("empty:\n"), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "line too long: {line:?}");
    }
}

#[test]
fn version_pair_is_written_first_and_stream_has_no_trailing_colon() {
    let a = manifest(&[("a", "1")]);
    let b = manifest(&[("b", "2")]);
    let text = serialize_stream(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(text, ": 1\na: 1\n:\nb: 2\n");
    assert_eq!(parse_stream(text.as_bytes(), "s").unwrap(), vec![a, b]);
}

#[test]
fn both_multi_line_forms_read_the_same() {
    let current = ": 1\ndesc:\n\\\nfirst line\n  indented # kept\n\nlast\n\\\nnext: x\n";
    let older = ": 1\ndesc: \\\nfirst line\n  indented # kept\n\nlast\n\\\nnext: x\n";
    let a = parse_manifest(current.as_bytes(), "current").unwrap();
    let b = parse_manifest(older.as_bytes(), "older").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.get("desc"), Some("first line\n  indented # kept\n\nlast"));
    assert_eq!(a.get("next"), Some("x"));
    // The value of a multi-line pair starts on the line after the name.
    assert_eq!(a.values[0].value_pos.line, 4);
}

#[test]
fn comments_blank_lines_continuations_and_crlf() {
    let text = ": 1\n# comment\n   # indented comment\n\nname: a\\\nb\\\n c  \nurl: x#y\r\nlast:\tvalue\t\n";
    let m = parse_manifest(text.as_bytes(), "t").unwrap();
    assert_eq!(m.get("name"), Some("ab c"));
    assert_eq!(m.get("url"), Some("x#y"));
    assert_eq!(m.get("last"), Some("value"));
    assert_eq!(m.values.len(), 3);
}

#[test]
fn escapes_follow_build2() {
    let cases: &[(&str, &str)] = &[
        ("v: a\\\\\n", "a\\"),       // `\\` at end of line: one backslash
        ("v: a\\b\n", "a\\b"),       // lone backslash: literal
        ("v: a\\\\b\n", "a\\\\b"),   // `\\` inside: both literal
        ("v: a\\\n\\\nb\n", "a\nb"), // continuation then `\`: literal newline
        ("v:\n\\\n\\\n", ""),        // immediate terminator: empty value
    ];
    for (body, want) in cases {
        let text = format!(": 1\n{body}");
        let m = parse_manifest(text.as_bytes(), "t").unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(m.get("v"), Some(*want), "{body:?}");
    }
}

#[test]
fn empty_input_is_an_empty_stream_but_not_a_manifest() {
    assert!(parse_stream(b"", "s").unwrap().is_empty());
    assert!(parse_stream(b"\n# only a comment\n", "s")
        .unwrap()
        .is_empty());
    let e = parse_manifest(b"", "empty.manifest").unwrap_err();
    assert_eq!(
        e.to_string(),
        "empty.manifest:1:1: error: empty input: expected a manifest starting with ': 1'"
    );
}

/// Asserts that `input` fails at `line:column` with a message containing `what`.
fn assert_error(input: &[u8], line: u64, column: u64, what: &str) {
    let e = parse_stream(input, "bad.manifest").expect_err("must fail");
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert!(
        e.message.contains(what),
        "message {:?} lacks {what:?}",
        e.message
    );
    assert!(
        e.to_string()
            .starts_with(&format!("bad.manifest:{line}:{column}: error: ")),
        "{e}"
    );
}

#[test]
fn missing_version_pair() {
    assert_error(
        b"# header\nname: x\n",
        2,
        1,
        "format version pair expected before 'name'",
    );
}

#[test]
fn missing_version_value() {
    assert_error(b":\nname: x\n", 1, 2, "format version value expected");
}

#[test]
fn wrong_version() {
    assert_error(b": 2\nname: x\n", 1, 3, "unsupported format version '2'");
}

#[test]
fn missing_colon() {
    assert_error(
        b": 1\nname x\n",
        2,
        6,
        "':' expected after name 'name', found more text",
    );
    assert_error(b": 1\na: 1\nname\n", 3, 5, "found end of line");
    assert_error(b": 1\nname", 2, 5, "found end of input");
}

#[test]
fn bad_utf8() {
    assert_error(b": 1\nname: ok\nsecond: \xc3\x28\n", 3, 9, "invalid UTF-8");
    // Column counts code points, not bytes.
    assert_error(
        ": 1\nn: ü\u{20ac}"
            .as_bytes()
            .iter()
            .copied()
            .chain([0xff])
            .collect::<Vec<_>>()
            .as_slice(),
        2,
        6,
        "invalid UTF-8",
    );
}

#[test]
fn control_characters() {
    assert_error(
        b": 1\nname: a\x01b\n",
        2,
        8,
        "invalid control character U+0001 in value",
    );
}

/// build2 reads a lone CR as a line break, so do we.
#[test]
fn lone_cr_is_a_line_break() {
    let m = parse_manifest(b": 1\nname: a\rb: c\r\nd: e\n", "cr").unwrap();
    let pairs: Vec<(&str, &str)> = m
        .values
        .iter()
        .map(|nv| (nv.name.as_str(), nv.value.as_str()))
        .collect();
    assert_eq!(pairs, [("name", "a"), ("b", "c"), ("d", "e")]);
    assert_eq!(m.values[1].name_pos.line, 3);
}

#[test]
fn unterminated_multi_line_value() {
    assert_error(
        b": 1\nname: x\ndesc:\n\\\nline\nmore\n",
        3,
        6,
        "unterminated multi-line value",
    );
    assert_error(
        b": 1\ndesc: \\\nline\n",
        2,
        7,
        "unterminated multi-line value",
    );
}

#[test]
fn second_manifest_where_one_is_expected() {
    let e = parse_manifest(b": 1\na: 1\n:\nb: 2\n", "one").unwrap_err();
    assert_eq!((e.line, e.column), (3, 1));
    assert!(e.message.contains("single manifest"), "{e}");
}

#[test]
fn serializer_rejects_what_it_cannot_write() {
    for (name, value, what) in [
        ("", "v", "empty name"),
        ("a b", "v", "whitespace"),
        ("a:b", "v", "':'"),
        ("#x", "v", "'#'"),
        ("ok", "bell\x07", "U+0007 at byte 4, a control code point"),
        ("ok", "cr\r\n", "U+000D at byte 2, a control code point"),
        ("ok", "bom\u{feff}", "U+FEFF at byte 3, a format code point"),
        (
            "ok",
            "zero\u{200b}width",
            "U+200B at byte 4, a format code point",
        ),
        (
            "ok",
            "next line\u{85}",
            "U+0085 at byte 9, a control code point",
        ),
        (
            "ok",
            "private\u{e000}",
            "U+E000 at byte 7, a private-use code point",
        ),
        (
            "ok",
            "non\u{fdd0}",
            "U+FDD0 at byte 3, a noncharacter code point",
        ),
        (
            "n\u{feff}",
            "v",
            "name contains U+FEFF, a format code point",
        ),
    ] {
        let e = serialize_manifest(&manifest(&[(name, value)])).expect_err(name);
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn sanitized_logs_serialize() {
    let log = "\x1b[31merror\x1b[0m\r\nprogress\r50%\r100%\n";
    let clean = manifests::sanitize_text(log);
    let m = manifest(&[("log", &clean)]);
    round_trip(&m);
    assert!(clean.contains("\\x1b[31merror"));
}
