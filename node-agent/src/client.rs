//! HTTP client for the server's `/api/agent/*` endpoints (`ureq`): plain
//! HTTP, or HTTPS pinned to the server certificate's SHA-256 (`bootsrv.tlspin`,
//! crate `tls-pin`: a self-signed server certificate has no CA to trust, and
//! a node's clock may be wrong at boot), with the node token header and the
//! retry/backoff policy.
//!
//! Several servers: the configured one (`bootsrv.server=`) comes first; the
//! others are learned from the servers' hello and heartbeat answers (kept in
//! the state directory). A call that gets no HTTP answer from the current
//! server goes on with the next; the configured one is tried again every
//! [`PRIMARY_RETRY`]. Behind an `https://` server only pinned `https://`
//! servers are taken, so the fallback keeps the TLS guarantee.

use boot_proto::{
    Command, CommandResult, Heartbeat, HeartbeatReply, Hello, HelloReply, AGENT_TOKEN_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};

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

/// One server the agent may talk to: its base URL and, for `https://`,
/// the SHA-256 of the certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    base: String,
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

/// An endpoint and the HTTP agent made for it (TLS settings follow the pin).
#[derive(Clone)]
struct Connection {
    endpoint: Endpoint,
    http: Result<ureq::Agent, String>,
}

impl Connection {
    fn new(endpoint: Endpoint) -> Connection {
        let http = http_agent(&endpoint.base, endpoint.pin.as_deref());
        Connection { endpoint, http }
    }
}

/// How long a connection attempt may take before the next server is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// While the agent talks to another server, how often it tries its own
/// (the configured one) again first.
pub const PRIMARY_RETRY: Duration = Duration::from_secs(10);

/// An HTTP agent for `base`: plain for `http://`; for `https://` one that
/// trusts only the certificate `pin` names (an error without a pin).
fn http_agent(base: &str, pin: Option<&str>) -> Result<ureq::Agent, String> {
    let builder = ureq::AgentBuilder::new().timeout_connect(CONNECT_TIMEOUT);
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

/// The servers of one client: the configured one first (`servers[0]`,
/// from the kernel command line or credentials), then the others a server
/// listed; calls go to `current` and move on to the next when a server does
/// not answer.
struct Servers {
    token: String,
    servers: Vec<Connection>,
    current: usize,
    /// When the configured server was last tried while another was current.
    primary_tried: Instant,
    /// How often that is ([`PRIMARY_RETRY`]; tests shorten it).
    primary_retry: Duration,
    /// Where the learned list is kept (one line per server, `URL [PIN]`).
    file: Option<PathBuf>,
}

impl Servers {
    fn primary(&self) -> &Endpoint {
        &self.servers[0].endpoint
    }

    /// The order of this call's attempts: the current server (the
    /// configured one first when it is due for a retry), then the others.
    fn order(&mut self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.servers.len());
        if self.current != 0 && self.primary_tried.elapsed() >= self.primary_retry {
            self.primary_tried = Instant::now();
            order.push(0);
        }
        order.push(self.current);
        let rest: Vec<usize> = (0..self.servers.len())
            .filter(|i| !order.contains(i))
            .collect();
        order.extend(rest);
        order
    }

    /// Whether a server another one lists keeps the guarantee the
    /// configured one gives: behind an `https://` server only pinned
    /// `https://` servers (the token never travels in the clear, and only
    /// to a certificate a trusted server vouched for).
    fn acceptable(&self, e: &Endpoint) -> bool {
        if self.primary().base.starts_with("https://") {
            e.base.starts_with("https://") && e.pin.is_some()
        } else {
            e.base.starts_with("http://") || (e.base.starts_with("https://") && e.pin.is_some())
        }
    }

    /// Replaces the learned servers with `list` (the configured one stays
    /// first); true when the list changed.
    fn learn(&mut self, list: Vec<Endpoint>) -> bool {
        let current = self.servers[self.current].endpoint.clone();
        let mut learned: Vec<Endpoint> = Vec::new();
        for e in list {
            if e.base == self.primary().base || learned.iter().any(|l| l.base == e.base) {
                continue;
            }
            if !self.acceptable(&e) {
                warn!(server = %e.base, "listed server ignored: it would weaken the configured server's TLS guarantee");
                continue;
            }
            learned.push(e);
        }
        let old: Vec<&Endpoint> = self.servers[1..].iter().map(|c| &c.endpoint).collect();
        if old.len() == learned.len() && old.iter().zip(&learned).all(|(a, b)| *a == b) {
            return false;
        }
        self.servers.truncate(1);
        self.servers
            .extend(learned.into_iter().map(Connection::new));
        self.current = self
            .servers
            .iter()
            .position(|c| c.endpoint == current)
            .unwrap_or(0);
        self.save();
        true
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let body: String = self.servers[1..]
            .iter()
            .map(|c| match &c.endpoint.pin {
                Some(p) => format!("{} {p}\n", c.endpoint.base),
                None => format!("{}\n", c.endpoint.base),
            })
            .collect();
        let tmp = path.with_extension("tmp");
        let r = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            warn!(file = %path.display(), error = %e, "cannot keep the server list");
        }
    }
}

/// Parses a kept server list (`URL [PIN]` per line).
fn parse_list(text: &str) -> Vec<Endpoint> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let base = w.next()?.trim_end_matches('/').to_string();
            Some(Endpoint {
                base,
                pin: w.next().map(str::to_string),
            })
        })
        .collect()
}

/// Blocking client of the boot servers with one token. Clones share the
/// servers, so [`Client::set_endpoint`] (after re-reading credentials) and a
/// move to another server switch every thread.
#[derive(Clone)]
pub struct Client {
    inner: Arc<RwLock<Servers>>,
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
            inner: Arc::new(RwLock::new(Servers {
                token: token.to_string(),
                servers: vec![Connection::new(Endpoint {
                    base: base.trim_end_matches('/').to_string(),
                    pin: pin.map(str::to_string),
                })],
                current: 0,
                primary_tried: Instant::now(),
                primary_retry: PRIMARY_RETRY,
                file: None,
            })),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Servers> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Servers> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the list of other servers in `path` (the agent's state
    /// directory) and reads back what an earlier agent process of this
    /// boot kept there.
    pub fn keep_servers_in(&self, path: PathBuf) {
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        let mut s = self.write();
        s.file = Some(path);
        let list = parse_list(&kept);
        if !list.is_empty() && s.learn(list) {
            info!(servers = s.servers.len(), "server list restored");
        }
    }

    /// Takes the servers a server listed as the ones to go on with.
    pub fn learn_servers(&self, list: &[boot_proto::AgentServer]) {
        if list.is_empty() {
            return;
        }
        let list = list
            .iter()
            .map(|a| Endpoint {
                base: a.url.trim_end_matches('/').to_string(),
                pin: a.pin.clone(),
            })
            .collect();
        let mut s = self.write();
        if s.learn(list) {
            let all: Vec<&str> = s.servers.iter().map(|c| c.endpoint.base.as_str()).collect();
            info!(servers = ?all, "server list changed");
        }
    }

    /// Every server this client may use: the configured one first.
    pub fn servers(&self) -> Vec<String> {
        self.read()
            .servers
            .iter()
            .map(|c| c.endpoint.base.clone())
            .collect()
    }

    /// Base URL currently in use.
    pub fn base(&self) -> String {
        let s = self.read();
        s.servers[s.current].endpoint.base.clone()
    }

    /// Fingerprint of the token currently in use.
    pub fn token_fingerprint(&self) -> String {
        fingerprint(&self.read().token)
    }

    /// Switches every clone to a new server and token (keeping the pin);
    /// returns whether anything changed.
    pub fn set_target(&self, base: &str, token: &str) -> bool {
        let pin = self.read().primary().pin.clone();
        self.set_endpoint(base, token, pin.as_deref())
    }

    /// Switches every clone to a new configured server, token and
    /// certificate pin; returns whether anything changed. The learned
    /// servers stay (the token is valid on every server of one store), and
    /// a move to another of them is not undone.
    pub fn set_endpoint(&self, base: &str, token: &str, pin: Option<&str>) -> bool {
        let new = Endpoint {
            base: base.trim_end_matches('/').to_string(),
            pin: pin.map(str::to_string),
        };
        let mut s = self.write();
        let mut changed = false;
        if s.token != token {
            s.token = token.to_string();
            changed = true;
        }
        if *s.primary() != new {
            s.servers[0] = Connection::new(new);
            s.current = 0;
            // A learned server that the new configuration would not trust goes.
            let keep: Vec<Connection> = s.servers[1..]
                .iter()
                .filter(|c| s.acceptable(&c.endpoint) && c.endpoint.base != s.primary().base)
                .cloned()
                .collect();
            s.servers.truncate(1);
            s.servers.extend(keep);
            changed = true;
        }
        changed
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

    /// [`Client::call_as`] with the current server first: a server that
    /// does not answer (no HTTP reply at all) passes the call to the next
    /// one, and the first that answers becomes the current one.
    fn call_as<B: Serialize>(
        &self,
        auth: Auth,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: u64,
    ) -> Result<String, CallError> {
        let (order, current) = {
            let mut s = self.write();
            (s.order(), s.current)
        };
        let mut first_error = None;
        for i in order {
            let (conn, token) = {
                let s = self.read();
                match s.servers.get(i) {
                    Some(c) => (c.clone(), s.token.clone()),
                    None => continue,
                }
            };
            match Self::call_one(&conn, &token, auth, method, path, body, timeout) {
                Err(e @ CallError::Transport(_)) => {
                    if i == current {
                        warn!(server = %conn.endpoint.base, error = %e, "server not answering");
                    }
                    first_error.get_or_insert(e);
                }
                answered => {
                    if i != current {
                        let mut s = self.write();
                        // Unless another thread moved meanwhile.
                        if s.current == current
                            && s.servers
                                .get(i)
                                .is_some_and(|c| c.endpoint == conn.endpoint)
                        {
                            s.current = i;
                            if i == 0 {
                                info!(server = %conn.endpoint.base, "back with the configured server");
                            } else {
                                warn!(server = %conn.endpoint.base, "going on with another server");
                            }
                        }
                    }
                    return answered;
                }
            }
        }
        Err(first_error.unwrap_or_else(|| CallError::Transport("no server".into())))
    }

    fn call_one<B: Serialize>(
        conn: &Connection,
        token: &str,
        auth: Auth,
        method: &str,
        path: &str,
        body: Option<&B>,
        timeout: u64,
    ) -> Result<String, CallError> {
        let http = conn.http.clone().map_err(CallError::Transport)?;
        let req = http
            .request(method, &format!("{}{path}", conn.endpoint.base))
            .timeout(Duration::from_secs(timeout));
        let req = match auth {
            Auth::NodeToken => req.set(AGENT_TOKEN_HEADER, token),
            Auth::Bearer => req.set("authorization", &format!("Bearer {token}")),
            Auth::Handoff => req.set(boot_proto::AGENT_HANDOFF_HEADER, token),
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

    /// Announces the node (`POST /api/agent/hello`); the reply names it
    /// and lists the servers to go on with.
    pub fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        let r = self.post("/api/agent/hello", h, 10)?;
        let reply: HelloReply = Self::json(&r)?;
        self.learn_servers(&reply.servers);
        Ok(reply)
    }

    /// Sends a heartbeat (`POST /api/agent/heartbeat`); the servers its
    /// answer lists (a body an older server does not send) are learned.
    pub fn heartbeat(&self, h: &Heartbeat) -> Result<(), CallError> {
        let r = self.post("/api/agent/heartbeat", h, 10)?;
        if !r.trim().is_empty() {
            match serde_json::from_str::<HeartbeatReply>(&r) {
                Ok(reply) => self.learn_servers(&reply.servers),
                Err(e) => warn!(error = %e, "heartbeat answer not understood"),
            }
        }
        Ok(())
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

    /// A one-thread HTTP server answering every request with `body` (200,
    /// JSON) and counting them; dropped with its listener.
    fn answering(body: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut b = vec![0; len];
                let _ = r.read_exact(&mut b);
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (base, hits)
    }

    /// An address nothing listens on (bound, then closed: refused).
    fn dead() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    #[test]
    fn a_call_goes_on_with_a_listed_server_and_back_to_its_own() {
        let (other, other_hits) = answering("{}");
        let primary = dead();
        let dir = tempfile::tempdir().unwrap();
        let c = Client::new(&primary, "t");
        c.keep_servers_in(dir.path().join("servers"));
        c.learn_servers(&[boot_proto::AgentServer {
            url: other.clone(),
            pin: None,
        }]);
        assert_eq!(c.servers(), vec![primary.clone(), other.clone()]);
        // Kept for a later agent process of this boot.
        let again = Client::new(&primary, "t");
        again.keep_servers_in(dir.path().join("servers"));
        assert_eq!(again.servers(), c.servers());
        // The configured server refuses: the call is answered by the other.
        c.heartbeat(&Heartbeat::default()).unwrap();
        assert_eq!(c.base(), other);
        assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // New credentials (same server) do not undo the move.
        assert!(c.set_endpoint(&primary, "t2", None));
        assert_eq!(c.base(), other);
        // A configured server that answers again is tried first once due
        // (a new one here: the refused port cannot be taken back reliably).
        let (back, back_hits) = answering("{}");
        c.set_endpoint(&back, "t2", None);
        assert_eq!(c.base(), back, "a new configured server is used at once");
        assert_eq!(c.servers(), vec![back.clone(), other.clone()]);
        c.write().current = 1;
        c.write().primary_retry = Duration::ZERO;
        c.heartbeat(&Heartbeat::default()).unwrap();
        assert_eq!(c.base(), back, "back with the configured server");
        assert_eq!(back_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nobody answers: the first error is the current server's.
        let none = Client::new(&dead(), "t");
        none.learn_servers(&[boot_proto::AgentServer {
            url: dead(),
            pin: None,
        }]);
        assert!(matches!(
            none.heartbeat(&Heartbeat::default()),
            Err(CallError::Transport(_))
        ));
    }

    #[test]
    fn heartbeat_answers_teach_the_server_list() {
        let (other, _) = answering("{}");
        let body: &'static str = Box::leak(
            format!(r#"{{"servers":[{{"url":"{other}"}},{{"url":"http://10.9.9.9:1/"}}]}}"#)
                .into_boxed_str(),
        );
        let (me, _) = answering(body);
        let c = Client::new(&me, "t");
        c.heartbeat(&Heartbeat::default()).unwrap();
        assert_eq!(
            c.servers(),
            vec![me, other, "http://10.9.9.9:1".to_string()]
        );
    }

    #[test]
    fn behind_tls_only_pinned_tls_servers_are_taken() {
        let pin = "ab".repeat(32);
        let c = Client::pinned("https://10.0.0.1:8443", "t", Some(&pin));
        c.learn_servers(&[
            boot_proto::AgentServer {
                url: "http://10.0.0.2:8080".into(),
                pin: None,
            },
            boot_proto::AgentServer {
                url: "https://10.0.0.3:8443".into(),
                pin: None,
            },
            boot_proto::AgentServer {
                url: "https://10.0.0.4:8443".into(),
                pin: Some(pin.clone()),
            },
        ]);
        assert_eq!(
            c.servers(),
            vec![
                "https://10.0.0.1:8443".to_string(),
                "https://10.0.0.4:8443".to_string()
            ]
        );
        // Plain HTTP configured: a pinned TLS server may be listed too.
        let p = Client::new("http://10.0.0.1:8080", "t");
        p.learn_servers(&[
            boot_proto::AgentServer {
                url: "https://10.0.0.3:8443".into(),
                pin: None,
            },
            boot_proto::AgentServer {
                url: "https://10.0.0.4:8443".into(),
                pin: Some(pin),
            },
        ]);
        assert_eq!(p.servers().len(), 2);
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
