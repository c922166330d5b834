//! Routing: which handler serves a request, how large a body it may carry,
//! and timing every answer for `/metrics`.
//!
//! | method | target | what |
//! |---|---|---|
//! | POST | `/?build-task` | task request (bbot agents), ≤ 1 MiB |
//! | POST | `/?build-result` | result request (bbot agents), ≤ 16 MiB |
//! | GET | `/` | jobs page |
//! | GET | `/jobs/ID` | a job's board × commit table |
//! | GET | `/jobs/ID/cells/B/C` | a cell's log |
//! | GET | `/agents` | agents seen recently |
//! | GET, POST | `/api/jobs` | jobs as JSON; submit a job (≤ 1 MiB) |
//! | GET | `/api/jobs/ID`, `/api/jobs/ID/cells/B/C`, `/api/agents` | JSON |
//! | GET | `/metrics` | Prometheus text |

use std::sync::Arc;
use std::time::Instant;

use crate::http::{Handler, Request, RequestHead, Response};
use crate::state::{State, RECENT};
use crate::{api, db, protocol, web};

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    TaskRequest,
    ResultRequest,
    JobsPage,
    JobPage(i64),
    CellPage(i64, usize, usize),
    AgentsPage,
    ApiJobs,
    ApiJob(i64),
    ApiCell(i64, usize, usize),
    ApiAgents,
    Metrics,
    NotFound,
}

impl Route {
    fn of(head: &RequestHead) -> Self {
        let first_param = head.query.split('&').next().unwrap_or_default();
        if head.path == "/" && first_param == "build-task" {
            return Route::TaskRequest;
        }
        if head.path == "/" && first_param == "build-result" {
            return Route::ResultRequest;
        }
        let parts: Vec<&str> = head.path.split('/').filter(|p| !p.is_empty()).collect();
        let id = |s: &str| s.parse::<i64>().ok();
        let ix = |s: &str| s.parse::<usize>().ok();
        match parts.as_slice() {
            [] => Route::JobsPage,
            ["jobs", j] => id(j).map_or(Route::NotFound, Route::JobPage),
            ["jobs", j, "cells", b, c] => match (id(j), ix(b), ix(c)) {
                (Some(j), Some(b), Some(c)) => Route::CellPage(j, b, c),
                _ => Route::NotFound,
            },
            ["agents"] => Route::AgentsPage,
            ["api", "jobs"] => Route::ApiJobs,
            ["api", "jobs", j] => id(j).map_or(Route::NotFound, Route::ApiJob),
            ["api", "jobs", j, "cells", b, c] => match (id(j), ix(b), ix(c)) {
                (Some(j), Some(b), Some(c)) => Route::ApiCell(j, b, c),
                _ => Route::NotFound,
            },
            ["api", "agents"] => Route::ApiAgents,
            ["metrics"] => Route::Metrics,
            _ => Route::NotFound,
        }
    }

    /// Label for metrics (few values, so label cardinality stays bounded).
    fn label(self, method: &str) -> &'static str {
        match self {
            Route::TaskRequest => "task",
            Route::ResultRequest => "result",
            Route::ApiJobs if method == "POST" => "submit",
            Route::JobsPage | Route::JobPage(..) | Route::CellPage(..) | Route::AgentsPage => {
                "page"
            }
            Route::ApiJobs | Route::ApiJob(_) | Route::ApiCell(..) | Route::ApiAgents => "api",
            Route::Metrics => "metrics",
            Route::NotFound => "other",
        }
    }

    /// Methods the route answers.
    fn allows(self, method: &str) -> bool {
        match self {
            Route::TaskRequest | Route::ResultRequest => method == "POST",
            Route::ApiJobs => matches!(method, "GET" | "HEAD" | "POST"),
            Route::NotFound => true,
            _ => matches!(method, "GET" | "HEAD"),
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Route::TaskRequest | Route::ResultRequest => "POST",
            Route::ApiJobs => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }
    }
}

/// The application behind the HTTP server.
pub struct App {
    state: Arc<State>,
}

impl App {
    /// The application over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    fn dispatch(&self, route: Route, req: &Request) -> Response {
        let s = &*self.state;
        let html = |r: Result<Option<String>, db::DbError>, what: &str| match r {
            Ok(Some(page)) => Response::html(page),
            Ok(None) => Response::text(404, format!("no {what}")),
            Err(e) => {
                tracing::error!(error = %e, "page failed");
                Response::text(500, e.to_string())
            }
        };
        match route {
            Route::TaskRequest => protocol::task_request(s, req),
            Route::ResultRequest => protocol::result_request(s, req),
            Route::JobsPage => html(s.db.jobs().map(|j| Some(web::jobs_page(&j))), "jobs"),
            Route::JobPage(id) => html(
                s.db.job(id).map(|j| j.map(|j| web::job_page(&j))),
                &format!("job {id}"),
            ),
            Route::CellPage(id, b, c) => html(
                s.db.cell(id, b, c).map(|c| c.map(|c| web::cell_page(&c))),
                "such cell",
            ),
            Route::AgentsPage => {
                let now = db::now();
                html(
                    s.db.open_leases().map(|l| {
                        Some(web::agents_page(
                            &s.agents.recent(now - RECENT.as_secs_f64(), &l),
                            now,
                        ))
                    }),
                    "agents",
                )
            }
            Route::ApiJobs if req.head.method == "POST" => api::submit(s, req),
            Route::ApiJobs => api::jobs(s),
            Route::ApiJob(id) => api::job(s, id),
            Route::ApiCell(id, b, c) => api::cell(s, id, b, c),
            Route::ApiAgents => api::agents(s),
            Route::Metrics => {
                let stats =
                    s.db.stats()
                        .map_err(|e| tracing::error!(error = %e, "metrics: database"))
                        .ok();
                let recent = s.agents.count_since(db::now() - RECENT.as_secs_f64());
                Response::typed(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    s.metrics
                        .render(stats.as_ref(), recent, s.db.size_bytes())
                        .into_bytes(),
                )
            }
            Route::NotFound => Response::text(404, format!("nothing at {}", req.head.path)),
        }
    }
}

impl Handler for App {
    fn body_limit(&self, head: &RequestHead) -> u64 {
        match Route::of(head) {
            Route::TaskRequest => protocol::TASK_REQUEST_LIMIT,
            Route::ResultRequest => protocol::RESULT_REQUEST_LIMIT,
            Route::ApiJobs => api::SUBMIT_LIMIT,
            // Pages take no body; a little slack for odd clients.
            _ => 64 * 1024,
        }
    }

    fn handle(&self, req: Request) -> Response {
        let start = Instant::now();
        let route = Route::of(&req.head);
        let response = if route.allows(&req.head.method) {
            self.dispatch(route, &req)
        } else {
            Response::text(405, format!("{} not allowed here", req.head.method))
                .with_header("Allow", route.allow_header())
        };
        self.state.metrics.request(
            route.label(&req.head.method),
            response.status,
            start.elapsed(),
        );
        response
    }

    fn refused(&self, head: Option<&RequestHead>, status: u16, why: &str) {
        let label = head.map_or("other", |h| Route::of(h).label(&h.method));
        self.state.metrics.refused(label, status);
        tracing::warn!(
            status,
            why,
            peer = ?head.and_then(|h| h.remote),
            path = head.map(|h| h.path.as_str()).unwrap_or(""),
            "request refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> RequestHead {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        RequestHead {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: Vec::new(),
            remote: None,
        }
    }

    #[test]
    fn routes_as_brep_and_the_pages() {
        assert_eq!(Route::of(&head("POST", "/?build-task")), Route::TaskRequest);
        assert_eq!(
            Route::of(&head("POST", "/?build-result")),
            Route::ResultRequest
        );
        assert_eq!(Route::of(&head("GET", "/")), Route::JobsPage);
        assert_eq!(Route::of(&head("GET", "/jobs/3")), Route::JobPage(3));
        assert_eq!(
            Route::of(&head("GET", "/jobs/3/cells/1/2")),
            Route::CellPage(3, 1, 2)
        );
        assert_eq!(Route::of(&head("GET", "/api/jobs/x")), Route::NotFound);
        assert_eq!(
            Route::of(&head("GET", "/jobs/3/cells/-1/2")),
            Route::NotFound
        );
        assert!(!Route::TaskRequest.allows("GET"));
        assert!(Route::ApiJobs.allows("POST"));
        assert!(!Route::JobPage(1).allows("POST"));
    }
}
