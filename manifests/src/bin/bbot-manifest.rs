//! `bbot-manifest`: checks manifest files by hand and prints them back
//! normalized, so an admin can validate a machine manifest or a task before
//! the agent ever sees it.

use anyhow::{Context, Result};
use clap::Parser;
use manifests::detect::Kind;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Check bbot manifest files and print them in canonical form.
#[derive(Parser, Debug)]
#[command(name = "bbot-manifest", version, about, long_about = None)]
struct Cli {
    /// Manifest kind; guessed from the fields when not given.
    #[arg(short, long, value_parser = parse_kind)]
    kind: Option<Kind>,
    /// Only check; print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// For a result (or result request): print a board × commit table
    /// instead of the manifest.
    #[arg(short, long)]
    summary: bool,
    /// Files to check (`-` for standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

/// What an input is called in messages: its path, or `<stdin>` for `-`.
fn input_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

fn read_input(path: &PathBuf) -> Result<(Vec<u8>, String)> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        return Ok((buf, input_name(path)));
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((bytes, input_name(path)))
}

/// Checks one file and returns what to print for it (nothing when quiet).
/// Printing is left to the caller, so that a failing standard output is
/// reported as such and not mistaken for a problem with the file.
fn check(cli: &Cli, path: &PathBuf) -> Result<String> {
    let (bytes, source) = read_input(path)?;
    let stream = manifests::parse_stream(&bytes, &source)?;
    let kind = cli.kind.unwrap_or_else(|| Kind::detect(&stream));
    if cli.summary {
        use manifests::Document;
        let result = match kind {
            Kind::Result => manifests::ResultManifest::from_stream(&stream, &source)?,
            Kind::ResultRequest => {
                manifests::ResultRequestManifest::from_stream(&stream, &source)?.result
            }
            other => {
                // An invalid file is reported as such before the kind is.
                other.normalize(&stream, &source)?;
                anyhow::bail!("{source}: --summary needs a result, this is a {other}")
            }
        };
        return Ok(manifests::summary::board_summary(&result));
    }
    let text = kind.normalize(&stream, &source)?;
    if cli.quiet {
        report(&format!("{source}: ok ({kind})"));
        return Ok(String::new());
    }
    if cli.files.len() > 1 {
        return Ok(format!("# {source} ({kind})\n{text}"));
    }
    Ok(text)
}

/// Writes one file's output to standard output, flushed, so that a write
/// error (a full disk, a closed pipe) is seen here and not lost when the
/// process exits.
fn write_out(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Prints a line on standard error. Unlike `eprintln!` it does not panic
/// when standard error is unwritable: there is nowhere left to report to,
/// and the exit status still tells.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for path in &cli.files {
        match check(&cli, path) {
            Ok(text) if text.is_empty() => {}
            Ok(text) => {
                if let Err(e) = write_out(&mut stdout, &text) {
                    let what = if cli.summary {
                        format!("the summary of {}", input_name(path))
                    } else {
                        input_name(path)
                    };
                    report(&format!(
                        "bbot-manifest: cannot write {what} to standard output: {e}"
                    ));
                    // Standard output is broken: later files would fail
                    // the same way.
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                report(&format!("{e:#}"));
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
