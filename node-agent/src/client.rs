//! HTTP client for the server's `/api/agent/*` endpoints (`ureq`): plain
//! HTTP, or HTTPS pinned to the server certificate's SHA-256 (`bootsrv.tlspin`,
//! crate `tls-pin`: a self-signed server certificate has no CA to trust, and
//! a node's clock may be wrong at boot), with the node token header and the
//! retry/backoff policy.

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
    /// SHA-256 of the server's certificate, for an `https://` base.
    pin: Option<String>,
}

/// How a call presents the client's token.
#[derive(Debug, Clone, Copy)]
enum Auth {
    /// The node agent's header.
    NodeToken,
    /// `authorization: Bearer` (a failover host's secret).
    Bearer,
    /// A pre-staged boot's one-time hand-off credential.
    Handoff,
}

/// The target and the HTTP agent made for it (TLS settings follow the pin).
#[derive(Clone)]
struct Connection {
    target: Target,
    http: Result<ureq::Agent, String>,
}

impl Connection {
    fn new(target: Target) -> Connection {
        let http = http_agent(&target.base, target.pin.as_deref());
        Connection { target, http }
    }
}

/// An HTTP agent for `base`: plain for `http://`; for `https://` one that
/// trusts only the certificate `pin` names (an error without a pin).
fn http_agent(base: &str, pin: Option<&str>) -> Result<ureq::Agent, String> {
    let builder = ureq::AgentBuilder::new();
    if !base.starts_with("https://") {
        return Ok(builder.build());
    }
    let pin = pin.ok_or_else(|| {
        format!(
            "{base} is HTTPS but no certificate fingerprint is pinned ({}=)",
            boot_proto::cmdline::TLS_PIN
        )
    })?;
    let pin = tls_pin::parse_fingerprint(pin).map_err(|e| e.to_string())?;
    let config = tls_pin::pinned_client_config(&pin).map_err(|e| e.to_string())?;
    Ok(builder.tls_config(Arc::new(config)).build())
}

/// Blocking client bound to one server and token. Clones share the target, so
/// [`Client::set_target`] (after re-reading credentials) switches every thread.
#[derive(Clone)]
pub struct Client {
    conn: Arc<RwLock<Connection>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: its fingerprint only.
        f.debug_struct("Client")
            .field("base", &self.base())
            .field("token", &self.token_fingerprint())
            .finish()
    }
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
        Client::pinned(base, token, None)
    }

    /// A client of `base` that, for an `https://` base, trusts only the
    /// certificate with SHA-256 `pin`.
    pub fn pinned(base: &str, token: &str, pin: Option<&str>) -> Client {
        Client {
            conn: Arc::new(RwLock::new(Connection::new(Target {
                base: base.trim_end_matches('/').to_string(),
                token: token.to_string(),
                pin: pin.map(str::to_string),
            }))),
        }
    }

    fn conn(&self) -> Connection {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn target(&self) -> Target {
        self.conn().target
    }

    /// Base URL currently in use.
    pub fn base(&self) -> String {
        self.target().base
    }

    /// Fingerprint of the token currently in use.
    pub fn token_fingerprint(&self) -> String {
        fingerprint(&self.target().token)
    }

    /// Switches every clone to a new server and token (keeping the pin);
    /// returns whether anything changed.
    pub fn set_target(&self, base: &str, token: &str) -> bool {
        let pin = self.target().pin;
        self.set_endpoint(base, token, pin.as_deref())
    }

    /// Switches every clone to a new server, token and certificate pin;
    /// returns whether anything changed.
    pub fn set_endpoint(&self, base: &str, token: &str, pin: Option<&str>) -> bool {
        let new = Target {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            pin: pin.map(str::to_string),
        };
        let mut c = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if c.target == new {
            return false;
        }
        *c = Connection::new(new);
        true
    }

    /// One call: `method` on `path` with the token, `body` as JSON if any;
    /// the answer's body on 2xx.
    fn call<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: u64,
    ) -> Result<String, CallError> {
        self.call_as(Auth::NodeToken, method, path, body, timeout)
    }

    fn call_as<B: Serialize>(
        &self,
        auth: Auth,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: u64,
    ) -> Result<String, CallError> {
        let Connection { target, http } = self.conn();
        let http = http.map_err(CallError::Transport)?;
        let req = http
            .request(method, &format!("{}{path}", target.base))
            .timeout(Duration::from_secs(timeout));
        let req = match auth {
            Auth::NodeToken => req.set(AGENT_TOKEN_HEADER, &target.token),
            Auth::Bearer => req.set("authorization", &format!("Bearer {}", target.token)),
            Auth::Handoff => req.set(boot_proto::AGENT_HANDOFF_HEADER, &target.token),
        };
        let sent = match body {
            Some(b) => {
                let json = serde_json::to_vec(b).map_err(|e| CallError::Body(e.to_string()))?;
                req.set("content-type", "application/json")
                    .send_bytes(&json)
            }
            None => req.call(),
        };
        match sent {
            Ok(resp) => resp
                .into_string()
                .map_err(|e| CallError::Transport(e.to_string())),
            Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                Err(CallError::Unauthorized(i32::from(code)))
            }
            Err(ureq::Error::Status(code, resp)) => Err(CallError::Status {
                status: i32::from(code),
                body: resp
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
            }),
            Err(ureq::Error::Transport(t)) => Err(CallError::Transport(t.to_string())),
        }
    }

    fn post<B: Serialize>(&self, path: &str, body: &B, timeout: u64) -> Result<String, CallError> {
        self.call("POST", path, Some(body), timeout)
    }

    /// POSTs `body` as JSON with the token as a Bearer credential (a
    /// failover host's secret) and decodes the answer.
    pub fn post_bearer<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: u64,
    ) -> Result<T, CallError> {
        let r = self.call_as(Auth::Bearer, "POST", path, Some(body), timeout)?;
        Self::json(&r)
    }

    fn json<T: DeserializeOwned>(body: &str) -> Result<T, CallError> {
        serde_json::from_str(body).map_err(|e| CallError::Body(e.to_string()))
    }

    /// Exchanges the hand-off credential this client holds (in place of a
    /// token) for the boot's token (`POST /api/agent/handoff`).
    pub fn handoff(&self) -> Result<boot_proto::HandoffReply, CallError> {
        let r = self.call_as::<()>(Auth::Handoff, "POST", "/api/agent/handoff", None, 10)?;
        Self::json(&r)
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
        let path = format!("/api/agent/commands?wait={wait_secs}");
        let r = self.call::<()>("GET", &path, None, wait_secs + 10)?;
        Self::json(&r)
    }

    /// Downloads a URL (kernel/initrd) into memory. No token header: image
    /// URLs may point at any plain HTTP server.
    pub fn download(url: &str, timeout: u64) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let r = ureq::get(url)
            .timeout(Duration::from_secs(timeout))
            .call()
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        if r.status() != 200 {
            anyhow::bail!("GET {url}: HTTP {}", r.status());
        }
        let mut data = Vec::new();
        r.into_reader()
            .read_to_end(&mut data)
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        Ok(data)
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
        assert!(!format!("{a:?}").contains("t2"));
    }

    #[test]
    fn https_needs_a_valid_pin() {
        let e = Client::new("https://x:1", "t")
            .heartbeat(&Heartbeat::default())
            .unwrap_err();
        assert!(e.to_string().contains("no certificate fingerprint"), "{e}");
        let e = Client::pinned("https://x:1", "t", Some("abcd"))
            .heartbeat(&Heartbeat::default())
            .unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
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
