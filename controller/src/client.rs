//! The command line's side of the JSON API: `submit` and `status` talk to a
//! running controller over HTTP rather than open its database, so they
//! work from any host that reaches the controller, never contend with it
//! for the database, and go through the same checks as any other client.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::Submitted;
use crate::jobs::JobRequest;
use crate::views::{JobSummary, JobView};

/// Why a call to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, timeout, ...).
    #[error("cannot reach the controller at {url}: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An error answer.
    #[error("controller at {url} answered {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// The error message from the answer.
        message: String,
    },
    /// An answer that is not the expected JSON.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// The URL asked.
        url: String,
        /// The decoding error.
        message: String,
    },
}

/// A client for one controller.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

fn root(error: &reqwest::Error) -> String {
    let mut msg = error.to_string();
    let mut src = std::error::Error::source(error);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

impl Client {
    /// A client for the controller at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.to_string(),
                message: root(&e),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        url: &str,
        resp: reqwest::blocking::Response,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        let text = resp.text().map_err(|e| ClientError::Transport {
            url: url.to_string(),
            message: root(&e),
        })?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| text.trim().to_string());
            return Err(ClientError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                message: root(&e),
            })?;
        self.decode(&url, resp)
    }

    /// Submits a job.
    pub fn submit(&self, job: &JobRequest) -> Result<Submitted, ClientError> {
        let url = format!("{}/api/jobs", self.base);
        let body = serde_json::to_string(job).map_err(|e| ClientError::Decode {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: root(&e),
        })?;
        self.decode(&url, resp)
    }

    /// One job.
    pub fn job(&self, id: i64) -> Result<JobView, ClientError> {
        self.get(&format!("/api/jobs/{id}"))
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        self.get("/api/jobs")
    }
}
