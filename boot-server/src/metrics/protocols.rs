//! Counters kept by the protocol crates and the store writer, read at
//! scrape time: the crates count with plain atomics and know nothing of
//! Prometheus; the server hands their stats here as each one starts.

use crate::store::sqlite::WriterStats;
use boot_dhcp::DhcpStats;
use boot_nbd::{NbdHandle, NbdStats};
use boot_tftp::TftpStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Where the collector reads from; each is set once, when its server starts.
#[derive(Default)]
pub struct Sources {
    /// The DHCP server's counters.
    pub dhcp: OnceLock<Arc<DhcpStats>>,
    /// The TFTP server's counters.
    pub tftp: OnceLock<Arc<TftpStats>>,
    /// The NBD server (counters and open connections).
    pub nbd: OnceLock<NbdHandle>,
    /// The SQLite store writer's counters.
    pub store: OnceLock<Arc<WriterStats>>,
    /// Events dropped because the event writer fell behind.
    pub events_dropped: OnceLock<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Writes one counter family: `rows` are (label value, count).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: Option<&'static str>,
    rows: &[(&str, u64)],
) -> std::fmt::Result {
    let probe = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(name, help, None, probe.metric_type())?;
    let Some(k) = label else {
        let n = rows.first().map_or(0, |r| r.1);
        return ConstCounter::new(n).encode(m);
    };
    for (value, n) in rows {
        let labels = [(k, *value)];
        ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut enc;
        if let Some(s) = self.dhcp.get() {
            counter(
                e,
                "boot_dhcp_packets_received",
                "DHCP packets received (malformed ones included)",
                None,
                &[("", get(&s.received))],
            )?;
            counter(
                e,
                "boot_dhcp_received_bytes",
                "Bytes of DHCP packets received",
                None,
                &[("", get(&s.bytes_received))],
            )?;
            counter(
                e,
                "boot_dhcp_sent_bytes",
                "Bytes of DHCP replies sent",
                None,
                &[("", get(&s.bytes_sent))],
            )?;
            counter(
                e,
                "boot_dhcp_malformed_packets",
                "DHCP packets dropped because they did not decode",
                None,
                &[("", get(&s.malformed_dropped))],
            )?;
            counter(
                e,
                "boot_dhcp_ignored_packets",
                "Decoded DHCP packets left unanswered (BOOTP, replies, nothing to say)",
                None,
                &[("", get(&s.ignored))],
            )?;
            counter(
                e,
                "boot_dhcp_replies",
                "DHCP replies by message type",
                Some("type"),
                &[
                    ("offer", get(&s.offers)),
                    ("ack", get(&s.acks)),
                    ("nak", get(&s.naks)),
                    ("proxy_offer", get(&s.proxy_offers)),
                    ("proxy_ack", get(&s.proxy_acks)),
                    ("inform", get(&s.informs)),
                ],
            )?;
            counter(
                e,
                "boot_dhcp_client_messages",
                "RELEASE and DECLINE messages processed",
                Some("type"),
                &[
                    ("release", get(&s.releases)),
                    ("decline", get(&s.declines)),
                    ("decline_ignored", get(&s.declines_ignored)),
                ],
            )?;
            counter(
                e,
                "boot_dhcp_errors",
                "DHCP failures by kind (commit: no ACK sent; store: any failed lease store operation; send: reply not sent; pool_exhausted: DISCOVER unanswered; not_ready: leases not loaded yet; store_busy: DISCOVER shed by a saturated shared store)",
                Some("kind"),
                &[
                    ("commit", get(&s.commit_failures)),
                    ("store", get(&s.store_errors)),
                    ("send", get(&s.send_errors)),
                    ("pool_exhausted", get(&s.pool_exhausted)),
                    ("not_ready", get(&s.not_ready)),
                    ("store_busy", get(&s.store_busy)),
                ],
            )?;
        }
        if let Some(s) = self.tftp.get() {
            counter(
                e,
                "boot_tftp_requests",
                "Well-formed TFTP read/write requests received",
                None,
                &[("", get(&s.requests))],
            )?;
            counter(
                e,
                "boot_tftp_transfers_completed",
                "TFTP transfers whose last block was acknowledged",
                None,
                &[("", get(&s.completed))],
            )?;
            counter(
                e,
                "boot_tftp_errors",
                "TFTP requests refused and transfers failed",
                None,
                &[("", get(&s.errors))],
            )?;
            counter(
                e,
                "boot_tftp_malformed_packets",
                "TFTP packets dropped because they did not parse or were unexpected",
                None,
                &[("", get(&s.malformed_dropped))],
            )?;
            counter(
                e,
                "boot_tftp_sent_bytes",
                "TFTP DATA payload bytes sent, retransmissions included",
                None,
                &[("", get(&s.bytes_sent))],
            )?;
            counter(
                e,
                "boot_tftp_retransmits",
                "TFTP timeouts that led to a retransmission",
                None,
                &[("", get(&s.retransmits))],
            )?;
            counter(
                e,
                "boot_tftp_refused_busy",
                "TFTP requests refused over a transfer limit",
                None,
                &[("", get(&s.refused_busy))],
            )?;
            counter(
                e,
                "boot_tftp_size_probes",
                "TFTP transfers ended by the client after the OACK (size probes)",
                None,
                &[("", get(&s.size_probes))],
            )?;
            gauge(
                e,
                "boot_tftp_active_transfers",
                "TFTP transfers running now",
                get(&s.active) as i64,
            )?;
        }
        if let Some(h) = self.nbd.get() {
            let s: Arc<NbdStats> = h.stats();
            counter(
                e,
                "boot_nbd_connections",
                "NBD connections admitted",
                None,
                &[("", get(&s.connections))],
            )?;
            counter(
                e,
                "boot_nbd_connections_refused",
                "NBD connections closed at accept (over a limit)",
                None,
                &[("", get(&s.refused))],
            )?;
            counter(
                e,
                "boot_nbd_handshake_failures",
                "NBD handshakes that failed (bad option, timeout, I/O)",
                None,
                &[("", get(&s.handshake_failures))],
            )?;
            counter(
                e,
                "boot_nbd_requests",
                "NBD requests executed by command",
                Some("command"),
                &[
                    ("read", get(&s.reads)),
                    ("write", get(&s.writes)),
                    ("other", get(&s.other_requests)),
                ],
            )?;
            counter(
                e,
                "boot_nbd_read_bytes",
                "Bytes sent in NBD READ replies",
                None,
                &[("", get(&s.bytes_read))],
            )?;
            counter(
                e,
                "boot_nbd_written_bytes",
                "Bytes received in NBD WRITE requests",
                None,
                &[("", get(&s.bytes_written))],
            )?;
            counter(
                e,
                "boot_nbd_errors",
                "NBD requests answered with an error",
                None,
                &[("", get(&s.errors))],
            )?;
            counter(
                e,
                "boot_nbd_malformed_requests",
                "NBD request headers that did not parse (connection closed)",
                None,
                &[("", get(&s.malformed))],
            )?;
            gauge(
                e,
                "boot_nbd_open_connections",
                "NBD connections open now",
                h.connections() as i64,
            )?;
        }
        if let Some(s) = self.store.get() {
            counter(
                e,
                "boot_store_commits",
                "Store transactions committed",
                None,
                &[("", get(&s.commits))],
            )?;
            counter(
                e,
                "boot_store_writes",
                "Store writes in committed transactions (group commit: more writes than commits)",
                None,
                &[("", get(&s.writes))],
            )?;
            counter(
                e,
                "boot_store_commit_failures",
                "Store transactions that failed",
                None,
                &[("", get(&s.failures))],
            )?;
        }
        if let Some(d) = self.events_dropped.get() {
            counter(
                e,
                "boot_events_dropped",
                "Events dropped because the event writer fell behind",
                None,
                &[("", get(d))],
            )?;
        }
        Ok(())
    }
}
