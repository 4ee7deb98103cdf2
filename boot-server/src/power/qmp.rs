//! The QEMU power driver: QMP over the guest's monitor socket. "Off" stops
//! the virtual CPUs (the guest can neither run nor write: a fence); a socket
//! nobody listens on means the QEMU process is gone, which is off too. "On"
//! resumes (after a reset when the guest had shut down); "cycle" resets.
//! "pxe" is accepted and does nothing: lab guests boot from the network.

use super::{PowerAction, PowerDriver, PowerState};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A guest's QMP socket.
pub struct Qmp {
    path: PathBuf,
    timeout: Duration,
}

/// An open QMP session (capabilities negotiated).
struct Session {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Session {
    async fn execute(&mut self, command: &str) -> Result<Value> {
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            let reply = self.read().await?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!("QMP {command}: {}", e["desc"].as_str().unwrap_or("error"));
            }
            // An asynchronous event: not our answer.
        }
    }

    async fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            bail!("QMP socket closed");
        }
        serde_json::from_str(&line).context("QMP sent something that is not JSON")
    }
}

impl Qmp {
    /// The driver for the monitor socket at `path`.
    pub fn new(path: PathBuf, timeout: Duration) -> Qmp {
        Qmp { path, timeout }
    }

    /// A session, or None when no QEMU listens on the socket (it is gone).
    async fn connect(&self) -> Result<Option<Session>> {
        let stream = match UnixStream::connect(&self.path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("QMP {}", self.path.display())),
        };
        let (r, w) = stream.into_split();
        let mut s = Session {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = s.read().await?;
        if greeting.get("QMP").is_none() {
            bail!("{} is not a QMP socket", self.path.display());
        }
        s.execute("qmp_capabilities").await?;
        Ok(Some(s))
    }

    async fn within<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| {
            anyhow!(
                "QMP {}: no answer within {:?}",
                self.path.display(),
                self.timeout
            )
        })?
    }
}

#[async_trait::async_trait]
impl PowerDriver for Qmp {
    async fn status(&self) -> Result<PowerState> {
        self.within(async {
            let Some(mut s) = self.connect().await? else {
                return Ok(PowerState::Off);
            };
            let st = s.execute("query-status").await?;
            Ok(if st["running"].as_bool() == Some(true) {
                PowerState::On
            } else {
                PowerState::Off
            })
        })
        .await
    }

    async fn act(&self, action: PowerAction) -> Result<()> {
        self.within(async {
            let Some(mut s) = self.connect().await? else {
                return match action {
                    PowerAction::Off => Ok(()),
                    _ => bail!(
                        "QEMU is not running ({} has no listener)",
                        self.path.display()
                    ),
                };
            };
            match action {
                PowerAction::Off => {
                    s.execute("stop").await?;
                }
                PowerAction::On => {
                    let st = s.execute("query-status").await?;
                    if st["status"].as_str() == Some("shutdown") {
                        s.execute("system_reset").await?;
                    }
                    s.execute("cont").await?;
                }
                PowerAction::Cycle => {
                    s.execute("system_reset").await?;
                    s.execute("cont").await?;
                }
                PowerAction::Pxe => {}
            }
            Ok(())
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "qmp"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::{require, Need};

    /// Against a real QEMU with no machine: stop, resume, and a killed
    /// process read as off.
    #[tokio::test]
    async fn qemu_stops_resumes_and_reads_off_when_gone() {
        if !require(
            "qemu_stops_resumes_and_reads_off_when_gone",
            &[Need::Tool("qemu-system-x86_64")],
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("g.qmp");
        let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
            .args(["-M", "none", "-display", "none", "-nodefaults", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "QEMU made no QMP socket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d = Qmp::new(sock.clone(), Duration::from_secs(5));
        assert_eq!(d.status().await.unwrap(), PowerState::On);
        d.act(PowerAction::Off).await.unwrap();
        assert_eq!(d.status().await.unwrap(), PowerState::Off);
        d.act(PowerAction::On).await.unwrap();
        assert_eq!(d.status().await.unwrap(), PowerState::On);
        qemu.kill().await.unwrap();
        qemu.wait().await.unwrap();
        assert_eq!(d.status().await.unwrap(), PowerState::Off);
        assert!(d.act(PowerAction::On).await.is_err());
    }
}
