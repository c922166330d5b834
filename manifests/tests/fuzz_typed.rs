//! The guest is hostile: a result manifest comes from an untrusted VM and
//! is read on the agent's only control thread, so no input may make a
//! typed parser (or the summary of what parsed) panic, abort or take more
//! than linear time.
//!
//! The generated inputs mostly look like manifests — the real field names
//! of every kind, plausible and broken values, `<board>@<n>-status` and
//! `-log` pairs with small, random and huge `n`, duplicated fields, missing
//! ones, random bytes spliced in — so that the typed code is reached and
//! not just the text parser's first error. Most are small; some are grown
//! to between 64 KiB and 1 MiB.
//!
//! Also here: the `bbot-manifest` binary on a hostile result and on a
//! standard output that cannot be written (`>/dev/full`).

use manifests::detect::Kind;
use manifests::text::codepoint::is_build2_text;
use manifests::*;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use std::cell::RefCell;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

type Pairs = Vec<(String, String)>;

// ---------------------------------------------------------------------------
// Names and values.

/// Commit indices: the ones a build reports, and the ones a hostile guest
/// would try (a 4 GiB column count, `usize::MAX`, past `u64`, not a number).
fn commit_index() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u32..64).prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "100000000",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "007",
            "",
            "-1",
            "+1",
            "0x10",
        ])
        .prop_map(str::to_string),
        1 => "[0-9]{10,40}",
    ]
}

fn board_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["sandbox", "qemu_arm64", "rpi_4", "x"])
            .prop_map(str::to_string),
        2 => "[a-z0-9_]{1,12}",
        1 => Just(String::new()),
        1 => Just("a@b".to_string()),
    ]
}

/// An operation name: mostly `<board>@<n>`, sometimes `machine`/`worker` or
/// anything.
fn operation_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (board_name(), commit_index()).prop_map(|(b, n)| format!("{b}@{n}")),
        1 => prop::sample::select(vec!["machine", "worker", "@", "-status", "-log"])
            .prop_map(str::to_string),
        1 => "[a-z@0-9.-]{1,10}",
    ]
}

fn status_value() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => prop::sample::select(ResultStatus::ALL.to_vec()).prop_map(|s| s.to_string()),
        1 => prop::sample::select(vec!["", "fine", "Success", " success", "error\nerror"])
            .prop_map(str::to_string),
    ]
}

/// Text a value may hold: anything build2 accepts (the serializer refuses
/// the rest), weighted towards what the escaping rules care about. CR is
/// left to the spliced bytes.
fn text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        8 => prop::char::range('a', 'z'),
        2 => Just(' '),
        1 => prop::sample::select(vec!['\\', '\n', '\t', ':', '#', '@', '"', '\'', 'ü', '🚀']),
        1 => any::<char>().prop_filter("text build2 accepts", |c| {
            *c != '\r' && is_build2_text(*c)
        }),
    ];
    prop_oneof![
        6 => prop::collection::vec(c.clone(), 0..12),
        1 => prop::collection::vec(c, 12..200),
    ]
    .prop_map(|cs| cs.into_iter().collect())
}

/// A value for field `name`: one that fits it most of the time, so parsing
/// goes past it, and otherwise any text.
fn value_for(name: &str) -> BoxedStrategy<String> {
    let fitting: BoxedStrategy<String> = match name {
        "status" => status_value().boxed(),
        "commit" => "[0-9a-f]{4,64}".boxed(),
        "board" => prop_oneof![
            Just("sandbox sandbox".to_string()),
            "[a-z_0-9]{1,10} [a-z0-9]{1,8}",
        ]
        .boxed(),
        "build-setting" => "[a-z_0-9]{1,8}=[a-z0-9 ]{0,8}".boxed(),
        "mac" => "([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}".boxed(),
        "type" => prop::sample::select(vec!["kvm", "nspawn"])
            .prop_map(str::to_string)
            .boxed(),
        "role" => prop::sample::select(vec!["build", "auxiliary"])
            .prop_map(str::to_string)
            .boxed(),
        "interactive-mode" => prop::sample::select(vec!["false", "true", "both"])
            .prop_map(str::to_string)
            .boxed(),
        "ram-minimum" | "ram-maximum" | "auxiliary-ram" => prop_oneof![
            (1u64..1 << 24).prop_map(|n| n.to_string()),
            Just("0".to_string()),
            Just("18446744073709551616".to_string()),
        ]
        .boxed(),
        "options" => prop_oneof![
            Just("-m 1G -append \"console=ttyS0\"".to_string()),
            Just("-append \"x".to_string()),
            "[a-z \"'-]{0,20}",
        ]
        .boxed(),
        "repository-url" | "repository" | "result-url" | "upload-url" => {
            "https://[a-z]{1,8}/[a-z]{0,8}(#[a-z0-9]{0,6})?".boxed()
        }
        _ => "[a-z0-9][a-z0-9 ._-]{0,15}".boxed(),
    };
    prop_oneof![19 => fitting, 1 => text()].boxed()
}

/// One `name: value` pair for `name`.
fn pair(name: &'static str) -> BoxedStrategy<(String, String)> {
    value_for(name)
        .prop_map(move |v| (name.to_string(), v))
        .boxed()
}

/// An unknown field (kept by every kind) or an odd spelling of a known one.
fn extra_pair() -> BoxedStrategy<(String, String)> {
    let name = prop_oneof![
        3 => "[a-z][a-z0-9_.-]{0,15}",
        1 => "auxiliary-machine(-[a-z]{0,4})?",
        1 => "[a-z-]{0,8}-version",
        1 => prop::sample::select(vec!["-status", "-log", "x-status-log", "@-status"])
            .prop_map(str::to_string),
    ];
    (name, text()).boxed()
}

/// One operation's pairs: its status and perhaps its log; now and then a
/// log without a status or a second status.
fn operation_pairs() -> BoxedStrategy<Pairs> {
    (operation_name(), status_value(), text(), 0u8..40)
        .prop_map(|(op, status, log, shape)| match shape {
            0 => vec![(format!("{op}-log"), log)],
            1 => vec![
                (format!("{op}-status"), status.clone()),
                (format!("{op}-status"), status),
            ],
            2 => vec![
                (format!("{op}-status"), status),
                (format!("{op}-log"), log.clone()),
                (format!("{op}-log"), log),
            ],
            3..=25 => vec![(format!("{op}-status"), status), (format!("{op}-log"), log)],
            _ => vec![(format!("{op}-status"), status)],
        })
        .boxed()
}

/// A manifest of one kind: its required fields (each missing or doubled
/// now and then), some optional ones, operations for results, unknown
/// fields, in a mostly canonical order.
fn manifest_of(
    required: &'static [&'static str],
    optional: &'static [&'static str],
    operations: bool,
) -> BoxedStrategy<Pairs> {
    let required: Vec<BoxedStrategy<Pairs>> = required
        .iter()
        .map(|&n| {
            prop_oneof![
                60 => pair(n).prop_map(|p| vec![p]),
                1 => Just(Vec::new()),
                1 => (pair(n), pair(n)).prop_map(|(a, b)| vec![a, b]),
            ]
            .boxed()
        })
        .collect();
    let optional: Vec<BoxedStrategy<Pairs>> = optional
        .iter()
        .map(|&n| {
            prop_oneof![
                10 => Just(Vec::new()),
                8 => pair(n).prop_map(|p| vec![p]),
                1 => (pair(n), pair(n)).prop_map(|(a, b)| vec![a, b]),
            ]
            .boxed()
        })
        .collect();
    let operations = if operations {
        prop::collection::vec(operation_pairs(), 0..16).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let extra = prop::collection::vec(extra_pair(), 0..3);
    (required, optional, operations, extra)
        .prop_map(|(r, o, ops, extra)| {
            let mut pairs: Pairs = r.into_iter().flatten().collect();
            pairs.extend(ops.into_iter().flatten());
            pairs.extend(o.into_iter().flatten());
            pairs.extend(extra);
            pairs
        })
        .boxed()
}

const RESULT: &[&str] = &["name", "version", "status"];
const RESULT_OPT: &[&str] = &["worker-checksum", "dependency-checksum"];
const RESULT_REQUEST: &[&str] = &["session"];
const RESULT_REQUEST_OPT: &[&str] = &["challenge", "agent-checksum"];
const TASK: &[&str] = &["name", "version", "repository-url", "machine", "target"];
const TASK_OPT: &[&str] = &[
    "repository",
    "repository-type",
    "trust",
    "environment",
    "target-config",
    "config",
    "package-config",
    "warning-regex",
    "interactive",
    "worker-checksum",
    "dependency-checksum",
    "auxiliary-machine",
    "auxiliary-machine-pgsql",
    "commit",
    "commit",
    "board",
    "board",
    "build-setting",
];
const TASK_RESPONSE: &[&str] = &["session"];
const TASK_RESPONSE_OPT: &[&str] = &[
    "challenge",
    "result-url",
    "upload-url",
    "upload-url",
    "agent-checksum",
];
const TASK_REQUEST: &[&str] = &["agent", "toolchain-name", "toolchain-version"];
const TASK_REQUEST_OPT: &[&str] = &[
    "interactive-mode",
    "interactive-login",
    "fingerprint",
    "auxiliary-ram",
];
const HEADER: &[&str] = &["id", "name", "summary"];
const HEADER_OPT: &[&str] = &["role", "ram-minimum", "ram-maximum"];
const MACHINE: &[&str] = &["id", "name", "summary", "type"];
const MACHINE_OPT: &[&str] = &[
    "role",
    "ram-minimum",
    "ram-maximum",
    "mac",
    "options",
    "changes",
];
const TOOLCHAIN: &[&str] = &["id"];
const BOOTSTRAP: &[&str] = &["worker-guest-version"];
const BOOTSTRAP_OPT: &[&str] = &["bbot-agent-version", "u-boot-version", "-version"];

/// A document of some kind, as its manifests' pairs.
fn document() -> BoxedStrategy<Vec<Pairs>> {
    let one = |m: BoxedStrategy<Pairs>| m.prop_map(|m| vec![m]).boxed();
    prop_oneof![
        6 => one(manifest_of(RESULT, RESULT_OPT, true)),
        6 => (
            manifest_of(RESULT_REQUEST, RESULT_REQUEST_OPT, false),
            manifest_of(RESULT, RESULT_OPT, true),
        )
            .prop_map(|(a, b)| vec![a, b]),
        2 => one(manifest_of(TASK, TASK_OPT, false)),
        2 => (
            manifest_of(TASK_RESPONSE, TASK_RESPONSE_OPT, false),
            manifest_of(TASK, TASK_OPT, false),
        )
            .prop_map(|(a, b)| vec![a, b]),
        1 => one(manifest_of(TASK_RESPONSE, TASK_RESPONSE_OPT, false)),
        3 => (
            manifest_of(TASK_REQUEST, TASK_REQUEST_OPT, false),
            prop::collection::vec(manifest_of(HEADER, HEADER_OPT, false), 0..5),
        )
            .prop_map(|(a, hs)| std::iter::once(a).chain(hs).collect()),
        2 => one(manifest_of(MACHINE, MACHINE_OPT, false)),
        1 => one(manifest_of(HEADER, HEADER_OPT, false)),
        1 => one(manifest_of(TOOLCHAIN, &[], false)),
        2 => one(manifest_of(BOOTSTRAP, BOOTSTRAP_OPT, false)),
        2 => (
            manifest_of(MACHINE, MACHINE_OPT, false),
            manifest_of(TOOLCHAIN, &[], false),
            manifest_of(BOOTSTRAP, BOOTSTRAP_OPT, false),
        )
            .prop_map(|(a, b, c)| vec![a, b, c]),
        1 => prop::collection::vec(prop::collection::vec(extra_pair(), 0..4), 0..4),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Growing a document to a large input, cheaply.

/// A small deterministic generator (xorshift64*): growing an input to 1 MiB
/// pair by pair through proptest's strategies would take seconds per case
/// in a debug build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How an input is grown.
#[derive(Debug, Clone, Copy)]
enum Growth {
    /// Left as generated.
    None,
    /// Grown to about this many bytes with distinct, valid operations
    /// (`b<k>@<n>`, every board at every commit up to the size), so the
    /// whole input is read and the result parses.
    Clean(usize),
    /// Grown to about this many bytes with operations at random (and huge)
    /// commit indices, a rare bad status or stray log, so that errors come
    /// late and the summary sees sparse tables.
    Dirty(usize),
    /// Grown with extra manifests (a task request's machines, say).
    Manifests(usize),
}

/// The largest input.
const MAX_INPUT: usize = 1 << 20;

fn growth() -> impl Strategy<Value = Growth> {
    prop_oneof![
        // Most inputs are small: many cases, quickly.
        960 => Just(Growth::None),
        15 => (1usize << 16..1 << 18).prop_map(Growth::Clean),
        15 => (1usize << 16..1 << 18).prop_map(Growth::Dirty),
        4 => (1usize << 16..1 << 18).prop_map(Growth::Manifests),
        // Some are large, up to 1 MiB (the estimate of the size grown to
        // is rough: some room is left below the cap).
        2 => (1usize << 18..MAX_INPUT - (1 << 15)).prop_map(Growth::Clean),
        2 => (1usize << 18..MAX_INPUT - (1 << 15)).prop_map(Growth::Dirty),
        1 => (1usize << 18..MAX_INPUT - (1 << 15)).prop_map(Growth::Manifests),
    ]
}

/// Roughly what a pair costs in the text.
fn pair_len(name: &str, value: &str) -> usize {
    name.len() + value.len() + 3
}

fn grow(doc: &mut Vec<Pairs>, growth: Growth, seed: u64) {
    let mut rng = Rng(seed | 1);
    let size: usize = doc.iter().flatten().map(|(n, v)| pair_len(n, v)).sum();
    let statuses = ResultStatus::ALL;
    // The manifest the operations go into: a result's, or the last one.
    let target = doc
        .iter()
        .position(|m| m.iter().any(|(n, _)| n == "status"))
        .unwrap_or(doc.len().saturating_sub(1));
    if doc.is_empty() {
        doc.push(Vec::new());
    }
    match growth {
        Growth::None => {}
        Growth::Clean(limit) => {
            let boards = 1 + rng.below(1000);
            let mut size = size;
            let mut i = 0u64;
            while size < limit {
                let op = format!("b{}@{}", i % boards, i / boards);
                let status = statuses[rng.below(statuses.len() as u64) as usize];
                let pairs = &mut doc[target];
                size += pair_len(&op, status.as_str()) + 7;
                pairs.push((format!("{op}-status"), status.to_string()));
                if rng.below(3) == 0 {
                    size += op.len() + 8;
                    pairs.push((format!("{op}-log"), "W: x".to_string()));
                }
                i += 1;
            }
        }
        Growth::Dirty(limit) => {
            let boards = 1 + rng.below(50_000);
            let mut size = size;
            while size < limit {
                let board = rng.below(boards);
                let n = match rng.below(8) {
                    0 => rng.next(),
                    1 => u64::MAX - rng.below(4),
                    2 => rng.below(1 << 32),
                    _ => rng.below(boards * 4),
                };
                let op = format!("b{board}@{n}");
                let status = match rng.below(50_000) {
                    0 => "bad",
                    _ => statuses[rng.below(statuses.len() as u64) as usize].as_str(),
                };
                let pairs = &mut doc[target];
                size += pair_len(&op, status) + 7;
                pairs.push((format!("{op}-status"), status.to_string()));
                match rng.below(6) {
                    0 => {
                        size += op.len() + 12;
                        pairs.push((format!("{op}-log"), "E: ld\n  x".to_string()));
                    }
                    1 if rng.below(10_000) == 0 => {
                        pairs.push((format!("stray{n}-log"), String::new()));
                    }
                    _ => {}
                }
            }
        }
        Growth::Manifests(limit) => {
            let Some(last) = doc.last().cloned() else {
                return;
            };
            let per = last.iter().map(|(n, v)| pair_len(n, v)).sum::<usize>() + 4;
            let mut size = size;
            while size < limit {
                let mut m = last.clone();
                if let Some((_, v)) = m.get_mut(rng.below(last.len() as u64 + 1) as usize) {
                    v.push_str(&rng.below(1000).to_string());
                }
                doc.push(m);
                size += per;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Splicing bytes in.

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the byte at the index.
    Set(prop::sample::Index, u8),
    /// Insert bytes at the index.
    Insert(prop::sample::Index, Vec<u8>),
    /// Remove up to this many bytes at the index.
    Delete(prop::sample::Index, usize),
    /// Copy the line at the first index to the second (a duplicated field,
    /// or half of one).
    CopyLine(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        4 => prop::sample::select(vec![
            &b"\\"[..],
            b"\\\n",
            b"\n\\\n",
            b"\n:",
            b"\n: 1\n",
            b":",
            b"\r",
            b"\r\n",
            b"\x00",
            b"\xff",
            b"\xc3",
            b"\xef\xbb\xbf",
            b"#",
            b" ",
            b"\n",
            b"-status: success\n",
            b"x@1-log: y\n",
            b"status: error\n",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        3 => (any::<prop::sample::Index>(), snippet).prop_map(|(i, s)| Edit::Insert(i, s)),
        1 => (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::CopyLine(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Set(i, b) => {
            if !bytes.is_empty() {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
        }
        Edit::Insert(i, s) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, s.iter().copied());
        }
        Edit::Delete(i, n) => {
            if !bytes.is_empty() {
                let i = i.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
        }
        Edit::CopyLine(from, to) => {
            if bytes.is_empty() {
                return;
            }
            let at = from.index(bytes.len());
            let start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let end = bytes[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| at + p + 1);
            let line = bytes[start..end].to_vec();
            let to = to.index(bytes.len() + 1);
            let to = bytes[..to]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            bytes.splice(to..to, line);
        }
    }
}

/// A test input: a generated document, perhaps grown, serialized, perhaps
/// damaged.
#[derive(Debug, Clone)]
struct Input {
    doc: Vec<Pairs>,
    growth: Growth,
    seed: u64,
    edits: Vec<Edit>,
}

impl Input {
    fn bytes(&self) -> Vec<u8> {
        let mut doc = self.doc.clone();
        grow(&mut doc, self.growth, self.seed);
        let stream: Vec<Manifest> = doc
            .into_iter()
            .map(|pairs| {
                let mut m = Manifest::new("gen");
                for (n, v) in pairs {
                    m.push(n, v);
                }
                m
            })
            .collect();
        // The generators only make names and values the format can carry;
        // a failure here is a bug in this file.
        let mut bytes = match serialize_stream(&stream) {
            Ok(text) => text.into_bytes(),
            Err(e) => panic!("generator made an unwritable manifest: {e}"),
        };
        for e in &self.edits {
            apply(&mut bytes, e);
        }
        bytes.truncate(MAX_INPUT);
        bytes
    }
}

fn input() -> impl Strategy<Value = Input> {
    (
        document(),
        growth(),
        any::<u64>(),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(edit(), 1..8),
        ],
    )
        .prop_map(|(doc, growth, seed, edits)| Input {
            doc,
            growth,
            seed,
            edits,
        })
}

// ---------------------------------------------------------------------------
// What every input must survive.

/// Reads `stream` as `D`. An error must say where; a document that parses
/// and can be written must read back the same.
fn typed<D: Document + PartialEq + Debug>(stream: &[Manifest]) -> Result<Option<D>, TestCaseError> {
    match D::from_stream(stream, "fuzz") {
        Ok(doc) => {
            if let Ok(text) = doc.to_text() {
                let back = D::parse(text.as_bytes(), "again");
                prop_assert_eq!(back.as_ref(), Ok(&doc), "{} written as:\n{}", D::KIND, text);
            }
            Ok(Some(doc))
        }
        Err(e) => {
            prop_assert!(
                e.to_string().starts_with("fuzz:") && e.position().line >= 1,
                "{} error without a place: {}",
                D::KIND,
                e
            );
            Ok(None)
        }
    }
}

/// How a result manifest was read before operations were found through a
/// map (a scan of the earlier operations per pair): the reference that the
/// linear reading must match exactly, accepted results, error messages and
/// positions alike. Quadratic, so only run on small manifests.
fn reference_result(m: &Manifest) -> Result<ResultManifest, (Position, String)> {
    let mut used = vec![false; m.values.len()];
    let mut optional = |name: &str| -> Result<Option<&NameValue>, (Position, String)> {
        let mut found = None;
        for (i, nv) in m.values.iter().enumerate() {
            if nv.name == name {
                if found.is_some() {
                    let message = format!("duplicate field '{name}' in result manifest");
                    return Err((nv.name_pos, message));
                }
                used[i] = true;
                found = Some(nv);
            }
        }
        Ok(found)
    };
    let non_empty = |nv: &NameValue| {
        if nv.value.is_empty() {
            Err((nv.value_pos, format!("empty value for field '{}'", nv.name)))
        } else {
            Ok(nv.value.clone())
        }
    };
    let missing = |name: &str| {
        (
            m.start,
            format!("missing required field '{name}' in result manifest"),
        )
    };
    let name = non_empty(optional("name")?.ok_or_else(|| missing("name"))?)?;
    let version = non_empty(optional("version")?.ok_or_else(|| missing("version"))?)?;
    let status_nv = optional("status")?.ok_or_else(|| missing("status"))?;
    let parse = |nv: &NameValue| {
        nv.value
            .parse::<ResultStatus>()
            .map_err(|e| (nv.value_pos, format!("invalid '{}' value: {e}", nv.name)))
    };
    let status = parse(status_nv)?;
    let worker_checksum = optional("worker-checksum")?.map(non_empty).transpose()?;
    let dependency_checksum = optional("dependency-checksum")?
        .map(non_empty)
        .transpose()?;
    let mut operations: Vec<OperationResult> = Vec::new();
    for (i, nv) in m.values.iter().enumerate() {
        let Some(op) = nv.name.strip_suffix("-status").filter(|op| !op.is_empty()) else {
            continue;
        };
        if used[i] {
            continue;
        }
        used[i] = true;
        if operations.iter().any(|o| o.name == op) {
            let message = format!("duplicate field '{}' in result manifest", nv.name);
            return Err((nv.value_pos, message));
        }
        operations.push(OperationResult {
            name: op.to_string(),
            status: parse(nv)?,
            log: None,
        });
    }
    for (i, nv) in m.values.iter().enumerate() {
        let Some(op) = nv.name.strip_suffix("-log").filter(|op| !op.is_empty()) else {
            continue;
        };
        if used[i] {
            continue;
        }
        used[i] = true;
        let Some(entry) = operations.iter_mut().find(|o| o.name == op) else {
            let message = format!("'{}' has no matching '{op}-status' field", nv.name);
            return Err((nv.value_pos, message));
        };
        if entry.log.is_some() {
            let message = format!("duplicate field '{}' in result manifest", nv.name);
            return Err((nv.value_pos, message));
        }
        entry.log = Some(nv.value.clone());
    }
    let extra = m
        .values
        .iter()
        .zip(used)
        .filter(|(_, used)| !used)
        .map(|(nv, _)| (nv.name.clone(), nv.value.clone()))
        .collect();
    Ok(ResultManifest {
        name,
        version,
        status,
        operations,
        worker_checksum,
        dependency_checksum,
        extra,
    })
}

/// Checks every small manifest of the stream, read as a result, against
/// [`reference_result`].
fn same_as_reference(stream: &[Manifest]) -> Result<(), TestCaseError> {
    for m in stream.iter().filter(|m| m.values.len() <= 2_000) {
        let ours =
            ResultManifest::from_manifest(m).map_err(|e| (e.position(), e.message().to_string()));
        prop_assert_eq!(ours, reference_result(m));
    }
    Ok(())
}

/// The summary of a result that parsed; its size must stay linear in the
/// input's (a quadratic table is how a hostile result would hang the
/// agent's log).
fn summarize(result: &ResultManifest, input_len: usize) -> Result<(), TestCaseError> {
    let s = summary::board_summary(result);
    prop_assert!(
        s.len() <= 64 * input_len + (4 << 20),
        "summary of {} bytes for {} input bytes",
        s.len(),
        input_len
    );
    Ok(())
}

/// What the inputs reached, to check that the generators get to the typed
/// code at all (a generator that only ever made text errors would pass
/// every case and test nothing).
#[derive(Debug, Default)]
struct Reached {
    cases: usize,
    text_parsed: usize,
    /// Per kind: how many inputs parsed as it.
    parsed: std::collections::BTreeMap<&'static str, usize>,
    /// Inputs of at least 256 KiB, and the largest.
    large: usize,
    largest: usize,
    /// Results of more than 1,000 operations that parsed and were summarized.
    large_results: usize,
}

fn exercise(bytes: &[u8], reached: &mut Reached) -> Result<(), TestCaseError> {
    reached.cases += 1;
    reached.largest = reached.largest.max(bytes.len());
    if bytes.len() >= 1 << 18 {
        reached.large += 1;
    }
    let Ok(stream) = parse_stream(bytes, "fuzz") else {
        return Ok(());
    };
    reached.text_parsed += 1;
    let mut parsed = Vec::new();
    let mut ok = |kind: &'static str, yes: bool| {
        if yes {
            parsed.push(kind);
        }
    };
    let mut large_results = 0;
    let task = typed::<TaskManifest>(&stream)?;
    ok("task", task.is_some());
    if let Some(task) = task {
        let _ = task.repository();
    }
    let result = typed::<ResultManifest>(&stream)?;
    ok("result", result.is_some());
    if let Some(result) = result {
        summarize(&result, bytes.len())?;
        for op in result.operations.iter().take(8) {
            prop_assert!(result.operation(&op.name).is_some());
        }
        large_results += usize::from(result.operations.len() > 1000);
    }
    same_as_reference(&stream)?;
    let request = typed::<ResultRequestManifest>(&stream)?;
    ok("result request", request.is_some());
    if let Some(request) = request {
        summarize(&request.result, bytes.len())?;
        large_results += usize::from(request.result.operations.len() > 1000);
    }
    let response = typed::<TaskResponseManifest>(&stream)?;
    ok("task response", response.is_some());
    if let Some(response) = response {
        prop_assert_eq!(response.session.is_empty(), response.task.is_none());
    }
    let request = typed::<TaskRequestManifest>(&stream)?;
    ok("task request", request.is_some());
    let machine = typed::<MachineManifest>(&stream)?;
    ok("machine", machine.is_some());
    if let Some(machine) = machine {
        let _ = machine.option_args();
    }
    let header = typed::<MachineHeader>(&stream)?;
    ok("machine header", header.is_some());
    let toolchain = typed::<ToolchainManifest>(&stream)?;
    ok("toolchain", toolchain.is_some());
    let bootstrap = typed::<BootstrapManifest>(&stream)?;
    ok("bootstrap", bootstrap.is_some());
    if let Some(bootstrap) = bootstrap {
        prop_assert!(bootstrap.version_of("worker-guest").is_some());
    }
    let bootstrapped = typed::<BootstrappedMachineManifest>(&stream)?;
    ok("bootstrapped machine", bootstrapped.is_some());
    // What `bbot-manifest` does with a file of unknown kind.
    let _ = Kind::detect(&stream).normalize(&stream, "fuzz");
    for kind in parsed {
        *reached.parsed.entry(kind).or_default() += 1;
    }
    reached.large_results += large_results;
    Ok(())
}

/// Every typed parser, and the summary of every result that parses, over
/// 10,000 generated inputs (the count is pinned: `PROPTEST_CASES` does not
/// change it).
#[test]
fn typed_parsers_survive_hostile_input() {
    let config = ProptestConfig {
        cases: 10_000,
        // Shrinking a 1 MiB input is slow; a failure prints its input.
        max_shrink_iters: 2_000,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    };
    let reached = RefCell::new(Reached::default());
    let outcome = TestRunner::new(config).run(&input(), |input| {
        exercise(&input.bytes(), &mut reached.borrow_mut())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let reached = reached.into_inner();
    eprintln!("{reached:#?}");
    // Wide margins: the runner's seed is random.
    assert!(reached.cases >= 10_000, "{reached:?}");
    assert!(reached.text_parsed * 2 > reached.cases, "{reached:?}");
    for kind in [
        "task",
        "result",
        "result request",
        "task response",
        "task request",
        "machine",
        "machine header",
        "toolchain",
        "bootstrap",
        "bootstrapped machine",
    ] {
        let n = reached.parsed.get(kind).copied().unwrap_or(0);
        assert!(n >= 20, "only {n} inputs parsed as {kind}: {reached:?}");
    }
    assert!(reached.large >= 10, "{reached:?}");
    assert!(
        (1 << 19..=MAX_INPUT).contains(&reached.largest),
        "{reached:?}"
    );
    assert!(reached.large_results >= 5, "{reached:?}");
}

// ---------------------------------------------------------------------------
// The `bbot-manifest` binary.

/// A result a hostile guest could upload: columns at a 4 GiB index and at
/// `usize::MAX`.
const HOSTILE_RESULT: &str = "\
: 1
name: u-boot
version: 2026.01
status: error
sandbox@0-status: success
sandbox@100000000-status: error
sandbox@18446744073709551615-status: warning
sandbox@0-log: ok
";

fn write_input(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    path
}

fn bbot_manifest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bbot-manifest"))
}

#[test]
fn summary_of_a_hostile_result_is_one_column_per_commit_that_occurs() {
    let path = write_input("fuzz_typed-hostile.manifest", HOSTILE_RESULT);
    let out = bbot_manifest()
        .arg("--summary")
        .arg(&path)
        .output()
        .expect("bbot-manifest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "u-boot 2026.01: ERROR (1 boards x 3 commits)\n\
         board    @0         @100000000  @18446744073709551615\n\
         sandbox  success    ERROR       WARNING\n"
    );
}

/// Runs `bbot-manifest args...` with standard output on `/dev/full`:
/// every write fails with ENOSPC.
fn run_on_full_stdout(args: &[&std::ffi::OsStr]) -> Option<std::process::Output> {
    let full = match std::fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skipped: no /dev/full here ({e})");
            return None;
        }
    };
    let out = bbot_manifest()
        .args(args)
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .expect("bbot-manifest runs");
    Some(out)
}

#[test]
fn summary_to_a_full_stdout_is_reported_not_a_panic() {
    let path = write_input("fuzz_typed-full-summary.manifest", HOSTILE_RESULT);
    let Some(out) = run_on_full_stdout(&["--summary".as_ref(), path.as_os_str()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write the summary of {} to standard output",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn manifest_to_a_full_stdout_is_reported_not_a_panic() {
    let path = write_input("fuzz_typed-full-normal.manifest", HOSTILE_RESULT);
    // Two files: the first failed write ends the run, naming that file.
    let Some(out) = run_on_full_stdout(&[path.as_os_str(), path.as_os_str()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.matches("cannot write").count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write {} to standard output",
            path.display()
        )),
        "{stderr}"
    );
}
