//! HTTP client for bbot controllers (PROTOCOLS.md section 3): task requests and
//! result uploads, with every way a controller can fail classified and named.
//!
//! Why classify: a controller that is down, slow, broken or confused must only
//! cost us that controller for this round, and the log line must say which
//! controller and which of those it was.

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use manifests::{Document, TaskManifest, TaskRequestManifest, TaskResponseManifest};

use crate::cancel::{Cancel, POLL_INTERVAL};
use crate::cli::ControllerUrl;
use crate::version::AGENT_VERSION;

/// Content type of every manifest body, both ways.
pub const MANIFEST_CONTENT_TYPE: &str = "text/manifest";

/// Largest answer we read from a controller; a task response is a few KiB.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Why a controller exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Nobody listens, DNS failed, TLS failed, ...
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No answer within `--request-timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An HTTP error status.
    #[error("HTTP status {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The first line of the body, for the log.
        body: String,
    },
    /// The answer is not a valid task response.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The task is for a machine this agent did not offer.
    #[error("task for machine '{0}' which this agent did not offer")]
    UnknownMachine(String),
    /// Any other transport failure.
    #[error("request failed: {0}")]
    Other(String),
    /// A stop was requested while waiting for the answer.
    #[error("interrupted")]
    Interrupted,
}

/// A blocking HTTP client for controllers, with the request timeout applied to
/// every exchange.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    timeout: Duration,
}

impl Client {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, ControllerError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(format!("bbot-agent/{AGENT_VERSION}"))
            .build()
            .map_err(|e| ControllerError::Other(e.to_string()))?;
        Ok(Self { http, timeout })
    }

    fn classify(&self, e: &reqwest::Error) -> ControllerError {
        // The innermost source carries the useful part ("Connection refused").
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = s.to_string();
            src = s.source();
        }
        if e.is_timeout() {
            ControllerError::Timeout(self.timeout)
        } else if e.is_connect() {
            ControllerError::Connect(msg)
        } else {
            ControllerError::Other(msg)
        }
    }

    /// POSTs a manifest and returns the body of a 2xx answer.
    fn post(&self, url: &str, body: String) -> Result<String, ControllerError> {
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, MANIFEST_CONTENT_TYPE)
            .body(body)
            .send()
            .map_err(|e| self.classify(&e))?;
        let status = resp.status();
        let mut text = String::new();
        resp.take(MAX_RESPONSE)
            .read_to_string(&mut text)
            .map_err(|e| ControllerError::Malformed(format!("cannot read answer: {e}")))?;
        if !status.is_success() {
            return Err(ControllerError::Status {
                status: status.as_u16(),
                body: text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        Ok(text)
    }

    /// Like [`Client::post`] but gives up early when `cancel` is set, so that a
    /// SIGTERM does not wait for a slow controller. The request thread is left to
    /// finish on its own (bounded by the request timeout).
    fn post_cancellable(
        &self,
        url: &str,
        body: String,
        cancel: &Cancel,
    ) -> Result<String, ControllerError> {
        let (tx, rx) = mpsc::channel();
        let me = self.clone();
        let url = url.to_string();
        std::thread::Builder::new()
            .name("controller".into())
            .spawn(move || {
                let _ = tx.send(me.post(&url, body));
            })
            .map_err(|e| ControllerError::Other(format!("cannot start request thread: {e}")))?;
        loop {
            if cancel.is_cancelled() {
                return Err(ControllerError::Interrupted);
            }
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ControllerError::Other("request thread died".into()))
                }
            }
        }
    }

    /// Sends a task request to `url` and returns the parsed response. A response
    /// with a session but no task is malformed.
    pub fn request_task(
        &self,
        url: &str,
        req: &TaskRequestManifest,
        cancel: &Cancel,
    ) -> Result<TaskResponseManifest, ControllerError> {
        let body = req
            .to_text()
            .map_err(|e| ControllerError::Other(format!("cannot serialize task request: {e}")))?;
        let text = self.post_cancellable(url, body, cancel)?;
        let resp = TaskResponseManifest::parse(text.as_bytes(), url)
            .map_err(|e| ControllerError::Malformed(e.to_string()))?;
        if !resp.session.is_empty() && resp.task.is_none() {
            return Err(ControllerError::Malformed("session without task".into()));
        }
        Ok(resp)
    }

    /// Uploads a result request (already serialized) to `url`. Not cancellable: a
    /// result is uploaded even while stopping (bounded by the request timeout).
    pub fn upload_result(&self, url: &str, body: &str) -> Result<(), ControllerError> {
        self.post(url, body.to_string()).map(|_| ())
    }
}

/// A task obtained from a controller.
#[derive(Debug, Clone)]
pub struct Received {
    /// The controller that gave it.
    pub controller: String,
    /// The full response (session, challenge, result URL).
    pub response: TaskResponseManifest,
    /// The task itself.
    pub task: TaskManifest,
}

/// Asks each controller in `order` for a task; the first non-empty session for
/// an offered machine wins. Every failure is logged with the controller's URL
/// and the next controller is asked. `None`: no task anywhere (or stopping).
pub fn poll(
    client: &Client,
    order: &[ControllerUrl],
    req: &TaskRequestManifest,
    cancel: &Cancel,
) -> Option<Received> {
    for c in order {
        let resp = match client.request_task(&c.url, req, cancel) {
            Ok(r) => r,
            Err(ControllerError::Interrupted) => return None,
            Err(e) => {
                tracing::error!("controller {}: {e}", c.url);
                continue;
            }
        };
        if resp.session.is_empty() {
            tracing::debug!("controller {}: no task", c.url);
            continue;
        }
        let Some(task) = resp.task.clone() else {
            continue;
        };
        if !req.machines.iter().any(|m| m.name == task.machine) {
            let e = ControllerError::UnknownMachine(task.machine.clone());
            tracing::error!("controller {}: {e}", c.url);
            continue;
        }
        tracing::info!(
            "controller {}: task {} {} on {}",
            c.url,
            task.name,
            task.version,
            task.machine
        );
        return Some(Received {
            controller: c.url.clone(),
            response: resp,
            task,
        });
    }
    None
}
