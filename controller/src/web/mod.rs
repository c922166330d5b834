//! HTML for people: plain pages, no script, a meta refresh while work is
//! running. Everything that comes from outside (logs, names, URLs, agent
//! data) goes through [`escape`] — a build log is attacker-controlled text
//! as far as a browser is concerned.

mod pages;

pub use pages::{agents_page, cell_page, job_page, jobs_page};

use manifests::ResultStatus;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds between refreshes of a page showing running work.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = r#"
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.cell { text-align: center; font-family: monospace; min-width: 6em; }
td.cell a { color: inherit; text-decoration: none; display: block; }
.success { background: #b7e4b7; } .warning { background: #fff0a0; }
.error { background: #f4a3a3; } .abort { background: #f6c48a; }
.abnormal { background: #e0a8e8; } .interrupt { background: #c8c8c8; }
.skip { background: #eeeeee; } .queued { background: #ffffff; color: #888; }
.building { background: #a9cdf0; }
pre.log { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; white-space: pre-wrap; word-break: break-all; }
nav a { margin-right: 1em; } .muted { color: #777; } code { font-size: 0.95em; }
"#;

/// A complete page; `refresh` adds a meta refresh (seconds).
pub fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">\n"))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{refresh}<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<nav><a href=\"/\">Jobs</a><a href=\"/agents\">Agents</a><a href=\"/metrics\">Metrics</a></nav>\n{body}\n</body>\n</html>\n",
        escape(title)
    )
}

/// CSS class of a cell.
pub fn status_class(status: Option<ResultStatus>, building: bool) -> &'static str {
    match status {
        Some(s) => s.as_str(),
        None if building => "building",
        None => "queued",
    }
}

/// A Unix time as `YYYY-MM-DD hh:mm:ssZ` (UTC).
pub fn time(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration in seconds for people: `42 s`, `3 min`, `2 h 5 min`.
pub fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn formats_times() {
        assert_eq!(time(0.0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_700_000_000.0), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400.0), "2000-02-29 00:00:00Z");
        assert_eq!(ago(5.0), "5 s");
        assert_eq!(ago(600.0), "10 min");
        assert_eq!(ago(7500.0), "2 h 5 min");
    }
}
