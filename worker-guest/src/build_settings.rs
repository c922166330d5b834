//! Build settings and the make command lines they give.
//!
//! The boss's `configure` settings mirror buildman's command-line flags;
//! this module turns them (and buildman's `-j` split) into the exact make
//! arguments buildman uses, so a board builds the same way whether the boss
//! builds it locally or sends it to us.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::settings_file::BuildmanSettings;

/// The `configure` settings that change how boards are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// `V=1` instead of `-s`; the config step's output is kept in stdout.
    pub verbose_build: bool,
    /// `BINMAN_ALLOW_MISSING=1`.
    pub allow_missing: bool,
    /// `NO_LTO=1`.
    pub no_lto: bool,
    /// `SOURCE_DATE_EPOCH=0`.
    pub reproducible_builds: bool,
    /// `KCFLAGS=-Werror HOSTCFLAGS=-Werror`.
    pub warnings_as_errors: bool,
    /// `make mrproper` before every defconfig.
    pub mrproper: bool,
    /// `make mrproper` before the retry of a failed incremental build.
    pub fallback_mrproper: bool,
    /// Build the `cfg` target only.
    pub config_only: bool,
    /// Run defconfig for every commit, not only when needed.
    pub force_reconfig: bool,
    /// Reconfigure when a Kconfig file or the board's defconfig is newer
    /// than `.config` (on by default).
    pub kconfig_check: bool,
    /// Wrap compilers in ccache, if this machine has it.
    pub ccache: bool,
    /// `shared_dtc`: build dtc and pylibfdt once per version of their
    /// sources and point every board's build at it (see `dtc_cache`).
    pub shared_dtc: bool,
    /// `lines`: send the source-lines manifest of each successful build
    /// (see `lines`).
    pub lines: bool,
    /// `skip_unaffected` (the boss sends it on by default). buildman skips
    /// a commit that cannot affect a board by copying the board's previous
    /// result files forward; a worker writes no result files, so buildman's
    /// own worker finds nothing to copy and builds every commit, and so do
    /// we: the boss's results must be the same from either worker. Kept so
    /// the choice is visible (logged at `configure`), never acted on.
    pub skip_unaffected: bool,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            verbose_build: false,
            allow_missing: false,
            no_lto: false,
            reproducible_builds: false,
            warnings_as_errors: false,
            mrproper: false,
            fallback_mrproper: false,
            config_only: false,
            force_reconfig: false,
            kconfig_check: true,
            ccache: false,
            shared_dtc: false,
            lines: false,
            skip_unaffected: false,
        }
    }
}

/// Python-style truthiness, since the boss sends whatever its argument
/// parser produced (booleans, but also numbers or strings).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

impl BuildSettings {
    /// Read the settings of a `configure` command. `force_build` needs no
    /// handling (it only makes buildman rebuild what its own result files
    /// say is built, and a worker has none); other unknown keys are
    /// ignored, as buildman's worker ignores them.
    pub fn from_json(map: &Map<String, Value>) -> Self {
        let get = |k: &str, default: bool| map.get(k).map_or(default, truthy);
        Self {
            verbose_build: get("verbose_build", false),
            allow_missing: get("allow_missing", false),
            no_lto: get("no_lto", false),
            reproducible_builds: get("reproducible_builds", false),
            warnings_as_errors: get("warnings_as_errors", false),
            mrproper: get("mrproper", false),
            fallback_mrproper: get("fallback_mrproper", false),
            config_only: get("config_only", false),
            force_reconfig: get("force_reconfig", false),
            kconfig_check: get("kconfig_check", true),
            ccache: get("ccache", false),
            shared_dtc: get("shared_dtc", false),
            lines: get("lines", false),
            skip_unaffected: get("skip_unaffected", false),
        }
    }

    /// The make arguments shared by the config and build steps, in
    /// buildman's order: `O=`, `-s`/`V=1`, `-j N NPROC=N`, then the
    /// settings' variables.
    pub fn make_args(
        &self,
        out_arg: Option<&str>,
        jobs: Option<usize>,
        ccache: Option<&str>,
    ) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(o) = out_arg {
            args.push(format!("O={o}"));
        }
        args.push(if self.verbose_build { "V=1" } else { "-s" }.to_string());
        if let Some(n) = jobs {
            args.push("-j".to_string());
            args.push(n.to_string());
            args.push(format!("NPROC={n}"));
        }
        if self.warnings_as_errors {
            args.push("KCFLAGS=-Werror".to_string());
            args.push("HOSTCFLAGS=-Werror".to_string());
        }
        if self.allow_missing {
            args.push("BINMAN_ALLOW_MISSING=1".to_string());
        }
        if self.no_lto {
            args.push("NO_LTO=1".to_string());
        }
        if self.reproducible_builds {
            args.push("SOURCE_DATE_EPOCH=0".to_string());
        }
        if let Some(cc) = ccache {
            args.push(format!("HOSTCC={cc} gcc"));
        }
        args
    }
}

/// How many make jobs each board gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSplit {
    /// A fixed `-j` (batch builds: threads share the CPUs evenly).
    Fixed(usize),
    /// Demand-driven builds: recomputed for every make from the number of
    /// boards being built, with `max_boards` as the boss's target.
    Dynamic {
        /// Boards the boss keeps in flight (0: the number of threads).
        max_boards: usize,
    },
}

impl JobSplit {
    /// buildman's `-j`: with A boards active, B = max_boards (or nthreads):
    /// max(1, 2·nthreads/A) while A < B (the tail of a build, where make's
    /// own serial parts leave CPUs idle), else max(1, nthreads/A).
    pub fn jobs(&self, nthreads: usize, active: usize) -> Option<usize> {
        match *self {
            JobSplit::Fixed(n) => Some(n.max(1)),
            JobSplit::Dynamic { .. } if active == 0 => None,
            JobSplit::Dynamic { max_boards } => {
                let baseline = if max_boards == 0 {
                    nthreads
                } else {
                    max_boards
                };
                if active < baseline {
                    Some((nthreads * 2 / active).max(1))
                } else {
                    Some((nthreads / active).max(1))
                }
            }
        }
    }
}

/// Per-board make flags from the `[make-flags]` section of the worker's
/// config, e.g. `snapper9260=${at91-boards} BUILD_TAG=442`.
#[derive(Debug, Clone, Default)]
pub struct MakeFlags {
    vars: BTreeMap<String, String>,
}

impl MakeFlags {
    /// Take the `[make-flags]` section of a settings file.
    pub fn from_settings(settings: &BuildmanSettings) -> Self {
        Self {
            vars: settings.items("make-flags").into_iter().collect(),
        }
    }

    /// The extra make arguments for a board (`${name}` references resolved,
    /// `${target}` being the board), split on whitespace outside quotes.
    pub fn for_board(&self, target: &str) -> Vec<String> {
        let Some(raw) = self.vars.get(target) else {
            return Vec::new();
        };
        let mut text = raw.clone();
        for _ in 0..32 {
            let Some(start) = text.find("${") else { break };
            let Some(len) = text[start..].find('}') else {
                break;
            };
            let name = &text[start + 2..start + len];
            let value = if name == "target" {
                target.to_string()
            } else {
                self.vars.get(name).cloned().unwrap_or_default()
            };
            text = format!("{}{}{}", &text[..start], value, &text[start + len + 1..]);
        }
        split_quoted(&text)
    }
}

/// Split on whitespace, keeping `"..."` runs together (quotes kept, as
/// buildman's regular expression does).
fn split_quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if c.is_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_split_follows_buildman() {
        let d = JobSplit::Dynamic { max_boards: 0 };
        assert_eq!(d.jobs(8, 1), Some(16));
        assert_eq!(d.jobs(8, 8), Some(1));
        assert_eq!(d.jobs(8, 3), Some(5));
        assert_eq!(JobSplit::Dynamic { max_boards: 2 }.jobs(8, 2), Some(4));
        assert_eq!(JobSplit::Fixed(3).jobs(8, 5), Some(3));
    }

    #[test]
    fn settings_to_args() {
        let map: Map<String, Value> = serde_json::from_str(
            r#"{"verbose_build":true,"no_lto":1,"allow_missing":true,"reproducible_builds":true,"warnings_as_errors":true}"#,
        )
        .unwrap();
        let s = BuildSettings::from_json(&map);
        assert_eq!(
            s.make_args(Some("build"), Some(2), None),
            [
                "O=build",
                "V=1",
                "-j",
                "2",
                "NPROC=2",
                "KCFLAGS=-Werror",
                "HOSTCFLAGS=-Werror",
                "BINMAN_ALLOW_MISSING=1",
                "NO_LTO=1",
                "SOURCE_DATE_EPOCH=0"
            ]
        );
        assert!(s.kconfig_check);
        assert!(!s.shared_dtc && !s.lines && !s.skip_unaffected);
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"shared_dtc":true,"lines":1,"skip_unaffected":true}"#)
                .unwrap();
        let s = BuildSettings::from_json(&map);
        assert!(s.shared_dtc && s.lines && s.skip_unaffected);
    }

    #[test]
    fn make_flags_references() {
        let st = BuildmanSettings::parse(
            "[make-flags]\nat91=A=1\nsnap=${at91} TAG=\"x y\" T=${target}\n",
        );
        let mf = MakeFlags::from_settings(&st);
        assert_eq!(mf.for_board("snap"), ["A=1", "TAG=\"x y\"", "T=snap"]);
    }
}
