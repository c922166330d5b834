//! The `lines` setting: which source lines a successful build compiled,
//! from the DWARF line tables of its object files, as buildman's
//! `BuilderThread._scan_lines` (with `u_boot_pylib.dwarf_lines`) reports
//! them to the boss, which writes them to the result's `lines` file.
//!
//! The format and every rule follow buildman's so that the boss's `-s`
//! summary compares our manifests with its own: `readelf
//! --debug-dump=decodedline` on every `.o`, source paths resolved against
//! the tree, one `<path>: <ranges>` line per file inside the tree, xPL
//! objects (`spl/`, `tpl/`, `vpl/`) kept apart as `<phase>:<path>`, sorted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Threads reading object files when the build has no fixed `-j`
/// (buildman's `num_jobs or 4`).
pub const DEFAULT_JOBS: usize = 4;

/// Build directories holding each xPL phase's objects.
const XPL_DIRS: [&str; 3] = ["spl", "tpl", "vpl"];

/// Source path → line numbers that generated code.
type LineMap = BTreeMap<PathBuf, BTreeSet<u64>>;

/// Memoised path resolution, shared by the threads of one phase.
type ResolveCache = Mutex<HashMap<(String, String), Option<PathBuf>>>;

/// The manifest of the build in `out_dir` from the tree at `src_dir`,
/// reading objects on `jobs` threads: `<key>: <ranges>\n` lines, sorted.
pub fn scan(out_dir: &Path, src_dir: &Path, jobs: usize) -> String {
    let readelf = find_readelf();
    let mut phases: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for obj in object_files(out_dir) {
        let top = obj
            .strip_prefix(out_dir)
            .ok()
            .and_then(|rel| rel.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let phase = if XPL_DIRS.contains(&top.as_str()) {
            top
        } else {
            String::new()
        };
        phases.entry(phase).or_default().push(obj);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (phase, objs) in &phases {
        let lines = extract_lines(&readelf, out_dir, src_dir, objs, jobs);
        for (abs, used) in lines {
            let rel = relpath(&abs, src_dir);
            if rel.starts_with("..") || rel.starts_with('/') {
                continue;
            }
            let key = if phase.is_empty() {
                rel
            } else {
                format!("{phase}:{rel}")
            };
            out.push((key, format_ranges(&used)));
        }
    }
    out.sort();
    out.iter().map(|(k, r)| format!("{k}: {r}\n")).collect()
}

/// readelf from `PATH` (resolved once per scan), or the bare name.
fn find_readelf() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("readelf"))
                .find(|c| crate::toolchain::is_executable(c))
        })
        .unwrap_or_else(|| PathBuf::from("readelf"))
}

/// Every `*.o` under `dir` (symbolic links to directories not entered).
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let _ = crate::fswalk::walk(
        dir,
        |_| true,
        |_, e| {
            if e.file_name().to_string_lossy().ends_with(".o") {
                found.push(e.path());
            }
            std::ops::ControlFlow::Continue(())
        },
    );
    found
}

/// Read every object's line table on `jobs` threads and merge them; an
/// object readelf cannot read contributes nothing.
fn extract_lines(
    readelf: &Path,
    out_dir: &Path,
    src_dir: &Path,
    objs: &[PathBuf],
    jobs: usize,
) -> LineMap {
    let cache: ResolveCache = Mutex::new(HashMap::new());
    let next = Mutex::new(0usize);
    let merged = Mutex::new(LineMap::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(objs.len().max(1)) {
            s.spawn(|| loop {
                let i = {
                    let mut n = next
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(obj) = objs.get(i) else { return };
                let Some(lines) = object_lines(readelf, obj, out_dir, src_dir, &cache) else {
                    continue;
                };
                let mut m = merged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (file, set) in lines {
                    m.entry(file).or_default().extend(set);
                }
            });
        }
    });
    merged
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lines one object compiled, or `None` if readelf fails on it.
fn object_lines(
    readelf: &Path,
    obj: &Path,
    out_dir: &Path,
    src_dir: &Path,
    cache: &ResolveCache,
) -> Option<LineMap> {
    let out = Command::new(readelf)
        .arg("--debug-dump=decodedline")
        .arg(obj)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        tracing::debug!("readelf failed on {}", obj.display());
        return None;
    }
    let obj_dir = obj
        .strip_prefix(out_dir)
        .ok()
        .and_then(Path::parent)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Python's errors='ignore': undecodable bytes are dropped.
    let text = String::from_utf8_lossy(&out.stdout).replace('\u{FFFD}', "");
    Some(parse_decodedline(&text, &obj_dir, src_dir, cache))
}

/// Python's `str.isspace` (Unicode white space plus the information
/// separators U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.splitlines()`.
fn py_splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let brk = matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if brk {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some((j, '\n')) = chars.peek().copied() {
                    chars.next();
                    end = j + 1;
                }
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// `dwarf_lines.worker`'s parser: a line ending in `:` names the file the
/// following lines belong to (if it resolves); other lines give the line
/// number in their second field.
fn parse_decodedline(text: &str, obj_dir: &str, src_dir: &Path, cache: &ResolveCache) -> LineMap {
    let mut lines = LineMap::new();
    let mut current: Option<PathBuf> = None;
    for line in py_splitlines(text) {
        if line.is_empty()
            || line.starts_with("Contents of")
            || line.starts_with("File name")
            || line.trim_matches(py_space).is_empty()
            || line.starts_with(' ')
        {
            continue;
        }
        if line.ends_with(':') {
            let header = line.trim_end_matches(':');
            if let Some(abs) = resolve_header(header, obj_dir, src_dir, cache) {
                current = Some(abs);
            }
            continue;
        }
        let Some(file) = &current else { continue };
        let parts: Vec<&str> = line.split(py_space).filter(|p| !p.is_empty()).collect();
        if let Some(n) = parts.get(1).and_then(|p| py_int(p)) {
            if n > 0 {
                lines.entry(file.clone()).or_default().insert(n as u64);
            }
        }
    }
    lines
}

/// Python's `int()` on a field: optional sign, digits, `_` between
/// digits.
fn py_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    let (neg, digits) = match digits.strip_prefix('-') {
        Some(d) if !s.starts_with('+') => (true, d),
        _ => (false, digits),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// `dwarf_lines._resolve_header`: an absolute path as it is; a relative
/// one against the object's directory in the tree, then (xPL objects)
/// without the phase directory, then against the top of the tree. The
/// real path of the first that exists.
fn resolve_header(
    header: &str,
    obj_dir: &str,
    src_dir: &Path,
    cache: &ResolveCache,
) -> Option<PathBuf> {
    let key = (header.to_string(), obj_dir.to_string());
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return hit.clone();
    }
    let real = |p: PathBuf| {
        let r = py_realpath(&p);
        r.exists().then_some(r)
    };
    let found = if header.starts_with('/') {
        real(PathBuf::from(header))
    } else {
        real(src_dir.join(obj_dir).join(header))
            .or_else(|| {
                let (first, rest) = obj_dir.split_once('/')?;
                XPL_DIRS
                    .contains(&first)
                    .then(|| real(src_dir.join(rest).join(header)))
                    .flatten()
            })
            .or_else(|| real(src_dir.join(header)))
    };
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, found.clone());
    found
}

/// Python's (non-strict) `os.path.realpath` of an absolute path: symbolic
/// links are resolved where they exist, `..` and missing components are
/// taken as written (unlike `canonicalize`, which needs every component to
/// exist).
fn py_realpath(path: &Path) -> PathBuf {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let names = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut resolved = PathBuf::from("/");
    let mut pending: VecDeque<OsString> = names(path).into();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
        // A link loop (or an unreadable link) is taken as written.
        let target = if is_link && links < 40 {
            std::fs::read_link(&next).ok()
        } else {
            None
        };
        match target {
            Some(target) => {
                links += 1;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for n in names(&target).into_iter().rev() {
                    pending.push_front(n);
                }
            }
            None => resolved = next,
        }
    }
    resolved
}

/// Python's `os.path.relpath(path, start)` for two absolute paths.
fn relpath(path: &Path, start: &Path) -> String {
    let parts = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (p, s) = (parts(path), parts(start));
    let common = p.iter().zip(&s).take_while(|(a, b)| a == b).count();
    let mut rel: Vec<String> = std::iter::repeat_n("..".to_string(), s.len() - common).collect();
    rel.extend(p[common..].iter().cloned());
    if rel.is_empty() {
        ".".to_string()
    } else {
        rel.join("/")
    }
}

/// `lines_to_ranges` + `format_ranges`: `1,3-5,9`.
fn format_ranges(lines: &BTreeSet<u64>) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &n in lines {
        match ranges.last_mut() {
            Some((_, end)) if n == *end + 1 => *end = n,
            _ => ranges.push((n, n)),
        }
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_paths() {
        let set: BTreeSet<u64> = [1, 3, 4, 5, 9].into_iter().collect();
        assert_eq!(format_ranges(&set), "1,3-5,9");
        assert_eq!(relpath(Path::new("/a/b/c.c"), Path::new("/a")), "b/c.c");
        assert_eq!(
            relpath(Path::new("/x/c.c"), Path::new("/a/b")),
            "../../x/c.c"
        );
        assert_eq!(py_splitlines("a\r\nb\rc\n\nd"), ["a", "b", "c", "", "d"]);
        assert_eq!(py_int("12"), Some(12));
        assert_eq!(py_int("+1_0"), Some(10));
        assert_eq!(py_int("-"), None);
        assert_eq!(py_int("0x10"), None);
        // Missing components are taken as written, as Python does.
        assert_eq!(
            py_realpath(Path::new("/no-such-dir/x/../../usr/./bin")),
            std::fs::canonicalize("/usr/bin").unwrap()
        );
    }

    #[test]
    fn parses_readelf_output() {
        let dir = std::env::temp_dir().join(format!("lines-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("common")).unwrap();
        std::fs::write(dir.join("common/main.c"), "x\n").unwrap();
        let src = std::fs::canonicalize(&dir).unwrap();
        let text = "Contents of the .debug_line section:\n\n\
            CU: ../common/main.c:\n\
            File name                            Line number    Starting address    View    Stmt\n\
            main.c:\n\
            main.c                                        10                 0x0               x\n\
            main.c                                        11                 0x4               x\n\
            main.c                                         -                 0x8\n\
            ../common/main.c:\n\
            main.c                                        13                 0x8               x\n";
        let cache = Mutex::new(HashMap::new());
        let m = parse_decodedline(text, "common", &src, &cache);
        let lines: Vec<u64> = m[&src.join("common/main.c")].iter().copied().collect();
        assert_eq!(lines, [10, 11, 13]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
