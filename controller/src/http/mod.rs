//! HTTP/1.1 as this controller needs it: request and response values, and
//! a small blocking server ([`server`]) that bounds everything a client
//! controls (head size, body size, time, connections).
//!
//! Why not tiny_http (the crate first chosen): tiny_http 0.12 drains an
//! unread request body when the request is dropped, allocating the whole
//! declared remainder at once (`vec![0; remaining]`). A single request
//! declaring `Content-Length: 100000000000` aborts the process — measured
//! here, and reported upstream (tiny-http pull request #290, not merged).
//! A controller faces agents across the network, and the protocol asks for
//! "413, body not read further", which tiny_http cannot do at all.

pub mod server;

use std::net::SocketAddr;

/// What a request asks for, before its body is read: enough to route it
/// and to decide how large a body it may carry.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET`, `POST`, ... as sent (upper case per RFC 9110; not changed).
    pub method: String,
    /// The path, without the query (`/api/jobs/1`).
    pub path: String,
    /// The query without `?` (`build-task`), empty when there is none.
    pub query: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The peer.
    pub remote: Option<SocketAddr>,
}

impl RequestHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of `Content-Type` without parameters, lower-cased.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }
}

/// A request with its (bounded) body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, target and headers.
    pub head: RequestHead,
    /// The body, at most the route's limit.
    pub body: Vec<u8>,
}

/// An answer. Always sent with `Content-Length`.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: String,
    /// Further header fields.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Content type of every bbot manifest, both ways (PROTOCOLS.md section 3).
pub const MANIFEST_TYPE: &str = "text/manifest";

impl Response {
    /// `status` with a plain-text body (a newline is added).
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Self::typed(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    /// 200 with an HTML page.
    pub fn html(body: String) -> Self {
        Self::typed(200, "text/html; charset=utf-8", body.into_bytes())
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Self::typed(status, "application/json", body)
            }
            Err(e) => Self::text(500, format!("cannot encode JSON: {e}")),
        }
    }

    /// A JSON error object `{"error": message}`.
    pub fn json_error(status: u16, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": message.into(), "status": status }),
        )
    }

    /// 200 with a manifest body.
    pub fn manifest(body: String) -> Self {
        Self::typed(200, MANIFEST_TYPE, body.into_bytes())
    }

    /// `status` with `content_type` and `body`.
    pub fn typed(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: content_type.to_string(),
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// The reason phrase for the status codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the server asks of the application.
pub trait Handler: Send + Sync {
    /// The largest body `head` may carry; a larger one is refused with 413
    /// before any of it is read.
    fn body_limit(&self, head: &RequestHead) -> u64;

    /// Answers a request.
    fn handle(&self, request: Request) -> Response;

    /// Told about a request the server refused itself (413, 400, ...), so
    /// that it shows in metrics and logs. `head` is `None` when the head
    /// itself could not be read.
    fn refused(&self, head: Option<&RequestHead>, status: u16, why: &str) {
        let _ = (head, status, why);
    }
}
