//! Boot phase timing from the events a boot leaves in the log: the DHCP
//! answer (`dhcp-boot`), the iPXE script (`script`), the image's kernel and
//! initrd fetched over HTTP or TFTP (`http-file` / `tftp-file` whose path is
//! the image's kernel or initrd), and the agent's hello (`agent-ready`).
//! Each phase is measured between consecutive marks of the same boot; a
//! mark that is missing (a kexec has no DHCP; a file fetch of an
//! unattributed address) skips its phases rather than guessing.

use crate::control::Control;
use crate::model::{Event, EventKind};
use std::collections::HashMap;

/// Pseudo-phase name for the whole boot.
pub const TOTAL: &str = "total";
/// Boots followed at most (the oldest are forgotten beyond it).
const MAX_TRACKED: usize = 20_000;
/// A boot not finished within this long is forgotten.
const STALE_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    Dhcp,
    Script,
    Kernel,
    Initrd,
}

#[derive(Debug)]
struct Track {
    first_ms: i64,
    last: (Mark, i64),
    kernel: Option<String>,
    initrd: Option<String>,
}

/// Boots in progress, by node id.
#[derive(Default)]
pub struct Boots {
    nodes: HashMap<String, Track>,
}

impl Boots {
    /// Takes one event; returns the phases it completed, in seconds.
    pub async fn observe(&mut self, e: &Event, c: &Control) -> Vec<(&'static str, f64)> {
        let Some(node) = &e.node else {
            return Vec::new();
        };
        let at = e.at_ms;
        let secs = |from: i64| (at - from).max(0) as f64 / 1000.0;
        let mut out = Vec::new();
        match e.kind {
            EventKind::DhcpBoot => {
                self.forget_stale(at);
                // iPXE asks again after the loader: keep the first answer of a boot.
                let restart = self.nodes.get(node).is_none_or(|t| t.last.0 != Mark::Dhcp);
                if restart {
                    self.nodes.insert(
                        node.clone(),
                        Track {
                            first_ms: at,
                            last: (Mark::Dhcp, at),
                            kernel: None,
                            initrd: None,
                        },
                    );
                }
            }
            EventKind::Script => {
                self.forget_stale(at);
                let image = e.detail["image"].as_str().unwrap_or("");
                let (kernel, initrd) = match c.store.image(image).await {
                    Ok(Some(i)) => (i.kernel, i.initrd),
                    _ => (None, None),
                };
                let t = self.nodes.entry(node.clone()).or_insert(Track {
                    first_ms: at,
                    last: (Mark::Script, at),
                    kernel: None,
                    initrd: None,
                });
                if t.last.0 == Mark::Dhcp {
                    out.push(("dhcp_to_script", secs(t.last.1)));
                } else if t.last.0 != Mark::Script {
                    // A script after files: a new boot without DHCP (kexec, retry).
                    t.first_ms = at;
                }
                t.last = (Mark::Script, at);
                t.kernel = kernel;
                t.initrd = initrd;
            }
            EventKind::HttpFile | EventKind::TftpFile => {
                let Some(t) = self.nodes.get_mut(node) else {
                    return out;
                };
                let path = e.detail["path"].as_str().unwrap_or("");
                let path = path.trim_start_matches('/');
                let is = |p: &Option<String>| {
                    p.as_deref().map(|p| p.trim_start_matches('/')) == Some(path)
                };
                if is(&t.kernel) && t.last.0 == Mark::Script {
                    out.push(("script_to_kernel", secs(t.last.1)));
                    t.last = (Mark::Kernel, at);
                } else if is(&t.initrd) && t.last.0 == Mark::Kernel {
                    out.push(("kernel_to_initrd", secs(t.last.1)));
                    t.last = (Mark::Initrd, at);
                }
            }
            EventKind::AgentReady => {
                if let Some(t) = self.nodes.remove(node) {
                    if t.last.0 == Mark::Initrd {
                        out.push(("initrd_to_agent", secs(t.last.1)));
                    }
                    out.push((TOTAL, secs(t.first_ms)));
                }
            }
            _ => {}
        }
        out
    }

    fn forget_stale(&mut self, now: i64) {
        if self.nodes.len() < MAX_TRACKED {
            return;
        }
        self.nodes.retain(|_, t| now - t.last.1 < STALE_MS);
        if self.nodes.len() >= MAX_TRACKED {
            self.nodes.clear();
        }
    }
}
