//! Glue between the protocol crates' small traits and the boot server's
//! plan and store: the DHCP crate asks [`DhcpBackend`] for boot answers and
//! durable leases; the TFTP crate reports transfers to [`TftpEvents`].

use crate::plan::{BootPlan, DhcpFacts, Firmware};
use crate::store::{format_mac, parse_mac, Lease, Store};
use async_trait::async_trait;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct DhcpBackend {
    pub plan: Arc<BootPlan>,
    pub store: Arc<dyn Store>,
}

#[async_trait]
impl boot_dhcp::BootAdvisor for DhcpBackend {
    async fn client_config(&self, facts: &boot_dhcp::ClientFacts) -> boot_dhcp::ClientConfig {
        // TODO(lead): per-client fixed address / hostname / options from the plan.
        boot_dhcp::ClientConfig {
            boot: self.boot_answer(facts).await,
            ..Default::default()
        }
    }
}

impl DhcpBackend {
    async fn boot_answer(&self, facts: &boot_dhcp::ClientFacts) -> Option<boot_dhcp::BootAnswer> {
        let plan_facts = DhcpFacts {
            mac: format_mac(facts.mac),
            uuid: facts.uuid.clone(),
            firmware: facts.client_arch.and_then(Firmware::from_client_arch),
            is_ipxe: facts.is_ipxe,
        };
        match self.plan.dhcp_answer(&plan_facts).await {
            Ok(answer) => answer.map(|a| boot_dhcp::BootAnswer {
                filename: a.filename,
                next_server: a.next_server,
                vendor_class: a.vendor_class,
            }),
            Err(e) => {
                tracing::error!(mac = %plan_facts.mac, error = %format!("{e:#}"), "boot plan failed; answering without boot options");
                None
            }
        }
    }
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl boot_dhcp::LeaseStore for DhcpBackend {
    async fn load(&self) -> anyhow::Result<Vec<boot_dhcp::Lease>> {
        let mut out = Vec::new();
        for l in self.store.leases().await? {
            let Some(mac) = parse_mac(&l.mac) else {
                continue;
            };
            out.push(boot_dhcp::Lease {
                mac,
                ip: l.ip,
                expires_at: UNIX_EPOCH + Duration::from_millis(l.expires_at_ms.max(0) as u64),
                hostname: l.hostname,
                client_id: l.client_id,
            });
        }
        Ok(out)
    }

    async fn commit(&self, lease: &boot_dhcp::Lease) -> anyhow::Result<()> {
        self.store
            .put_lease(&Lease {
                mac: format_mac(lease.mac),
                ip: lease.ip,
                expires_at_ms: to_ms(lease.expires_at),
                hostname: lease.hostname.clone(),
                client_id: lease.client_id.clone(),
            })
            .await
    }

    async fn remove(&self, mac: [u8; 6], ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        self.store.remove_lease(&format_mac(mac), ip).await
    }

    async fn expire(
        &self,
        mac: [u8; 6],
        ip: std::net::Ipv4Addr,
        expires_at: SystemTime,
    ) -> anyhow::Result<bool> {
        // TODO(lead): one conditional store operation ("delete where mac, ip
        // and expires_at_ms <= ?"); this read-then-delete is not atomic.
        let mac_s = format_mac(mac);
        let stored = self
            .store
            .leases()
            .await?
            .into_iter()
            .find(|l| l.mac == mac_s && l.ip == ip);
        match stored {
            Some(l) if l.expires_at_ms > to_ms(expires_at) => Ok(false),
            Some(_) => {
                self.store.remove_lease(&mac_s, ip).await?;
                Ok(true)
            }
            None => Ok(true),
        }
    }
}

/// Records TFTP transfers in the event log (the boot timeline reads them).
pub struct TftpEvents {
    pub store: Arc<dyn Store>,
    pub runtime: tokio::runtime::Handle,
}

impl boot_tftp::TransferObserver for TftpEvents {
    fn finished(&self, peer: SocketAddr, path: &str, bytes: u64, result: Result<(), String>) {
        let store = self.store.clone();
        let detail = json!({ "peer": peer.ip().to_string(), "path": path, "bytes": bytes, "error": result.err() });
        // Called from the TFTP crate's transfer threads: hand over to the runtime.
        self.runtime.spawn(async move {
            crate::store::record_peer_event(&store, Some(peer.ip()), "tftp-file", detail).await;
        });
    }
}
