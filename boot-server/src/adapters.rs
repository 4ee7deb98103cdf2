//! Glue between the protocol crates' small traits and the boot server's
//! plan, store and event hub: the DHCP crate asks [`DhcpBackend`] for boot
//! answers and durable leases; the TFTP crate reports transfers to
//! [`TftpEvents`].

use crate::events::EventHub;
use crate::model::{EventKind, Firmware, Lease, MacAddr};
use crate::plan::{BootPlan, DhcpFacts};
use crate::store::Store;
use async_trait::async_trait;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The DHCP crate's advisor and lease store.
pub struct DhcpBackend {
    /// Decides what each client boots.
    pub plan: Arc<BootPlan>,
    /// Where leases and nodes are kept.
    pub store: Arc<dyn Store>,
    /// Proxy mode: the server leases nothing, the DHCP exchange shows the address.
    pub proxy: bool,
    /// The store shared with other servers, which then allocates addresses
    /// (absent: this server owns the store and allocates in memory).
    pub shared: Option<Arc<crate::store::PgStore>>,
}

#[async_trait]
impl boot_dhcp::BootAdvisor for DhcpBackend {
    /// The boot answer from the plan; fixed address and host name come from
    /// the DHCP server's live reservation table (pushed by the control layer).
    async fn client_config(&self, facts: &boot_dhcp::ClientFacts) -> boot_dhcp::ClientConfig {
        let plan_facts = DhcpFacts {
            mac: MacAddr(facts.mac),
            uuid: facts.uuid.clone(),
            firmware: facts.client_arch.and_then(Firmware::from_client_arch),
            is_ipxe: facts.is_ipxe,
            // Only where the server hands out no addresses: in full mode the
            // lease is the node's address, whatever a packet claims.
            observed_ip: if self.proxy {
                facts.observed_ip()
            } else {
                None
            },
        };
        let boot = match self.plan.dhcp_answer(&plan_facts).await {
            Ok(answer) => answer.map(|a| boot_dhcp::BootAnswer {
                filename: a.filename,
                next_server: a.next_server,
                vendor_class: a.vendor_class,
            }),
            Err(e) => {
                tracing::error!(mac = %plan_facts.mac, error = %format!("{e:#}"), "boot plan failed; answering without boot options");
                None
            }
        };
        boot_dhcp::ClientConfig {
            boot,
            ..Default::default()
        }
    }

    async fn observed(&self, facts: &boot_dhcp::ClientFacts) {
        let (mac, ip) = (MacAddr(facts.mac), facts.observed_ip());
        let Some(ip) = ip.filter(|_| self.proxy) else {
            return;
        };
        if let Err(e) = self.plan.record_observed_address(mac, ip).await {
            tracing::warn!(%mac, %ip, error = %format!("{e:#}"), "observed address not recorded");
        }
    }
}

/// The control layer's handle on the running DHCP server.
pub struct DhcpLink(pub boot_dhcp::DhcpControl);

#[async_trait]
impl crate::control::DhcpLink for DhcpLink {
    fn set_reservations(&self, table: &[crate::model::Reservation]) {
        self.0.reservations().replace(
            table
                .iter()
                .map(|r| boot_dhcp::Reservation {
                    mac: r.mac.octets(),
                    ip: r.ip,
                    hostname: r.hostname.clone(),
                })
                .collect(),
        );
    }

    async fn free_address(&self, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        self.0.free_address(ip).await.map(|_| ())
    }
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl boot_dhcp::LeaseStore for DhcpBackend {
    fn shared(&self) -> bool {
        self.shared.is_some()
    }

    async fn allocate(
        &self,
        mac: [u8; 6],
        range: (std::net::Ipv4Addr, std::net::Ipv4Addr),
        prefer: &[std::net::Ipv4Addr],
        hold_until: SystemTime,
    ) -> anyhow::Result<Option<std::net::Ipv4Addr>> {
        match &self.shared {
            Some(pg) => pg
                .allocate_address(MacAddr(mac), range, prefer, to_ms(hold_until))
                .await
                .map_err(|e| {
                    if e.is::<crate::store::postgres::OffersBusy>() {
                        e.context(boot_dhcp::StoreBusy)
                    } else {
                        e
                    }
                }),
            None => Ok(None),
        }
    }

    async fn load(&self) -> anyhow::Result<Vec<boot_dhcp::Lease>> {
        Ok(self
            .store
            .leases()
            .await?
            .into_iter()
            .map(|l| boot_dhcp::Lease {
                mac: l.mac.octets(),
                ip: l.ip,
                expires_at: UNIX_EPOCH + Duration::from_millis(l.expires_at_ms.max(0) as u64),
                hostname: l.hostname,
                client_id: l.client_id,
            })
            .collect())
    }

    async fn commit(&self, lease: &boot_dhcp::Lease) -> anyhow::Result<()> {
        self.store
            .put_lease(&Lease {
                mac: MacAddr(lease.mac),
                ip: lease.ip,
                expires_at_ms: to_ms(lease.expires_at),
                hostname: lease.hostname.clone(),
                client_id: lease.client_id.clone(),
            })
            .await
            .map_err(|e| {
                if matches!(
                    e.downcast_ref::<crate::store::Refused>(),
                    Some(crate::store::Refused::AddressHeld { .. })
                ) {
                    e.context(boot_dhcp::AddressTaken(lease.ip))
                } else {
                    e
                }
            })
    }

    async fn remove(&self, mac: [u8; 6], ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        self.store.remove_lease(MacAddr(mac), ip).await.map(|_| ())
    }

    async fn expire(
        &self,
        mac: [u8; 6],
        ip: std::net::Ipv4Addr,
        expires_at: SystemTime,
    ) -> anyhow::Result<bool> {
        self.store
            .expire_lease(MacAddr(mac), ip, to_ms(expires_at))
            .await
    }
}

/// Records TFTP transfers of known nodes in the event log (the boot timeline
/// reads them); transfers to addresses no node holds are not recorded.
pub struct TftpEvents {
    /// Where nodes are looked up by address.
    pub store: Arc<dyn Store>,
    /// Where the transfer events go.
    pub events: EventHub,
    /// Runtime the TFTP threads hand their async work to.
    pub runtime: tokio::runtime::Handle,
}

impl boot_tftp::TransferObserver for TftpEvents {
    fn finished(&self, peer: SocketAddr, path: &str, bytes: u64, result: Result<(), String>) {
        let (store, events) = (self.store.clone(), self.events.clone());
        let detail = json!({ "peer": peer.ip().to_string(), "path": path, "bytes": bytes, "error": result.err() });
        // Called from the TFTP crate's transfer threads: hand over to the runtime.
        self.runtime.spawn(async move {
            if let IpAddr::V4(ip) = peer.ip() {
                if let Ok(Some(node)) = store.node_by_lease_ip(ip).await {
                    events.emit(Some(node.id), EventKind::TftpFile, detail);
                }
            }
        });
    }
}
