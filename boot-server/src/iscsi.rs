//! iSCSI glue of `boot-server serve`: owns the mapping from disk attachments to the
//! boot-iscsi server's target table, and the iSCSI names and credentials a node uses.
//!
//! * Each attached overlay is its own target, named `iqn.2026-12.boot-server:<overlay>`
//!   ([`target_name`]). Overlay ids may hold uppercase letters and `_`, which iSCSI
//!   names may not: each such byte is written `:` and two hex digits (`Ov_1` →
//!   `iqn.2026-12.boot-server::4fv:5f1`), which cannot collide because `:` never appears
//!   in an overlay id. An overlay whose name would exceed 223 bytes gets no target.
//! * The target is reachable only from the attached node's current address: the very
//!   attachment snapshot and address rule of the NBD exports (`crate::disks`, whose
//!   refresh and revoke drive [`IscsiTargets`]); a node without an address has no target.
//! * CHAP: user = the node id, secret = [`chap_secret`] of the attachment's secret
//!   export name (128 bits, derived, so nothing new is stored). For mutual CHAP the
//!   target answers as its own name with [`reverse_secret`] (a second derived secret:
//!   RFC 7143 §12.1.3 wants the two directions to differ); an initiator that asks
//!   for nothing more does one-way CHAP. Secrets are never logged; the log shows
//!   fingerprints.
//! * Admin: CHAP user [`ADMIN_USER`] with the admin token as its secret logs in to
//!   every target from any address and lists every target in discovery (like NBD's
//!   `admin:<token>:<name>`); mutual CHAP answers with [`admin_reverse_secret`].
//! * The table follows the attachments: a refresh adds, changes and withdraws targets
//!   (withdrawing leaves open sessions running, like an NBD export name that stops
//!   working); a revocation (detach, fencing) also closes every session on the overlay.

use crate::secret::fingerprint;
use boot_iscsi::{valid_iqn, Chap, ChapSecret, DiskRef, IscsiHandle, TargetConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The prefix of every target name the server derives.
pub const IQN_PREFIX: &str = "iqn.2026-12.boot-server:";

/// The iSCSI target name of overlay `overlay` (None if it would be too long).
pub fn target_name(overlay: &str) -> Option<String> {
    let mut name = String::from(IQN_PREFIX);
    for b in overlay.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!(":{b:02x}"));
        }
    }
    valid_iqn(&name).then_some(name)
}

/// The CHAP secret of an attachment: 32 hex digits of SHA-256 over a fixed label and
/// the attachment's secret export name.
pub fn chap_secret(export: &str) -> String {
    let d = Sha256::digest(format!("boot-server iSCSI CHAP secret\0{export}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret the target proves itself with in mutual CHAP: 32 hex digits of SHA-256
/// over another fixed label and the export name (never equal to [`chap_secret`]).
pub fn reverse_secret(export: &str) -> String {
    let d = Sha256::digest(format!("boot-server iSCSI reverse CHAP secret\0{export}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The CHAP user of the admin credential.
pub const ADMIN_USER: &str = "admin";

/// The secret the target proves itself with to the admin in mutual CHAP: 32 hex
/// digits of SHA-256 over a fixed label and the admin token.
pub fn admin_reverse_secret(admin_token: &str) -> String {
    let d =
        Sha256::digest(format!("boot-server iSCSI admin reverse CHAP\0{admin_token}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin's iSCSI credential: [`ADMIN_USER`] with the admin token as the secret
/// (None when the token is too long for CHAP: 255 bytes).
pub fn admin_chap(admin_token: &str) -> Option<Chap> {
    (admin_token.len() <= 255).then(|| Chap {
        initiator: ChapSecret {
            user: ADMIN_USER.to_string(),
            secret: admin_token.to_string(),
        },
        target: Some(ChapSecret {
            user: "boot-server".to_string(),
            secret: admin_reverse_secret(admin_token),
        }),
    })
}

/// What a node needs to log in to its overlay's target.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeTarget {
    /// The target name.
    pub target: String,
    /// CHAP user (the node id).
    pub chap_user: String,
    /// CHAP secret.
    pub chap_secret: String,
    /// Mutual CHAP: the name the target answers with (the target name).
    pub reverse_user: String,
    /// Mutual CHAP: the secret the target answers with.
    pub reverse_secret: String,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget")
            .field("target", &self.target)
            .field("chap_user", &self.chap_user)
            .field(
                "chap_secret",
                &format!("sha256:{}", fingerprint(&self.chap_secret)),
            )
            .field("reverse_user", &self.reverse_user)
            .field(
                "reverse_secret",
                &format!("sha256:{}", fingerprint(&self.reverse_secret)),
            )
            .finish()
    }
}

/// The target and credentials of overlay `overlay` attached to `node` as `export`.
pub fn node_target(overlay: &str, node: &str, export: &str) -> Option<NodeTarget> {
    let target = target_name(overlay)?;
    Some(NodeTarget {
        reverse_user: target.clone(),
        target,
        chap_user: node.to_string(),
        chap_secret: chap_secret(export),
        reverse_secret: reverse_secret(export),
    })
}

/// The `bootsrv.root=` value of a node whose root disk goes over iSCSI:
/// `iscsi:IP:PORT:USER:SECRET:REVERSE-SECRET:TARGET` (the target name last: it holds
/// colons; the reverse user is the target name). The node's agent logs in with it
/// (mutual CHAP). Like the NBD export name on the same command line, it is a secret
/// of that node's boot.
pub fn root_spec(portal: std::net::SocketAddr, t: &NodeTarget) -> String {
    format!(
        "iscsi:{}:{}:{}:{}:{}:{}",
        portal.ip(),
        portal.port(),
        t.chap_user,
        t.chap_secret,
        t.reverse_secret,
        t.target
    )
}

/// One attachment as the NBD export table sees it, reachable from `address`.
pub struct Reachable<'a> {
    /// The overlay id.
    pub overlay: &'a str,
    /// The node it is attached to.
    pub node: &'a str,
    /// The attachment's secret export name.
    pub export: &'a str,
    /// The node's current address.
    pub address: IpAddr,
}

/// The running iSCSI server's target table, kept equal to the attachments.
pub struct IscsiTargets {
    handle: IscsiHandle,
}

impl IscsiTargets {
    /// Drives the server behind `handle`, which accepts the admin credential of
    /// `admin_token` ([`admin_chap`]) for every target.
    pub fn new(handle: IscsiHandle, admin_token: &str) -> IscsiTargets {
        let admin = admin_chap(admin_token);
        if admin.is_none() {
            tracing::warn!("admin token longer than 255 bytes: no admin access over iSCSI");
        }
        if let Err(e) = handle.set_admin(admin) {
            tracing::warn!(error = %format!("{e:#}"), "no admin access over iSCSI");
        }
        IscsiTargets { handle }
    }

    /// Makes the derived targets exactly `reachable`: adds new ones, replaces changed
    /// ones (the node moved, a new export name), withdraws the rest. Open sessions are
    /// left running ([`IscsiTargets::revoke`] cuts them). Targets not named by
    /// [`target_name`] are left alone.
    pub fn sync<'a>(&self, reachable: impl IntoIterator<Item = Reachable<'a>>) {
        let mut want = BTreeMap::new();
        for r in reachable {
            let Some(t) = node_target(r.overlay, r.node, r.export) else {
                tracing::debug!(
                    overlay = r.overlay,
                    "overlay id too long for an iSCSI name; no target"
                );
                continue;
            };
            let cfg = TargetConfig {
                disk: DiskRef::Overlay(r.overlay.to_string()),
                allowed_initiator: Some(r.address),
                chap: Some(Chap {
                    initiator: ChapSecret {
                        user: t.chap_user,
                        secret: t.chap_secret,
                    },
                    target: Some(ChapSecret {
                        user: t.reverse_user,
                        secret: t.reverse_secret,
                    }),
                }),
            };
            want.insert(t.target, cfg);
        }
        for iqn in self.handle.targets() {
            if iqn.starts_with(IQN_PREFIX) && !want.contains_key(&iqn) {
                self.handle.forget_target(&iqn);
            }
        }
        for (iqn, cfg) in want {
            if self.handle.target(&iqn).as_ref() == Some(&cfg) {
                continue;
            }
            // Forget first, so that a changed entry does not cut open sessions.
            self.handle.forget_target(&iqn);
            let secret = cfg.chap.as_ref().map(|c| fingerprint(&c.initiator.secret));
            match self.handle.add_target(&iqn, cfg) {
                Ok(()) => {
                    tracing::info!(target_iqn = iqn, chap_secret = ?secret.map(|s| format!("sha256:{s}")), "iSCSI target follows its attachment")
                }
                Err(e) => {
                    tracing::warn!(target_iqn = iqn, error = %format!("{e:#}"), "iSCSI target not added")
                }
            }
        }
    }

    /// Withdraws the overlay's target and closes every open session on the overlay;
    /// how many were closed.
    pub fn revoke(&self, overlay: &str) -> usize {
        if let Some(iqn) = target_name(overlay) {
            self.handle.forget_target(&iqn);
        }
        self.handle.revoke_overlay(overlay)
    }

    /// Waits until no session to the overlay's target remains; false after `timeout`.
    pub async fn wait_closed(&self, overlay: &str, timeout: Duration) -> bool {
        match target_name(overlay) {
            Some(iqn) => self.handle.wait_closed(&iqn, timeout).await,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_valid_and_distinct() {
        assert_eq!(
            target_name("rack1-node7.v2").as_deref(),
            Some("iqn.2026-12.boot-server:rack1-node7.v2")
        );
        let a = target_name("Ov_1").unwrap();
        assert_eq!(a, "iqn.2026-12.boot-server::4fv:5f1");
        assert_ne!(target_name("ov_1"), target_name("ov-1"));
        assert_ne!(target_name("A"), target_name("a"));
        assert!(valid_iqn(&a));
        assert_eq!(target_name(&"_".repeat(100)), None);
        assert!(target_name(&"a".repeat(128)).is_some());
    }

    #[test]
    fn chap_secrets_are_long_distinct_and_not_the_export() {
        let s = chap_secret("ov1.0123456789abcdef01234567");
        assert_eq!(s.len(), 32);
        assert_ne!(s, chap_secret("ov1.0123456789abcdef01234568"));
        assert!(!"ov1.0123456789abcdef01234567".contains(&s));
        let t = node_target("ov1", "node-1", "ov1.x").unwrap();
        assert!(!format!("{t:?}").contains(&t.chap_secret));
        assert!(!format!("{t:?}").contains(&t.reverse_secret));
        assert_eq!(t.reverse_secret.len(), 32);
        assert_ne!(t.reverse_secret, t.chap_secret);
        assert_eq!(t.reverse_user, t.target);
    }
}
