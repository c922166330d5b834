//! Scripted bbot controllers on loopback (`tiny_http`): every request is
//! recorded, and a closure decides each answer (status, body, delay), so tests
//! can play a controller that has no task, has one, is slow, broken or down.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the controller saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path (with query).
    pub path: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Body text.
    pub body: String,
}

/// What the controller answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    /// `status` with a short body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: format!("error {status}\n"),
            delay: Duration::ZERO,
        }
    }
    /// 200 "no task" (`session:` empty).
    pub fn no_task() -> Self {
        Self::ok(": 1\nsession:\n")
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// A running test controller.
pub struct TestController {
    server: Arc<tiny_http::Server>,
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestController {
    /// Starts a controller answering with `handler(request, index)`, where index
    /// counts the requests this controller received (0-based).
    pub fn start(handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("ip address").port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, r) = (Arc::clone(&server), Arc::clone(&requests));
        let thread = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let rec = Recorded {
                    path: req.url().to_string(),
                    content_type: req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Content-Type"))
                        .map(|h| h.value.to_string()),
                    body,
                };
                let index = {
                    let mut g = r.lock().expect("lock");
                    g.push(rec.clone());
                    g.len() - 1
                };
                let h = Arc::clone(&handler);
                std::thread::spawn(move || {
                    let reply = h(&rec, index);
                    std::thread::sleep(reply.delay);
                    let resp =
                        tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
                    let _ = req.respond(resp);
                });
            }
        });
        Self {
            server,
            port,
            requests,
            thread: Some(thread),
        }
    }

    /// Base URL of this controller plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// Requests received so far whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback URL on which nothing listens (connection refused).
pub fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/refused")
}

/// A task response for `machine`, with result URL `result_url`.
pub fn task_response(machine: &str, result_url: &str, session: &str) -> String {
    task_response_from(
        machine,
        result_url,
        session,
        "https://example.org/u-boot.git#master",
    )
}

/// [`task_response`] with the source at `repository` (for real guests: the
/// agent mirrors it before the task).
pub fn task_response_from(
    machine: &str,
    result_url: &str,
    session: &str,
    repository: &str,
) -> String {
    format!(
        ": 1\nsession: {session}\nresult-url: {result_url}\n:\nname: u-boot\nversion: 2026.01\n\
repository-url: {repository}\nmachine: {machine}\ntarget: x86_64-linux-gnu\n\
commit: aaaa\ncommit: bbbb\nboard: sandbox sandbox\nboard: qemu_arm arm\n"
    )
}

/// A controller that hands out one task for `machine` (results to
/// `result_url`, session `session`) at the first request, then has none.
pub fn one_task(machine: &str, result_url: &str, session: &str) -> TestController {
    let response = task_response(machine, result_url, session);
    TestController::start(move |_, i| {
        if i == 0 {
            Reply::ok(response.clone())
        } else {
            Reply::no_task()
        }
    })
}
