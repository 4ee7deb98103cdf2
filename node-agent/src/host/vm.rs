//! The QEMU VMs of a failover host: each on its own tap on the boot
//! bridge, netbooting from its MAC (KVM when `/dev/kvm` works, else TCG),
//! BIOS or UEFI (OVMF, a copy of the variables per VM). What happened to
//! each VM since the last poll is kept until a poll carried it.
//!
//! Each running VM has a record `<id>.vm.json` (QEMU's pid, its tap) in the
//! state directory, so that a restarted agent adopts the VMs still running
//! ([`Vms::adopt`]) instead of losing them: it watches and stops them by pid.

use super::HostOptions;
use boot_proto::host::{VmReport, VmSpec};
use boot_proto::FirmwareKind;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

/// Whether KVM can be used (`/dev/kvm` opens read-write).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The tap of a VM: `v` and the MAC's digits (15 characters at most).
pub fn tap_name(mac: &str) -> String {
    let digits: String = mac.chars().filter(char::is_ascii_hexdigit).collect();
    format!("v{}", &digits[..digits.len().min(14)])
}

/// Whether `id` is a VM id the server could have made (it names files).
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// QEMU's arguments for a VM.
pub fn qemu_args(opts: &HostOptions, kvm: bool, vm: &VmSpec, tap: &str) -> Vec<String> {
    let dir = &opts.state_dir;
    let mut a: Vec<String> = vec![
        "-accel".into(),
        if kvm { "kvm" } else { "tcg" }.into(),
        "-m".into(),
        vm.memory_mb.to_string(),
        "-smp".into(),
        vm.cpus.max(1).to_string(),
        "-name".into(),
        vm.id.clone(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", dir.join(format!("{}.serial", vm.id)).display()),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            dir.join(format!("{}.qmp", vm.id)).display()
        ),
        "-netdev".into(),
        format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", vm.mac),
        "-boot".into(),
        "n".into(),
    ];
    if vm.firmware == FirmwareKind::Uefi {
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            opts.ovmf_code.display()
        ));
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=1,file={}",
            dir.join(format!("{}.vars.fd", vm.id)).display()
        ));
    }
    a
}

/// A VM's QEMU: started by this agent, or adopted from an earlier one.
enum Qemu {
    Child(Child),
    Adopted(i32),
}

struct Running {
    qemu: Qemu,
    tap: String,
}

/// What `<id>.vm.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    pid: i32,
    tap: String,
}

fn record_path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("{id}.vm.json"))
}

/// Whether `pid` is a live (not zombie) QEMU of VM `id`: its command line
/// names the VM (`-name <id>`), so a reused pid is not mistaken for it.
fn qemu_alive(pid: i32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let named = args
        .windows(2)
        .any(|w| w[0] == b"-name" && w[1] == id.as_bytes());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(true);
    named && !zombie
}

/// The host's VMs.
pub struct Vms {
    opts: HostOptions,
    kvm: bool,
    running: BTreeMap<String, Running>,
    /// Ended since the last poll that went through (reported until then).
    ended: Vec<VmReport>,
    /// Ended and carried by a poll in flight.
    sent: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Vms {
    /// No VMs yet.
    pub fn new(opts: HostOptions, kvm: bool) -> Vms {
        Vms {
            opts,
            kvm,
            running: BTreeMap::new(),
            ended: Vec::new(),
            sent: 0,
        }
    }

    /// What to tell the server: running VMs and those that ended.
    pub fn report(&mut self) -> Vec<VmReport> {
        self.reap();
        self.sent = self.ended.len();
        let mut out: Vec<VmReport> = self
            .running
            .keys()
            .map(|id| VmReport {
                id: id.clone(),
                running: true,
                detail: String::new(),
            })
            .collect();
        out.extend(self.ended.iter().cloned());
        out
    }

    /// The last report went through: the ends it carried are told.
    pub fn reported(&mut self) {
        self.ended.drain(..self.sent.min(self.ended.len()));
        self.sent = 0;
    }

    /// Adopts the VMs an earlier agent started that still run (their
    /// records in the state directory); records of VMs that ended meanwhile
    /// are reported as ended and removed. Returns the adopted VMs' ids.
    pub fn adopt(&mut self) -> Vec<String> {
        let mut adopted = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.opts.state_dir) else {
            return adopted;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".vm.json") else {
                continue;
            };
            if !safe_id(id) || self.running.contains_key(id) {
                continue;
            }
            let rec: Option<Record> = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match rec {
                Some(r) if r.pid > 0 && qemu_alive(r.pid, id) => {
                    tracing::info!(vm = %id, pid = r.pid, tap = %r.tap, "adopted a running VM");
                    self.running.insert(
                        id.to_string(),
                        Running {
                            qemu: Qemu::Adopted(r.pid),
                            tap: r.tap,
                        },
                    );
                    adopted.push(id.to_string());
                }
                r => {
                    if let Some(r) = r {
                        let _ = ip(&["link", "del", &r.tap]);
                    }
                    let _ = std::fs::remove_file(entry.path());
                    tracing::warn!(vm = %id, "VM ended while the agent was down");
                    self.ended.push(VmReport {
                        id: id.to_string(),
                        running: false,
                        detail: "QEMU ended while the host agent was down".into(),
                    });
                }
            }
        }
        adopted
    }

    /// Notes VMs whose QEMU ended.
    pub fn reap(&mut self) {
        let mut gone = Vec::new();
        for (id, r) in self.running.iter_mut() {
            match &mut r.qemu {
                Qemu::Child(child) => match child.try_wait() {
                    Ok(Some(st)) => gone.push((id.clone(), format!("QEMU exited ({st})"))),
                    Ok(None) => {}
                    Err(e) => gone.push((id.clone(), format!("QEMU lost: {e}"))),
                },
                Qemu::Adopted(pid) => {
                    if !qemu_alive(*pid, id) {
                        gone.push((id.clone(), "QEMU exited (adopted; status unknown)".into()));
                    }
                }
            }
        }
        for (id, detail) in gone {
            if let Some(r) = self.running.remove(&id) {
                let _ = ip(&["link", "del", &r.tap]);
                let _ = std::fs::remove_file(record_path(&self.opts.state_dir, &id));
                tracing::warn!(vm = %id, %detail, "VM ended");
                self.ended.push(VmReport {
                    id,
                    running: false,
                    detail,
                });
            }
        }
    }

    /// Starts a VM (nothing if it runs); a failure is reported as its end.
    pub fn start(&mut self, vm: &VmSpec) {
        if self.running.contains_key(&vm.id) {
            return;
        }
        if let Err(detail) = self.spawn(vm) {
            tracing::warn!(vm = %vm.id, %detail, "VM did not start");
            self.ended.push(VmReport {
                id: vm.id.clone(),
                running: false,
                detail,
            });
        }
    }

    fn spawn(&mut self, vm: &VmSpec) -> Result<(), String> {
        if !safe_id(&vm.id) || !valid_mac(&vm.mac) {
            return Err(format!(
                "refused: bad VM id {:?} or MAC {:?}",
                vm.id, vm.mac
            ));
        }
        let tap = tap_name(&vm.mac);
        let _ = ip(&["link", "del", &tap]);
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        let set_up = ip(&["link", "set", &tap, "master", &self.opts.bridge])
            .and_then(|_| ip(&["link", "set", &tap, "up"]));
        if let Err(e) = set_up {
            let _ = ip(&["link", "del", &tap]);
            return Err(e);
        }
        let dir = &self.opts.state_dir;
        if vm.firmware == FirmwareKind::Uefi {
            let vars = dir.join(format!("{}.vars.fd", vm.id));
            if let Err(e) = std::fs::copy(&self.opts.ovmf_vars, &vars) {
                let _ = ip(&["link", "del", &tap]);
                return Err(format!("copying {}: {e}", self.opts.ovmf_vars.display()));
            }
        }
        let log = std::fs::File::create(dir.join(format!("{}.qemu.log", vm.id)))
            .map_err(|e| format!("QEMU log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("QEMU log: {e}"))?;
        let args = qemu_args(&self.opts, self.kvm, vm, &tap);
        let child = Command::new(&self.opts.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn();
        match child {
            Ok(child) => {
                tracing::info!(vm = %vm.id, mac = %vm.mac, cpus = vm.cpus, memory_mb = vm.memory_mb,
                    firmware = ?vm.firmware, kvm = self.kvm, pid = child.id(), %tap, "VM started");
                let rec = Record {
                    pid: child.id() as i32,
                    tap: tap.clone(),
                };
                let path = record_path(dir, &vm.id);
                if let Err(e) = serde_json::to_vec(&rec)
                    .map_err(std::io::Error::other)
                    .and_then(|b| std::fs::write(&path, b))
                {
                    tracing::warn!(vm = %vm.id, error = %e, path = %path.display(), "VM record not written: a restarted agent will not adopt it");
                }
                self.running.insert(
                    vm.id.clone(),
                    Running {
                        qemu: Qemu::Child(child),
                        tap,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let _ = ip(&["link", "del", &tap]);
                Err(format!("{}: {e}", self.opts.qemu))
            }
        }
    }

    /// Stops a VM (kills its QEMU) and frees its tap.
    pub fn stop(&mut self, id: &str) {
        let Some(r) = self.running.remove(id) else {
            return;
        };
        match r.qemu {
            Qemu::Child(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Qemu::Adopted(pid) => {
                use nix::sys::signal::{kill, Signal};
                let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                // Not our child: its parent reaps it; wait until it is gone.
                for _ in 0..100 {
                    if !qemu_alive(pid, id) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        let _ = std::fs::remove_file(record_path(&self.opts.state_dir, id));
        let _ = ip(&["link", "del", &r.tap]);
        tracing::info!(vm = %id, "VM stopped");
        self.ended.push(VmReport {
            id: id.to_string(),
            running: false,
            detail: "stopped on the server's request".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_and_arguments() {
        assert_eq!(tap_name("02:b5:01:02:03:04"), "v02b501020304");
        assert!(tap_name("02:b5:01:02:03:04").len() <= 15);
        let opts = super::super::HostOptions::parse(
            &"--server http://s:1 --credential-file /c --bridge br0 --state-dir /st"
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let vm = VmSpec {
            id: "vm-1".into(),
            mac: "02:b5:01:02:03:04".into(),
            cpus: 2,
            memory_mb: 384,
            firmware: FirmwareKind::Uefi,
        };
        let a = qemu_args(&opts, false, &vm, "v1").join(" ");
        assert!(a.contains("-accel tcg -m 384 -smp 2"), "{a}");
        assert!(a.contains("mac=02:b5:01:02:03:04,bootindex=1"), "{a}");
        assert!(a.contains("ifname=v1,"), "{a}");
        assert!(a.contains("file=/st/vm-1.vars.fd"), "{a}");
        assert!(!safe_id("../x") && safe_id("vm-02b5"));
        assert!(valid_mac("02:b5:01:02:03:04") && !valid_mac("02:b5:01:02:03"));
    }

    /// Host-mode options with `dir` as the state directory.
    fn options_in(dir: &std::path::Path) -> super::super::HostOptions {
        super::super::HostOptions::parse(
            &format!(
                "--server http://s:1 --credential-file /c --bridge br0 --state-dir {}",
                dir.display()
            )
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn a_failed_start_is_reported_once_it_went_through() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options_in(dir.path());
        let mut v = Vms::new(opts, false);
        v.start(&VmSpec {
            id: "../bad".into(),
            mac: "02:b5:01:02:03:04".into(),
            cpus: 1,
            memory_mb: 128,
            firmware: FirmwareKind::Bios,
        });
        let r = v.report();
        assert_eq!(r.len(), 1);
        assert!(!r[0].running && r[0].detail.contains("refused"), "{r:?}");
        // Not acknowledged: told again.
        assert_eq!(v.report().len(), 1);
        v.reported();
        assert!(v.report().is_empty());
    }

    #[test]
    fn a_restarted_agent_adopts_its_running_vms_and_reports_ended_ones() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options_in(dir.path());
        // A stand-in for QEMU whose command line names the VM.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; true", "-name", "vm-live"])
            .spawn()
            .unwrap();
        // `sh -c CMD ARG0 ARGS`: the cmdline is sh -c "sleep 30" -name vm-live.
        // Until the child has exec'd, its /proc cmdline is the test's.
        let execd = |pid: u32, id: &str| {
            for _ in 0..500 {
                if qemu_alive(pid as i32, id) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("child {pid} never ran");
        };
        execd(child.id(), "vm-live");
        let rec = |pid: i32| format!("{{\"pid\":{pid},\"tap\":\"vnonexistent0\"}}");
        std::fs::write(dir.path().join("vm-live.vm.json"), rec(child.id() as i32)).unwrap();
        // A record whose process is gone (a pid that names another VM).
        std::fs::write(dir.path().join("vm-gone.vm.json"), rec(child.id() as i32)).unwrap();
        std::fs::write(dir.path().join("junk.vm.json"), "not json").unwrap();
        let mut v = Vms::new(opts, false);
        let adopted = v.adopt();
        assert_eq!(adopted, ["vm-live"]);
        let r = v.report();
        let live = r.iter().find(|x| x.id == "vm-live").unwrap();
        assert!(live.running);
        for gone in ["vm-gone", "junk"] {
            let g = r.iter().find(|x| x.id == gone).unwrap();
            assert!(
                !g.running && g.detail.contains("while the host agent was down"),
                "{g:?}"
            );
            assert!(!dir.path().join(format!("{gone}.vm.json")).exists());
        }
        v.reported();
        // The adopted VM is stopped by pid; its record goes.
        v.stop("vm-live");
        let _ = child.wait();
        assert!(!dir.path().join("vm-live.vm.json").exists());
        let r = v.report();
        assert_eq!(r.len(), 1);
        assert!(!r[0].running && r[0].detail.contains("server's request"));
        // An adopted VM that exits by itself is noticed.
        let mut c2 = Command::new("sh")
            .args(["-c", "sleep 30; true", "-name", "vm-short"])
            .spawn()
            .unwrap();
        execd(c2.id(), "vm-short");
        std::fs::write(dir.path().join("vm-short.vm.json"), rec(c2.id() as i32)).unwrap();
        v.reported();
        assert_eq!(v.adopt(), ["vm-short"]);
        let _ = c2.kill(); // it ends (not by the agent)
        let _ = c2.wait();
        v.reap();
        let r = v.report();
        assert!(r.iter().any(|x| x.id == "vm-short" && !x.running), "{r:?}");
    }
}
