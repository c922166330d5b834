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

use crate::base::cancel::{Cancel, POLL_INTERVAL};
use crate::base::version::AGENT_VERSION;
use crate::control::controller_url::ControllerUrl;

/// Content type of every manifest body, both ways.
pub const MANIFEST_CONTENT_TYPE: &str = "text/manifest";

/// Largest answer we accept from a controller; a task response is a few
/// KiB. A longer answer is a controller failure (never read further).
pub const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

/// First pause before a retry; it doubles up to [`MAX_RETRY_DELAY`]
/// (curl's `--retry` schedule, which bbot's agent uses).
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How the agent talks to controllers (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// `--connect-timeout`: establishing the connection (and TLS).
    pub connect_timeout: Duration,
    /// `--request-timeout`: a whole exchange, connection included.
    pub request_timeout: Duration,
    /// `--request-retries`: extra attempts after a transient failure.
    pub retries: u32,
}

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
    /// The answer is longer than [`MAX_RESPONSE`].
    #[error("answer longer than {MAX_RESPONSE} bytes")]
    TooLong,
    /// The URL cannot be requested at all (not http(s), not a URL).
    #[error("unusable URL: {0}")]
    BadUrl(String),
    /// Any other transport failure.
    #[error("request failed: {0}")]
    Other(String),
    /// A stop was requested while waiting for the answer.
    #[error("interrupted")]
    Interrupted,
}

impl ControllerError {
    /// A failure that may go away by itself (the controller is down,
    /// restarting, overloaded or slow): worth a retry. 408, 429 and 5xx
    /// answers are, as for curl's `--retry`; other 4xx answers are the
    /// controller's final word.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) | Self::Other(_) => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Malformed(_)
            | Self::TooLong
            | Self::BadUrl(_)
            | Self::UnknownMachine(_)
            | Self::Interrupted => false,
        }
    }

    /// The controller refused for good: a result it answers so will never
    /// be taken, however often it is sent.
    pub fn is_permanent_refusal(&self) -> bool {
        match self {
            Self::Status { .. } => !self.is_transient(),
            Self::BadUrl(_) => true,
            _ => false,
        }
    }
}

/// A blocking HTTP client for controllers: connect and request timeouts
/// apart (a black-holed controller costs the connect timeout, not the
/// request timeout) and bounded retries of transient failures.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    cfg: ClientConfig,
}

impl Client {
    /// A client with these timeouts and retries.
    pub fn new(cfg: ClientConfig) -> Result<Self, ControllerError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout.min(cfg.request_timeout))
            .user_agent(format!("bbot-agent/{AGENT_VERSION}"))
            .build()
            .map_err(|e| ControllerError::Other(e.to_string()))?;
        Ok(Self { http, cfg })
    }

    fn classify(&self, e: &reqwest::Error) -> ControllerError {
        // The innermost source carries the useful part ("Connection refused").
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = s.to_string();
            src = s.source();
        }
        if e.is_builder() {
            ControllerError::BadUrl(msg)
        } else if e.is_connect() {
            // Before is_timeout: a connect timeout is both.
            ControllerError::Connect(msg)
        } else if e.is_timeout() {
            ControllerError::Timeout(self.cfg.request_timeout)
        } else {
            ControllerError::Other(msg)
        }
    }

    /// POSTs a manifest once and returns the body of a 2xx answer.
    fn post_once(&self, url: &str, body: String) -> Result<String, ControllerError> {
        let parsed = http_url(url).map_err(ControllerError::BadUrl)?;
        let resp = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, MANIFEST_CONTENT_TYPE)
            .body(body)
            .send()
            .map_err(|e| self.classify(&e))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > MAX_RESPONSE) {
            return Err(ControllerError::TooLong);
        }
        let mut raw = Vec::new();
        resp.take(MAX_RESPONSE + 1)
            .read_to_end(&mut raw)
            .map_err(|e| ControllerError::Other(format!("cannot read answer: {e}")))?;
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(ControllerError::TooLong);
        }
        let text = String::from_utf8(raw)
            .map_err(|_| ControllerError::Malformed("answer is not UTF-8".into()))?;
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

    /// [`Client::post_once`], retried up to `--request-retries` times after
    /// a transient failure, with doubling pauses; a stop (`cancel`) ends
    /// the pauses and the wait for an answer.
    fn post(&self, url: &str, body: &str, cancel: &Cancel) -> Result<String, ControllerError> {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 0;
        loop {
            match self.post_cancellable(url, body.to_string(), cancel) {
                Err(e) if e.is_transient() && attempt < self.cfg.retries => {
                    attempt += 1;
                    tracing::debug!(
                        "{url}: {e}; retry {attempt} of {} in {delay:?}",
                        self.cfg.retries
                    );
                    if cancel.sleep(delay) {
                        return Err(ControllerError::Interrupted);
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                r => return r,
            }
        }
    }

    /// Like [`Client::post_once`] but gives up early when `cancel` is set, so
    /// that a SIGTERM does not wait for a slow controller. The request thread is
    /// left to finish on its own (bounded by the request timeout).
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
                let _ = tx.send(me.post_once(&url, body));
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
        let text = self.post(url, &body, cancel)?;
        let resp = TaskResponseManifest::parse(text.as_bytes(), url)
            .map_err(|e| ControllerError::Malformed(e.to_string()))?;
        if !resp.session.is_empty() && resp.task.is_none() {
            return Err(ControllerError::Malformed("session without task".into()));
        }
        if !resp.session.is_empty() {
            if let Some(result_url) = &resp.result_url {
                check_result_url(result_url)?;
            }
        }
        Ok(resp)
    }

    /// Uploads a result request (already serialized) to `url`, with retries
    /// that `cancel` cuts short (the spool keeps what was not delivered).
    pub fn upload_result(
        &self,
        url: &str,
        body: &str,
        cancel: &Cancel,
    ) -> Result<(), ControllerError> {
        self.post(url, body, cancel).map(|_| ())
    }

    /// Uploads once, not cancellable: while stopping, the task just built
    /// is still delivered (bounded by the request timeout).
    pub fn upload_result_once(&self, url: &str, body: &str) -> Result<(), ControllerError> {
        self.post_once(url, body.to_string()).map(|_| ())
    }
}

/// `url` parsed, if it is an http or https URL: the only kind a controller
/// (command line, task and result URLs alike) can have.
pub fn http_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme '{}' is not http or https", parsed.scheme()));
    }
    Ok(parsed)
}

/// A task's `result-url` must be a plain http(s) URL: anything else
/// (control characters, another scheme) could never take the result, so
/// the task is refused before a VM spends an hour on it.
pub fn check_result_url(url: &str) -> Result<(), ControllerError> {
    if url.chars().any(char::is_control) {
        return Err(ControllerError::Malformed(
            "result-url contains control characters".into(),
        ));
    }
    http_url(url).map_err(|e| ControllerError::Malformed(format!("result-url: {e}")))?;
    Ok(())
}

/// A task obtained from a controller.
#[derive(Debug, Clone)]
pub struct Received {
    /// The controller that gave it.
    pub controller: String,
    /// That controller's priority (section 4a).
    pub priority: crate::base::priority::Priority,
    /// That controller's boost flag.
    pub boost: bool,
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
            priority: c.priority,
            boost: c.boost(),
            response: resp,
            task,
        });
    }
    None
}
