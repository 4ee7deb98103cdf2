//! HTTP client for the server's `/api/agent/*` endpoints (plain HTTP via
//! `minreq`), with the node token header and the retry/backoff policy.

use boot_proto::{Command, CommandResult, Heartbeat, Hello, HelloReply, AGENT_TOKEN_HEADER};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;

/// Why one call failed; every variant is retried by the caller.
#[derive(Debug, Error)]
pub enum CallError {
    /// No HTTP answer (connection refused, timeout, ...); the cause.
    #[error("transport: {0}")]
    Transport(String),
    /// The server refused the token (401/403).
    #[error("unauthorized (HTTP {0}): token rejected")]
    Unauthorized(i32),
    /// Any other non-success answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The HTTP status code.
        status: i32,
        /// The answer's body (the server's error text).
        body: String,
    },
    /// The answer's body did not decode; the cause.
    #[error("bad reply body: {0}")]
    Body(String),
}

impl CallError {
    /// A client error the server will repeat however often we retry (e.g. 404
    /// for a result about a command it no longer knows). 401/403 are not
    /// permanent: the token may become valid (or the server may restart).
    pub fn is_permanent(&self) -> bool {
        matches!(self, CallError::Status { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// Exponential backoff: 100 ms doubling to 5 s, with +-25% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Backoff {
            next_ms: 100,
            rng: seed | 1,
        }
    }
}

impl Backoff {
    /// First delay after a failure, in milliseconds.
    pub const MIN_MS: u64 = 100;
    /// Cap on the delay, in milliseconds.
    pub const MAX_MS: u64 = 5000;

    /// The next delay to sleep; doubles the following one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter only, no need for a crypto RNG.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next_ms;
        let spread = base / 4;
        let jitter = if spread == 0 {
            0
        } else {
            self.rng % (2 * spread + 1)
        };
        self.next_ms = (self.next_ms * 2).min(Self::MAX_MS);
        Duration::from_millis(base - spread + jitter)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next_ms = Self::MIN_MS;
    }
}

/// Where the agent talks to and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    base: String,
    token: String,
}

/// Blocking client bound to one server and token. Clones share the target, so
/// [`Client::set_target`] (after re-reading credentials) switches every thread.
#[derive(Debug, Clone)]
pub struct Client {
    target: Arc<RwLock<Target>>,
}

/// Short, non-reversible fingerprint of a token for logs (never log the token).
pub fn fingerprint(token: &str) -> String {
    // FNV-1a 64: enough to tell two tokens apart in a log line.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

impl Client {
    /// A client of the server at `base` (e.g. `http://10.0.0.1:8080`) using agent token `token`.
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            target: Arc::new(RwLock::new(Target {
                base: base.trim_end_matches('/').to_string(),
                token: token.to_string(),
            })),
        }
    }

    fn target(&self) -> Target {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Base URL currently in use.
    pub fn base(&self) -> String {
        self.target().base
    }

    /// Fingerprint of the token currently in use.
    pub fn token_fingerprint(&self) -> String {
        fingerprint(&self.target().token)
    }

    /// Switches every clone to a new server and token; returns whether anything changed.
    pub fn set_target(&self, base: &str, token: &str) -> bool {
        let new = Target {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        };
        let mut t = self.target.write().unwrap_or_else(|p| p.into_inner());
        if *t == new {
            return false;
        }
        *t = new;
        true
    }

    fn send(&self, req: minreq::Request) -> Result<minreq::Response, CallError> {
        let token = self.target().token;
        let resp = req
            .with_header(AGENT_TOKEN_HEADER, &token)
            .send()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        match resp.status_code {
            200..=299 => Ok(resp),
            401 | 403 => Err(CallError::Unauthorized(resp.status_code)),
            s => Err(CallError::Status {
                status: s,
                body: resp.as_str().unwrap_or("").chars().take(200).collect(),
            }),
        }
    }

    fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        timeout: u64,
    ) -> Result<minreq::Response, CallError> {
        let req = minreq::post(format!("{}{path}", self.base()))
            .with_timeout(timeout)
            .with_json(body)
            .map_err(|e| CallError::Body(e.to_string()))?;
        self.send(req)
    }

    fn json<T: DeserializeOwned>(resp: &minreq::Response) -> Result<T, CallError> {
        serde_json::from_slice(resp.as_bytes()).map_err(|e| CallError::Body(e.to_string()))
    }

    /// Announces the node (`POST /api/agent/hello`); the reply names it.
    pub fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        let r = self.post("/api/agent/hello", h, 10)?;
        Self::json(&r)
    }

    /// Sends a heartbeat (`POST /api/agent/heartbeat`).
    pub fn heartbeat(&self, h: &Heartbeat) -> Result<(), CallError> {
        self.post("/api/agent/heartbeat", h, 10).map(|_| ())
    }

    /// Reports on a command (`POST /api/agent/results`).
    pub fn result(&self, r: &CommandResult) -> Result<(), CallError> {
        self.post("/api/agent/results", r, 10).map(|_| ())
    }

    /// Long poll; the HTTP timeout is the wait plus a margin.
    pub fn commands(&self, wait_secs: u64) -> Result<Vec<Command>, CallError> {
        let req = minreq::get(format!(
            "{}/api/agent/commands?wait={wait_secs}",
            self.base()
        ))
        .with_timeout(wait_secs + 10);
        let r = self.send(req)?;
        Self::json(&r)
    }

    /// Downloads a URL (kernel/initrd) into memory. No token header: image
    /// URLs may point at any plain HTTP server.
    pub fn download(url: &str, timeout: u64) -> anyhow::Result<Vec<u8>> {
        let r = minreq::get(url)
            .with_timeout(timeout)
            .send()
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        if r.status_code != 200 {
            anyhow::bail!("GET {url}: HTTP {}", r.status_code);
        }
        Ok(r.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors() {
        let st = |status| CallError::Status {
            status,
            body: String::new(),
        };
        assert!(st(404).is_permanent());
        assert!(st(400).is_permanent());
        assert!(!st(429).is_permanent());
        assert!(!st(500).is_permanent());
        assert!(!CallError::Unauthorized(401).is_permanent());
        assert!(!CallError::Transport("refused".into()).is_permanent());
    }

    #[test]
    fn clones_share_the_target_and_fingerprints_hide_tokens() {
        let a = Client::new("http://x:1/", "t1");
        let b = a.clone();
        assert!(b.set_target("http://y:2", "t2"));
        assert!(!a.set_target("http://y:2/", "t2"));
        assert_eq!(a.base(), "http://y:2");
        assert_eq!(a.token_fingerprint(), fingerprint("t2"));
        assert_ne!(fingerprint("t1"), fingerprint("t2"));
        assert!(!fingerprint("secret-token").contains("secret"));
    }

    #[test]
    fn backoff_doubles_to_cap_with_jitter() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!((75..=125).contains(&d[0]), "{d:?}");
        assert!((150..=250).contains(&d[1]), "{d:?}");
        assert!(d[9] <= 6250 && d[9] >= 3750, "{d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 125);
    }
}
