//! The CLI's HTTP client for the admin API: over the server's Unix socket
//! (`<state_dir>/admin.sock`, no token) or over TCP (`--server URL` with a
//! token). One connection per request (hyper's HTTP/1 client connection);
//! uploads stream from the file with a progress bar on a terminal.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The admin Unix socket.
    Socket(PathBuf),
    /// `http://host:port` (or `https://` with `tls`) with a token.
    Tcp {
        /// `host:port` of the server.
        authority: String,
        /// The token.
        token: String,
        /// TLS, and how the server's certificate is trusted.
        tls: Option<TlsTarget>,
    },
}

/// A TLS connection's configuration and the name its certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.name)
    }
}

impl TlsTarget {
    /// TLS to `authority` (`host:port`), trusting its certificate as `trust` says.
    pub fn new(authority: &str, trust: &crate::tls::Trust) -> Result<TlsTarget> {
        let host = match authority.rsplit_once(':') {
            Some((h, _)) => h,
            None => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("{host:?} is not a host name or address"))?;
        Ok(TlsTarget {
            connector: tokio_rustls::TlsConnector::from(crate::tls::client_config(trust)?),
            name,
        })
    }
}

/// An error the server answered (`{"code", "message"}`), or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status of the answer.
        status: StatusCode,
        /// Machine-readable error code (`not-found`, `conflict`, ...).
        code: String,
        /// Human-readable message.
        message: String,
    },
    /// No answer (connection failed); the cause.
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    /// The CLI exit code: 3 not found, 4 unauthorised, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Api { status, .. } if *status == StatusCode::NOT_FOUND => 3,
            CallError::Api { status, .. }
                if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN =>
            {
                4
            }
            _ => 1,
        }
    }
}

/// A client bound to one endpoint.
pub struct Client {
    endpoint: Endpoint,
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl Client {
    /// A client of the server at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let resp = self.request(method, path, body, content_type).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok((status, bytes));
        }
        Err(api_error(status, &bytes))
    }

    /// Sends a request and returns the answer with its body unread.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CallError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::CONTENT_TYPE, content_type);
        let (host, stream): (String, Box<dyn IoStream>) = match &self.endpoint {
            Endpoint::Socket(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                    CallError::Transport(format!(
                        "no boot-server is answering on {} ({e}); start it with `boot-server serve`, \
                         or reach a remote one with --server URL (or BOOT_SERVER_URL)",
                        p.display()
                    ))
                })?;
                ("localhost".to_string(), Box::new(s))
            }
            Endpoint::Tcp {
                authority,
                token,
                tls,
            } => {
                let s = tokio::net::TcpStream::connect(authority)
                    .await
                    .map_err(|e| {
                        CallError::Transport(format!(
                            "cannot reach boot-server at {authority}: {e}"
                        ))
                    })?;
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
                let stream: Box<dyn IoStream> = match tls {
                    None => Box::new(s),
                    Some(t) => {
                        Box::new(t.connector.connect(t.name.clone(), s).await.map_err(|e| {
                            CallError::Transport(format!(
                                "TLS with boot-server at {authority}: {e}"
                            ))
                        })?)
                    }
                };
                (authority.clone(), stream)
            }
        };
        let req = req
            .header(hyper::header::HOST, host)
            .body(body)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Transport(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Transport(format!("request failed: {e}")))
    }

    /// GET `path` and write its body to `out` as it arrives, with `progress`
    /// told of every piece; the number of bytes written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
        progress: &dyn Fn(u64, Option<u64>),
    ) -> Result<u64, CallError> {
        use tokio::io::AsyncWriteExt;
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let resp = self
            .request(Method::GET, path, empty, "application/json")
            .await?;
        let status = resp.status();
        let hint = resp
            .headers()
            .get("x-bundle-raw-bytes")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                CallError::Transport(format!(
                    "the server broke off the transfer after {n} bytes: {e} (see its log)"
                ))
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .map_err(|e| CallError::Transport(format!("writing: {e}")))?;
                n += data.len() as u64;
                progress(n, hint);
            }
        }
        out.flush()
            .await
            .map_err(|e| CallError::Transport(format!("writing: {e}")))?;
        Ok(n)
    }

    /// Streams `input` as the body of a request (`len` for progress when
    /// known) and returns the JSON answer; `progress` is told of every piece.
    pub async fn upload_stream(
        &self,
        method: Method,
        path: &str,
        input: impl tokio::io::AsyncRead + Send + Sync + 'static,
        content_type: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<serde_json::Value, CallError> {
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream =
            tokio_util::io::ReaderStream::with_capacity(input, 256 * 1024).map(move |chunk| {
                chunk.map(|c| {
                    let n = sent.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed)
                        + c.len() as u64;
                    progress(n);
                    Frame::data(c)
                })
            });
        let body = BodyExt::boxed(StreamBody::new(stream));
        let (_, bytes) = self.send(method, path, body, content_type).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Transport(format!("bad answer from the server: {e}")))
    }

    /// A JSON request (or none) and a JSON answer (`null` for an empty one).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let full = Full::new(Bytes::from(data))
            .map_err(|never| match never {})
            .boxed();
        let (_, bytes) = self.send(method, path, full, "application/json").await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Transport(format!("bad answer from the server: {e}")))
    }

    /// GET returning raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, CallError> {
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        Ok(self
            .send(Method::GET, path, empty, "application/json")
            .await?
            .1)
    }

    /// Streams a local file as the body of a PUT, with a progress bar on a terminal.
    pub async fn upload(&self, path: &str, file: &Path) -> Result<serde_json::Value> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().await?.len();
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(
            file.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("upload")
                .to_string(),
        );
        let b = bar.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map(move |chunk| {
            chunk.map(|c| {
                b.inc(c.len() as u64);
                Frame::data(c)
            })
        });
        let body = BodyExt::boxed(StreamBody::new(stream));
        let result = self
            .send(Method::PUT, path, body, "application/octet-stream")
            .await;
        bar.finish_and_clear();
        let (_, bytes) = result.map_err(|e| anyhow!(e))?;
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }
}

/// The API's error shape (`{"code", "message"}`) of a failed answer.
fn api_error(status: StatusCode, bytes: &[u8]) -> CallError {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    CallError::Api {
        status,
        code: v["code"].as_str().unwrap_or("error").to_string(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(bytes).trim())),
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> IoStream for T {}
