//! Pre-staged boots and their one-time hand-off credentials. A node's agent
//! can load the image it will most likely boot next ahead of the decision
//! (`prestage` command); the command line is fixed at load time, so it
//! carries no token and no slot data, only a hand-off credential
//! (`bootsrv.handoff`). This registry remembers, per node, what was staged
//! (files and command line) and the credential's digest. At the decision the
//! kexec path [`Handoffs::bind`]s the boot's fresh token to it when the boot
//! it would send is the staged one (same files, same command line but for
//! the credential), else forgets the stage (the agent loads the right image:
//! fallback). The new boot exchanges the credential once
//! ([`Handoffs::take`]): single use, bound only after the decision,
//! expiring. Held in memory: a server restart forgets stages, and the next
//! decision simply loads the image (the slow path), never a wrong one.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a stage waits for its decision.
pub const STAGED_TTL_MS: i64 = 30 * 60 * 1000;
/// How long a bound credential can be exchanged after the decision.
pub const BOUND_TTL_MS: i64 = 120 * 1000;

/// What a boot loads: files and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Kernel URL.
    pub kernel_url: String,
    /// Initrd URL, if any.
    pub initrd_url: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

impl BootFiles {
    fn key(&self) -> (String, Option<String>, String) {
        (
            self.kernel_url.clone(),
            self.initrd_url.clone(),
            strip_credentials(&self.cmdline),
        )
    }
}

/// The command line without its per-boot credentials (`bootsrv.token`,
/// `bootsrv.handoff`): what a staged boot and the decided one must share.
pub fn strip_credentials(cmdline: &str) -> String {
    use boot_proto::cmdline::{HANDOFF, TOKEN};
    cmdline
        .split_whitespace()
        .filter(|w| {
            let key = w.split('=').next().unwrap_or("");
            key != TOKEN && key != HANDOFF
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Staged {
    id: String,
    image: String,
    key: (String, Option<String>, String),
    handoff_digest: String,
    expires_ms: i64,
    /// The boot's token, once the decision bound it.
    bound: Option<String>,
}

/// Outcome of a hand-off exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// The boot's token for `node` (the credential is used up).
    Token {
        /// The node the credential belongs to.
        node: String,
        /// Its boot token.
        token: String,
    },
    /// Known but not bound yet: no decision has used this stage.
    Unbound {
        /// The node the credential belongs to.
        node: String,
    },
    /// Unknown, used up or expired.
    Unknown,
}

/// Stages by node id.
#[derive(Default)]
pub struct Handoffs {
    m: Mutex<HashMap<String, Staged>>,
}

impl Handoffs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Staged>> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `files` of `image` as staged on `node` with a credential
    /// whose digest is `handoff_digest` (replacing an earlier stage);
    /// returns the stage's id.
    pub fn stage(
        &self,
        node: &str,
        image: &str,
        files: &BootFiles,
        handoff_digest: &str,
        now_ms: i64,
    ) -> String {
        let id = format!("s{}", &crate::secret::random_token(6)[..8]);
        self.map().insert(
            node.to_string(),
            Staged {
                id: id.clone(),
                image: image.to_string(),
                key: files.key(),
                handoff_digest: handoff_digest.to_string(),
                expires_ms: now_ms + STAGED_TTL_MS,
                bound: None,
            },
        );
        id
    }

    /// The image staged on `node` (not yet bound, not expired), if any.
    pub fn staged_image(&self, node: &str, now_ms: i64) -> Option<String> {
        self.map()
            .get(node)
            .filter(|s| s.expires_ms > now_ms && s.bound.is_none())
            .map(|s| s.image.clone())
    }

    /// At the decision: when `files` is what `node` has staged, binds
    /// `token` to the stage's credential and returns the stage id; else
    /// forgets the stage (the agent will load `files`) and returns why not.
    pub fn bind(
        &self,
        node: &str,
        files: &BootFiles,
        token: &str,
        now_ms: i64,
    ) -> Result<String, String> {
        let mut m = self.map();
        let Some(s) = m.get_mut(node) else {
            return Err("nothing staged".into());
        };
        let why = if s.expires_ms <= now_ms {
            "the stage expired".to_string()
        } else if s.bound.is_some() {
            "the stage is already bound to a boot".to_string()
        } else if s.key != files.key() {
            format!("staged image {} differs from this boot's", s.image)
        } else {
            s.bound = Some(token.to_string());
            s.expires_ms = now_ms + BOUND_TTL_MS;
            return Ok(s.id.clone());
        };
        m.remove(node);
        Err(why)
    }

    /// The node a live credential belongs to, without using it.
    pub fn take_peek(&self, handoff: &str, now_ms: i64) -> Option<String> {
        let digest = crate::secret::digest(handoff);
        self.map()
            .iter()
            .find(|(_, s)| s.handoff_digest == digest && s.expires_ms > now_ms)
            .map(|(n, _)| n.clone())
    }

    /// The new boot presents its credential: its token once bound (single
    /// use), else why not.
    pub fn take(&self, handoff: &str, now_ms: i64) -> Take {
        let digest = crate::secret::digest(handoff);
        let mut m = self.map();
        m.retain(|_, s| s.expires_ms > now_ms);
        let Some(node) = m
            .iter()
            .find(|(_, s)| s.handoff_digest == digest)
            .map(|(n, _)| n.clone())
        else {
            return Take::Unknown;
        };
        if m[&node].bound.is_none() {
            return Take::Unbound { node };
        }
        let s = m.remove(&node).expect("found above");
        Take::Token {
            node,
            token: s.bound.expect("bound"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cmd: &str) -> BootFiles {
        BootFiles {
            kernel_url: "http://s/images/k".into(),
            initrd_url: Some("http://s/images/i".into()),
            cmdline: cmd.into(),
        }
    }

    #[test]
    fn a_credential_gives_its_token_once_and_only_after_the_decision() {
        let h = Handoffs::default();
        let secret = "hand-off-secret";
        let id = h.stage(
            "n1",
            "env-b",
            &files("quiet bootsrv.image=env-b bootsrv.handoff=hand-off-secret"),
            &crate::secret::digest(secret),
            0,
        );
        assert_eq!(h.staged_image("n1", 1).as_deref(), Some("env-b"));
        // Before the decision: known, but no token.
        assert_eq!(h.take(secret, 1), Take::Unbound { node: "n1".into() });
        // The decision's boot is the staged one (but for the credential).
        let got = h.bind(
            "n1",
            &files("quiet bootsrv.image=env-b bootsrv.token=T0"),
            "T0",
            2,
        );
        assert_eq!(got, Ok(id));
        assert_eq!(h.take("wrong", 3), Take::Unknown);
        assert_eq!(
            h.take(secret, 3),
            Take::Token {
                node: "n1".into(),
                token: "T0".into()
            }
        );
        // Single use.
        assert_eq!(h.take(secret, 4), Take::Unknown);
    }

    #[test]
    fn another_image_or_an_expired_stage_is_not_bound_and_is_forgotten() {
        let h = Handoffs::default();
        let d = crate::secret::digest("x");
        h.stage("n1", "env-a", &files("bootsrv.image=env-a"), &d, 0);
        let e = h
            .bind("n1", &files("bootsrv.image=env-b bootsrv.token=T"), "T", 1)
            .unwrap_err();
        assert!(e.contains("env-a differs"), "{e}");
        assert_eq!(h.take("x", 2), Take::Unknown);
        assert!(h.staged_image("n1", 2).is_none());
        // Slot data that appeared since (a root disk) is a different boot.
        h.stage("n1", "env-a", &files("bootsrv.image=env-a"), &d, 0);
        assert!(h
            .bind(
                "n1",
                &files("bootsrv.image=env-a bootsrv.root=nbd:1:2:e"),
                "T",
                1
            )
            .is_err());
        // Expired: neither bound nor exchanged.
        h.stage("n1", "env-a", &files("bootsrv.image=env-a"), &d, 0);
        assert!(h
            .bind("n1", &files("bootsrv.image=env-a"), "T", STAGED_TTL_MS + 1)
            .is_err());
        h.stage("n1", "env-a", &files("bootsrv.image=env-a"), &d, 0);
        assert!(h.bind("n1", &files("bootsrv.image=env-a"), "T", 10).is_ok());
        assert_eq!(h.take("x", 10 + BOUND_TTL_MS + 1), Take::Unknown);
    }

    #[test]
    fn credentials_are_stripped_for_the_comparison() {
        assert_eq!(
            strip_credentials("a bootsrv.token=1 b bootsrv.handoff=2  c"),
            "a b c"
        );
    }
}
