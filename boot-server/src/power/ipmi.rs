//! The IPMI-over-LAN power driver: `ipmitool -I lanplus` (RMCP+), the tool
//! every BMC vendor documents, rather than a hand-written RMCP+ client (its
//! session setup, RAKP authentication and AES integrity are easy to get subtly
//! wrong and ipmitool is the reference peer). The password goes to ipmitool in its environment (`-E`), never on its
//! command line where `ps` would show it.

use super::{IpmiLogin, PowerAction, PowerDriver, PowerState};
use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;
use tokio::process::Command;

/// One BMC.
pub struct Ipmi {
    host: String,
    port: u16,
    login: IpmiLogin,
    timeout: Duration,
}

impl Ipmi {
    /// The driver for the BMC at `host:port`.
    pub fn new(host: String, port: u16, login: IpmiLogin, timeout: Duration) -> Ipmi {
        Ipmi {
            host,
            port,
            login,
            timeout,
        }
    }

    async fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ipmitool");
        cmd.args(["-I", "lanplus", "-H", &self.host, "-p"])
            .arg(self.port.to_string())
            .args(["-U", &self.login.user, "-E", "-N", "1", "-R", "2"])
            .args(
                self.login
                    .cipher_suite
                    .map(|c| vec!["-C".to_string(), c.to_string()])
                    .unwrap_or_default(),
            )
            .args(args)
            .env("IPMI_PASSWORD", &self.login.password)
            .kill_on_drop(true);
        let out = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "BMC {}:{}: no answer within {:?}",
                    self.host,
                    self.port,
                    self.timeout
                )
            })?
            .context("running ipmitool (Debian package ipmitool)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "BMC {}:{}: ipmitool {}: {}",
                self.host,
                self.port,
                args.join(" "),
                err.trim().lines().last().unwrap_or("failed")
            );
        }
        Ok(stdout)
    }
}

#[async_trait::async_trait]
impl PowerDriver for Ipmi {
    async fn status(&self) -> Result<PowerState> {
        let out = self.run(&["chassis", "power", "status"]).await?;
        let l = out.to_ascii_lowercase();
        if l.contains("is on") {
            Ok(PowerState::On)
        } else if l.contains("is off") {
            Ok(PowerState::Off)
        } else {
            bail!(
                "BMC {}:{}: unexpected answer {:?}",
                self.host,
                self.port,
                out.trim()
            )
        }
    }

    async fn act(&self, action: PowerAction) -> Result<()> {
        let args: &[&str] = match action {
            PowerAction::On => &["chassis", "power", "on"],
            PowerAction::Off => &["chassis", "power", "off"],
            PowerAction::Cycle => &["chassis", "power", "cycle"],
            PowerAction::Pxe => &["chassis", "bootdev", "pxe"],
        };
        self.run(args).await.map(|_| ())
    }

    fn kind(&self) -> &'static str {
        "ipmi"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::{require, Need};

    /// A BMC simulator (OpenIPMI's ipmi_sim) whose chassis starts a QEMU
    /// connected back to it through `ipmi-bmc-extern`, as a lab machine.
    pub(crate) struct Bmc {
        child: std::process::Child,
        /// RMCP+ port.
        pub port: u16,
        _dir: tempfile::TempDir,
    }

    impl Drop for Bmc {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // The simulated machine's QEMU dies with its BMC connection.
            let _ = std::process::Command::new("pkill")
                .args(["-f", &format!("port={},reconnect", self.port + 1)])
                .status();
        }
    }

    fn free_port_pair() -> u16 {
        loop {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = u.local_addr().unwrap().port();
            if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                return p;
            }
        }
    }

    pub(crate) fn start_bmc(password: &str) -> Bmc {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let vm = port + 1;
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::write(
            dir.path().join("lan.conf"),
            format!(
                r#"name "bsim"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 {vm} codec VM
  startcmd "qemu-system-x86_64 -M pc -accel tcg -m 64 -nodefaults -display none -chardev socket,id=ipmi0,host=127.0.0.1,port={vm},reconnect=1 -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0"
  startnow false
  poweroff_wait 2
  kill_wait 2
  user 2 true "admin" "{password}" admin 10 md5
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bsim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .unwrap();
        let child = std::process::Command::new("ipmi_sim")
            .args(["-c", "lan.conf", "-f", "bsim.emu", "-s", "state", "-n"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Bmc {
            child,
            port,
            _dir: dir,
        }
    }

    pub(crate) fn login(password: &str) -> IpmiLogin {
        IpmiLogin {
            user: "admin".into(),
            password: password.into(),
            // ipmi_sim does not offer ipmitool's default suite 17.
            cipher_suite: Some(3),
        }
    }

    pub(crate) async fn wait_state(d: &dyn PowerDriver, want: PowerState) -> PowerState {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = d.status().await;
            if let Ok(s) = got {
                if s == want || std::time::Instant::now() > deadline {
                    return s;
                }
            } else if std::time::Instant::now() > deadline {
                got.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Against OpenIPMI's BMC simulator over RMCP+: power on starts the
    /// simulated machine, off stops it, a wrong password is refused and the
    /// password appears in no error.
    #[tokio::test]
    async fn ipmi_powers_a_simulated_machine_on_and_off() {
        if !require(
            "ipmi_powers_a_simulated_machine_on_and_off",
            &[
                Need::Tool("ipmi_sim"),
                Need::Tool("ipmitool"),
                Need::Tool("qemu-system-x86_64"),
            ],
        ) {
            return;
        }
        let bmc = start_bmc("s3cret-bmc-pw");
        let d = Ipmi::new(
            "127.0.0.1".into(),
            bmc.port,
            login("s3cret-bmc-pw"),
            Duration::from_secs(5),
        );
        assert_eq!(wait_state(&d, PowerState::Off).await, PowerState::Off);
        d.act(PowerAction::On).await.unwrap();
        assert_eq!(wait_state(&d, PowerState::On).await, PowerState::On);
        d.act(PowerAction::Off).await.unwrap();
        assert_eq!(wait_state(&d, PowerState::Off).await, PowerState::Off);
        let bad = Ipmi::new(
            "127.0.0.1".into(),
            bmc.port,
            login("wrong-password"),
            Duration::from_secs(5),
        );
        let e = format!("{:#}", bad.status().await.unwrap_err());
        assert!(
            !e.contains("wrong-password") && !e.contains("s3cret"),
            "{e}"
        );
    }
}
