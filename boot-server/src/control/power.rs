//! Power control and fencing as admin operations: a node's power state and
//! actions through its BMC (or QEMU monitor), and the fence the failover
//! path puts up before a failed node's slot disk goes to another machine
//! (for a VM node: its host reporting the VM's QEMU gone).

use super::{Control, Error, Result};
use crate::model::{EventKind, Node};
use crate::power::{self, Credentials, PowerAction, PowerDriver, PowerState};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// How a failed node was kept from writing its slot's disk.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fence {
    /// Open NBD connections of the slot's disk that were cut.
    pub connections_cut: usize,
    /// The disk's export is gone and the cut connections' requests in
    /// flight have ended (nothing the node sent can still reach the disk).
    pub export_revoked: bool,
    /// What the BMC did: "off via ipmi", "already off (qmp)", or why not.
    pub power: String,
    /// True when the node is proven unable to write: its BMC reads off.
    /// Revoking the export alone is not proof (a node could be cut off
    /// from us but not from the disk's other paths).
    pub proven: bool,
}

impl Control {
    fn power_driver_of(&self, node: &Node) -> Result<Option<Box<dyn PowerDriver>>> {
        let Some(uri) = &node.power else {
            return Ok(None);
        };
        let creds = Credentials::load(&self.config.power_credentials_file())
            .map_err(|e| Error::new(super::ErrorKind::Unavailable, format!("{e:#}")))?;
        let timeout = Duration::from_millis(self.config.power.timeout_ms.max(100));
        power::driver(uri, &creds, timeout)
            .map(Some)
            .map_err(|e| Error::bad_request(format!("{e:#}")))
    }

    /// The node's driver, or a conflict naming how to give it one.
    fn required_power_driver(&self, node: &Node) -> Result<Box<dyn PowerDriver>> {
        self.power_driver_of(node)?.ok_or_else(|| {
            Error::conflict(format!(
                "node {} has no power control (enrol it with --power ipmi://HOST or qmp:///PATH)",
                node.id
            ))
        })
    }

    /// The node's power state as its BMC reports it.
    pub async fn node_power_status(&self, id: &str) -> Result<PowerState> {
        let node = self.find_node(id).await?;
        let driver = self.required_power_driver(&node)?;
        driver.status().await.map_err(unavailable)
    }

    /// Carries out a power action on the node and records it.
    pub async fn node_power(&self, id: &str, action: PowerAction) -> Result<PowerState> {
        let node = self.find_node(id).await?;
        let driver = self.required_power_driver(&node)?;
        driver.act(action).await.map_err(unavailable)?;
        let state = driver.status().await.map_err(unavailable)?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::Power,
            json!({ "action": action, "driver": driver.kind(), "state": state }),
        );
        Ok(state)
    }

    /// The power state of a node with power control, None without (or when
    /// the BMC does not answer: unknown is not off).
    pub async fn power_state_of(&self, node: &Node) -> Option<PowerState> {
        let driver = self.power_driver_of(node).ok()??;
        match driver.status().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(node = %node.id, error = %format!("{e:#}"), "power state unknown");
                None
            }
        }
    }

    /// Fences a failed node before its slot disk goes elsewhere: cuts the
    /// open connections of the disk and powers the node off through its BMC,
    /// then reads the power state back to prove it.
    pub async fn fence(&self, node: &Node, disk: Option<&str>) -> Fence {
        let (mut connections_cut, mut export_revoked) = (0, disk.is_none());
        if let Some(d) = disk {
            // Forget the attachment first, so that the export name stops
            // working, then cut and drain what is open.
            let detached = match self.store.detach_disk(d).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(disk = d, error = %format!("{e:#}"), "fence: disk not detached");
                    false
                }
            };
            // On the server that serves the disk (queued for it when that is
            // another one; refused when it is down).
            match self.cut_disk_and_wait(d, Duration::from_secs(10)).await {
                Ok(n) => {
                    connections_cut = n;
                    export_revoked = detached;
                }
                Err(e) => {
                    tracing::warn!(disk = d, error = %e.message, "fence: connections still open")
                }
            }
        }
        let (power, proven) = match self.power_driver_of(node) {
            Ok(None) if super::is_virtual(node) => self.fence_vm(node).await,
            Ok(None) => ("no power control".to_string(), false),
            Err(e) => (format!("power control unusable: {}", e.message), false),
            Ok(Some(driver)) => {
                let acted = driver.act(PowerAction::Off).await;
                match (acted, driver.status().await) {
                    (Ok(()), Ok(PowerState::Off)) => (format!("off via {}", driver.kind()), true),
                    (Err(e), Ok(PowerState::Off)) => {
                        tracing::debug!(node = %node.id, error = %format!("{e:#}"), "power off failed but the node reads off");
                        (format!("already off ({})", driver.kind()), true)
                    }
                    (_, Ok(PowerState::On)) => (
                        format!("still on after power off via {}", driver.kind()),
                        false,
                    ),
                    (Err(e), Err(_)) | (Ok(()), Err(e)) => {
                        (format!("{} did not answer: {e:#}", driver.kind()), false)
                    }
                }
            }
        };
        let fence = Fence {
            connections_cut,
            export_revoked,
            power,
            proven,
        };
        tracing::warn!(node = %node.id, disk = ?disk, cut = fence.connections_cut, power = %fence.power, proven = fence.proven, "node fenced");
        fence
    }
}

/// A failover host polls at least every few seconds; one silent longer is
/// not waited for when fencing its VM.
const HOST_SILENT_MS: i64 = 10_000;

impl Control {
    /// Fences a VM node: asks its host to stop the VM and waits (up to
    /// `[engine] vm_fence_timeout_secs`) until the host reports its QEMU
    /// gone — that is the proof. A host that is down cannot say so:
    /// unproven. Says what happened and whether it is proven.
    async fn fence_vm(&self, node: &Node) -> (String, bool) {
        use crate::model::VmState;
        let limit = Duration::from_secs(self.config.engine.vm_fence_timeout_secs);
        let started = std::time::Instant::now();
        let mut asked = false;
        loop {
            let vm = match self.store.vms().await {
                Ok(vms) => vms
                    .into_iter()
                    .filter(|v| v.node == node.id)
                    .max_by_key(|v| v.requested_ms),
                Err(e) => return (format!("VM record unreadable: {e:#}"), false),
            };
            let Some(mut vm) = vm else {
                return ("no VM record for this virtual node".into(), false);
            };
            let waited = started.elapsed().as_millis() as u64;
            match vm.state {
                VmState::Stopped | VmState::Exited => {
                    return (
                        format!(
                            "VM {} gone: host {} reports its QEMU ended ({}; waited {waited} ms)",
                            vm.id, vm.host, vm.detail
                        ),
                        true,
                    )
                }
                VmState::Lost => {
                    return (
                        format!(
                            "VM {}: its host {} is down, QEMU not proven gone",
                            vm.id, vm.host
                        ),
                        false,
                    )
                }
                VmState::Reserved => {
                    return (format!("VM {} never ran (standby)", vm.id), true);
                }
                VmState::Requested | VmState::Running | VmState::Stopping => {}
            }
            // A host that is down or silent cannot stop it or say so.
            let host = self
                .store
                .hosts()
                .await
                .ok()
                .and_then(|hs| hs.into_iter().find(|h| h.name == vm.host));
            let silent_ms = host
                .as_ref()
                .and_then(|h| h.last_seen_ms)
                .map_or(i64::MAX, |t| crate::model::now_ms() - t);
            let down = host
                .as_ref()
                .is_none_or(|h| h.state == crate::model::HostState::Down);
            if down || silent_ms > HOST_SILENT_MS {
                return (
                    format!(
                        "VM {}: its host {} is {}: QEMU not proven gone",
                        vm.id,
                        vm.host,
                        if down {
                            "down".to_string()
                        } else {
                            format!("silent for {} s", silent_ms / 1000)
                        }
                    ),
                    false,
                );
            }
            if started.elapsed() >= limit {
                return (
                    format!(
                        "VM {}: host {} did not report its QEMU gone within {} s: unproven",
                        vm.id,
                        vm.host,
                        limit.as_secs()
                    ),
                    false,
                );
            }
            if !asked {
                asked = true;
                if vm.state != VmState::Stopping {
                    vm.state = VmState::Stopping;
                    vm.detail = "fencing: stop asked of its host".into();
                    if let Err(e) = self.store.put_vm(&vm).await {
                        return (format!("VM {} stop not recorded: {e:#}", vm.id), false);
                    }
                }
                self.wakeups.wake(&super::hosts::host_key(&vm.host));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn unavailable(e: anyhow::Error) -> Error {
    Error::new(super::ErrorKind::Unavailable, format!("{e:#}"))
}
