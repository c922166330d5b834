//! Delivering results: every result goes into the spool first, then is
//! uploaded (with retries, backoff, and `rejected/` for a permanent
//! refusal), so that no result is lost to a controller that is down; and
//! the challenge is answered with `--auth-key`.

use manifests::{Document, ResultManifest, ResultRequestManifest};

use super::Agent;
use crate::control::auth::AgentKey;
use crate::control::controller::Received;
use crate::control::spool::Spooled;

impl Agent<'_> {
    /// Spools the result, then tries to upload it right away.
    pub(super) fn upload(&self, received: &Received, result: ResultManifest) {
        let resp = &received.response;
        let Some(url) = &resp.result_url else {
            tracing::warn!(
                "task from {} has no result-url; result not uploaded",
                received.controller
            );
            return;
        };
        let req = ResultRequestManifest {
            session: resp.session.clone(),
            challenge: answer_challenge(resp.challenge.as_deref(), self.cfg.auth.as_deref()),
            agent_checksum: None,
            result,
            extra: Vec::new(),
        };
        let spooled = match &self.spool {
            Some(spool) => spool.add(url, &req).map_err(|e| e.to_string()),
            None => Err("no spool (dump mode)".to_string()),
        };
        match spooled {
            Ok(entry) if self.signals.stop_requested() => {
                // Stopping: deliver this result only, once; older ones wait
                // for the next start, so that a dead controller cannot stall
                // the stop.
                self.deliver(&entry, false);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                // Cannot keep it: try once anyway rather than drop it silently.
                tracing::error!("cannot spool result of session {}: {e}", resp.session);
                match req.to_text() {
                    Ok(body) => match self.client.upload_result_once(url, &body) {
                        Ok(()) => tracing::info!("unspooled result delivered to {url}"),
                        Err(e) => tracing::error!(
                            "result upload to {url} failed and it could not be spooled; \
                             result of session {} LOST: {e}",
                            resp.session
                        ),
                    },
                    Err(e) => tracing::error!("result of session {} LOST: {e}", resp.session),
                }
                return;
            }
        }
        self.deliver_spooled();
    }

    /// Tries to upload every spooled result whose backoff has run out;
    /// keeps those that fail.
    pub(super) fn deliver_spooled(&self) {
        let Some(spool) = &self.spool else {
            return;
        };
        let due = match spool.due() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        for s in due {
            if self.signals.stop_requested() {
                return;
            }
            self.deliver(&s, true);
        }
    }

    /// Uploads one spooled result (with retries when `retry`); removes it
    /// from the spool once delivered, moves it to `rejected/` when the
    /// controller refuses it for good, and otherwise backs off.
    fn deliver(&self, s: &Spooled, retry: bool) {
        let Some(spool) = &self.spool else {
            return;
        };
        self.notifier.status("uploading results");
        let r = if retry {
            self.client
                .upload_result(&s.url, &s.body, &self.signals.stop_token())
        } else {
            self.client.upload_result_once(&s.url, &s.body)
        };
        match r {
            Ok(()) => {
                tracing::info!("result delivered to {}", s.url.escape_debug());
                if let Err(e) = spool.remove(s) {
                    tracing::error!("{e}");
                }
            }
            Err(e) if e.is_permanent_refusal() => match spool.reject(s, &e.to_string()) {
                Ok(to) => tracing::error!(
                    "result upload to {} refused for good ({e}); not retried, kept in {}",
                    s.url.escape_debug(),
                    to.display()
                ),
                Err(moved) => tracing::error!(
                    "result upload to {} refused for good ({e}), and it cannot be moved \
                     aside ({moved}); kept in {}",
                    s.url.escape_debug(),
                    s.path.display()
                ),
            },
            Err(e) => {
                let again = spool.failed(s);
                tracing::error!(
                    "result upload to {} failed (kept in {}, next try in {}s): {e}",
                    s.url.escape_debug(),
                    s.path.display(),
                    again.as_secs()
                );
            }
        }
    }
}

/// The result request's `challenge` for a task's challenge: signed with
/// `--auth-key`; without a key (or when signing fails) none, with a warning,
/// so that a controller that does not insist still gets the result.
pub fn answer_challenge(challenge: Option<&str>, key: Option<&AgentKey>) -> Option<String> {
    let challenge = challenge?;
    let Some(key) = key else {
        tracing::warn!("controller sent an authentication challenge but there is no --auth-key; uploading unsigned");
        return None;
    };
    match key.sign_challenge(challenge) {
        Ok(sig) => Some(sig),
        Err(e) => {
            tracing::error!("{e}; uploading unsigned");
            None
        }
    }
}
