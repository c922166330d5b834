//! The pages: jobs list, a job's board × commit table, a cell's log, the
//! agents seen recently.

use std::fmt::Write;

use super::{ago, escape, page, status_class, time, REFRESH_SECS};
use crate::views::{AgentView, CellLog, CellState, JobState, JobSummary, JobView};

/// "4 success 1 warning 1 error 6 pending", in bbot's status order.
fn counts_text(counts: &std::collections::BTreeMap<String, usize>) -> String {
    let rank = |k: &str| {
        manifests::ResultStatus::ALL
            .iter()
            .position(|s| s.as_str() == k)
            .unwrap_or(usize::MAX)
    };
    let mut v: Vec<(&String, &usize)> = counts.iter().collect();
    v.sort_by_key(|(k, _)| rank(k));
    v.iter()
        .map(|(k, n)| {
            let class = if k.as_str() == "pending" {
                "queued"
            } else {
                k.as_str()
            };
            format!("<span class=\"{}\">{n} {}</span>", escape(class), escape(k))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn repo_text(repository: &str, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("{}#{}", escape(repository), escape(r)),
        None => escape(repository),
    }
}

/// `/`: every job, newest first.
pub fn jobs_page(jobs: &[JobSummary]) -> String {
    let mut b = String::from("<h1>Jobs</h1>\n");
    if jobs.is_empty() {
        b.push_str("<p class=\"muted\">No jobs yet. Submit one with <code>bbot-controller submit</code> or <code>POST /api/jobs</code>.</p>\n");
        return page("bbot controller: jobs", None, &b);
    }
    b.push_str("<table>\n<tr><th>job</th><th>project</th><th>repository</th><th>machine</th><th>boards × commits</th><th>cells</th><th>state</th><th>submitted</th></tr>\n");
    for j in jobs {
        let _ = writeln!(
            b,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{name}</td><td><code>{repo}</code></td><td><code>{machine}</code></td><td>{bo} × {co}</td><td>{counts}</td><td>{state}</td><td>{created}</td></tr>",
            id = j.id,
            name = escape(&j.name),
            repo = repo_text(&j.repository, j.reference.as_deref()),
            machine = escape(&j.machine),
            bo = j.boards,
            co = j.columns,
            counts = counts_text(&j.counts),
            state = j.state.as_str(),
            created = time(j.created),
        );
    }
    b.push_str("</table>\n");
    let running = jobs.iter().any(|j| j.state == JobState::Running);
    page("bbot controller: jobs", running.then_some(REFRESH_SECS), &b)
}

/// `/jobs/ID`: the table, colour-coded, each cell linking to its log.
pub fn job_page(job: &JobView) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>Job {} — {} {}</h1>\n<p><code>{}</code> on machines <code>{}</code>, target <code>{}</code>{}</p>\n<p>{} — {}</p>",
        job.id,
        escape(&job.name),
        escape(&job.version),
        repo_text(&job.repository, job.reference.as_deref()),
        escape(&job.machine),
        escape(&job.target),
        if job.build_settings.is_empty() {
            String::new()
        } else {
            format!(
                ", settings <code>{}</code>",
                escape(&job.build_settings.join(" "))
            )
        },
        job.state.as_str(),
        counts_text(&job.counts),
    );
    b.push_str("<table id=\"table\">\n<tr><th>board</th>");
    for c in 0..job.columns() {
        let title = job.commits.get(c).map(String::as_str).unwrap_or("HEAD");
        let _ = write!(
            b,
            "<th title=\"{}\">@{c} <code>{}</code></th>",
            escape(title),
            escape(&job.column_label(c))
        );
    }
    b.push_str("</tr>\n");
    for (bi, board) in job.boards.iter().enumerate() {
        let _ = write!(
            b,
            "<tr><th>{} <span class=\"muted\">{}</span></th>",
            escape(&board.target),
            escape(&board.arch)
        );
        for c in 0..job.columns() {
            let Some(cell) = job.cell(bi, c) else {
                b.push_str("<td class=\"cell\">?</td>");
                continue;
            };
            let class = status_class(cell.status, cell.state == CellState::Building);
            let text = match cell.status {
                Some(s) => s.as_str(),
                None if cell.state == CellState::Building => "building",
                None => "queued",
            };
            let _ = write!(
                b,
                "<td class=\"cell {class}\" id=\"cell-{bi}-{c}\"><a href=\"/jobs/{}/cells/{bi}/{c}\">{text}</a></td>",
                job.id
            );
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</table>\n<h2>Tasks</h2>\n<table>\n<tr><th>task</th><th>boards</th><th>commits</th><th>state</th><th>attempt</th><th>result</th><th>agent</th><th>note</th></tr>\n");
    for t in &job.tasks {
        let boards: Vec<&str> = t
            .boards
            .iter()
            .filter_map(|&i| job.boards.get(i).map(|b| b.target.as_str()))
            .collect();
        let commits: Vec<String> = t.commits.iter().map(|c| format!("@{c}")).collect();
        let agent = match (&t.agent, &t.machine) {
            (Some(a), Some(m)) => format!("{} on {}", escape(a), escape(m)),
            _ => String::new(),
        };
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{agent}</td><td>{}</td></tr>",
            t.id,
            escape(&boards.join(" ")),
            escape(&commits.join(" ")),
            escape(&t.state),
            t.attempt,
            t.result_status.map(|s| s.as_str()).unwrap_or(""),
            escape(t.note.as_deref().unwrap_or("")),
        );
    }
    b.push_str("</table>\n");
    let _ = writeln!(
        b,
        "<p class=\"muted\">Submitted {}{}. JSON: <a href=\"/api/jobs/{}\">/api/jobs/{}</a></p>",
        time(job.created),
        job.finished
            .map(|f| format!(", finished {}", time(f)))
            .unwrap_or_default(),
        job.id,
        job.id
    );
    page(
        &format!("job {}: {} {}", job.id, job.name, job.version),
        (job.state == JobState::Running).then_some(REFRESH_SECS),
        &b,
    )
}

/// `/jobs/ID/cells/B/C`: one cell's log, escaped.
pub fn cell_page(cell: &CellLog) -> String {
    let commit = cell.commit.as_deref().unwrap_or("HEAD");
    let status = cell.status.map(|s| s.as_str()).unwrap_or("pending");
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>{} ({}) @{} <code>{}</code>: <span class=\"{}\">{}</span></h1>\n<p><a href=\"/jobs/{}\">job {}</a>{}</p>",
        escape(&cell.board.target),
        escape(&cell.board.arch),
        cell.commit_index,
        escape(commit),
        status_class(cell.status, false),
        status,
        cell.job,
        cell.job,
        cell.task.map(|t| format!(", task {t}")).unwrap_or_default(),
    );
    match &cell.log {
        Some(log) => {
            let _ = writeln!(b, "<pre class=\"log\" id=\"log\">{}</pre>", escape(log));
        }
        None => b.push_str("<p class=\"muted\">No log yet.</p>\n"),
    }
    page(
        &format!("{} @{}: {status}", cell.board.target, cell.commit_index),
        cell.status.is_none().then_some(REFRESH_SECS),
        &b,
    )
}

/// `/agents`: who asked for work recently, offering what, holding what.
pub fn agents_page(agents: &[AgentView], now: f64) -> String {
    let mut b = String::from("<h1>Agents seen in the last 10 minutes</h1>\n");
    if agents.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>\n");
    } else {
        b.push_str("<table>\n<tr><th>agent</th><th>toolchain</th><th>address</th><th>last request</th><th>requests</th><th>machines</th><th>current task</th></tr>\n");
        for a in agents {
            let machines: Vec<String> = a
                .machines
                .iter()
                .map(|m| {
                    format!(
                        "<code>{}</code> <span class=\"muted\">{}</span>",
                        escape(&m.name),
                        escape(&m.summary)
                    )
                })
                .collect();
            let tasks: Vec<String> = a
                .tasks
                .iter()
                .map(|t| {
                    format!(
                        "<a href=\"/jobs/{}\">job {}</a> task {} on <code>{}</code>, lease ends in {}",
                        t.job,
                        t.job,
                        t.task,
                        escape(&t.machine),
                        ago(t.expires - now)
                    )
                })
                .collect();
            let _ = writeln!(
                b,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{} ago</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&a.name),
                a.fingerprint
                    .as_deref()
                    .map(|f| format!(
                        "<br><span class=\"muted\">key {}</span>",
                        escape(f.get(..16).unwrap_or(f))
                    ))
                    .unwrap_or_default(),
                escape(&a.toolchain),
                escape(a.address.as_deref().unwrap_or("")),
                ago(now - a.last_seen),
                a.requests,
                machines.join("<br>"),
                if tasks.is_empty() {
                    "idle".to_string()
                } else {
                    tasks.join("<br>")
                },
            );
        }
        b.push_str("</table>\n");
    }
    page("bbot controller: agents", Some(REFRESH_SECS * 2), &b)
}
