//! Agent configuration: the `bootsrv.*` keys of the kernel command line,
//! overridden by environment variables, then by command-line flags, then by
//! the credentials file.
//!
//! **Credentials file** (default `/run/node-agent/credentials`, flag
//! `--credentials-file`): optional, same `key=value` syntax and `bootsrv.*`
//! keys as the kernel command line (`bootsrv.server`, `bootsrv.token`,
//! `bootsrv.node`). It is the one source that can change while the agent runs
//! (an operator or a provisioning hook writes a fresh token there), so it wins
//! over everything else. The agent re-reads every source with
//! [`Config::reload`] whenever the server answers 401.

use anyhow::{bail, Context, Result};
use boot_proto::cmdline;
use std::path::PathBuf;

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the boot server, e.g. `http://10.77.0.1:8080` (no trailing `/`).
    pub server: String,
    /// SHA-256 of the server's TLS certificate, pinned for an `https://` server.
    pub tls_pin: Option<String>,
    /// Node id the server assigned (`bootsrv.node`), if given.
    pub node: Option<String>,
    /// Agent token sent with every call (`bootsrv.token`).
    pub token: String,
    /// Image the node booted (`bootsrv.image`), if given.
    pub image: Option<String>,
    /// MAC from `BOOTIF=01-aa-bb-..` if the boot loader passed one, normalised to `aa:bb:..`.
    pub bootif_mac: Option<String>,
    /// Directory of the EFI variables (`/sys/firmware/efi/efivars`).
    pub efivars_dir: PathBuf,
    /// Directory of the local application hooks (`/etc/node-agent/hooks`).
    pub hooks_dir: PathBuf,
    /// Optional HTTP-boot URI used when a network boot entry has to be created
    /// from scratch (`bootsrv.httpboot=` or `--http-boot-url`).
    pub http_boot_url: Option<String>,
    /// Never reboot or kexec for real: log and report instead (tests, dev runs).
    pub dry_run: bool,
    /// Long-poll wait the agent asks the server for, in seconds.
    pub poll_wait_secs: u64,
    /// Per-boot agent state (done command ids, unacknowledged results):
    /// `/run/node-agent` by default, a tmpfs that lives exactly one boot.
    pub state_dir: PathBuf,
    /// File the slot's host name is written to (`--hostname-file`;
    /// `/etc/hostname` by default, none in dry-run unless given).
    pub hostname_file: Option<PathBuf>,
    /// Root under which a clone's first boot renews `/etc/machine-id` and
    /// the SSH host keys (`--identity-root`; `/` by default, none in
    /// dry-run unless given).
    pub identity_root: Option<PathBuf>,
    /// Optional credentials file (see the module doc).
    pub credentials_file: PathBuf,
    /// Directory of the image cache (`--image-cache`; `<state dir>/images`,
    /// in RAM, by default).
    pub image_cache: PathBuf,
    /// One-time hand-off credential of a pre-staged boot (`bootsrv.handoff`,
    /// kernel command line only), exchanged for the token at start.
    pub handoff: Option<String>,
    /// The arguments this configuration came from, for [`Config::reload`].
    pub args: Vec<String>,
}

/// Key/value pairs of a kernel command line (`key=value` or bare `key`).
/// Later occurrences win, as in the kernel's own parsing of `init=` and friends.
pub fn parse_cmdline(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.trim().chars().peekable();
    while chars.peek().is_some() {
        // One word; double quotes group spaces (e.g. `foo="a b"`).
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            chars.next();
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        if word.is_empty() {
            continue;
        }
        match word.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => out.push((word, String::new())),
        }
    }
    out
}

fn lookup<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `BOOTIF=01-52-54-00-12-34-56` (PXELINUX/iPXE style, leading ARP hardware
/// type) or a plain MAC, normalised to lower-case colon form.
pub fn parse_bootif(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split(['-', ':']).collect();
    let hex = match parts.len() {
        7 => &parts[1..],
        6 => &parts[..],
        _ => return None,
    };
    if hex
        .iter()
        .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Some(hex.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

const USAGE: &str = "usage: node-agent [--server URL] [--tls-pin SHA256] [--token T] [--node ID] [--image NAME] \
[--cmdline-file PATH] [--efivars-dir DIR] [--hooks-dir DIR] [--http-boot-url URL] \
[--poll-wait SECS] [--state-dir DIR] [--credentials-file PATH] [--hostname-file PATH] [--identity-root DIR] [--image-cache DIR] [--dry-run]\n\
env: BOOTSRV_SERVER BOOTSRV_TLS_PIN BOOTSRV_TOKEN BOOTSRV_NODE BOOTSRV_IMAGE NODE_AGENT_DRY_RUN=1 NODE_AGENT_LOG=debug";

impl Config {
    /// Builds the configuration from process arguments (without `argv[0]`) and an
    /// environment lookup. Precedence: flag > environment > kernel command line.
    pub fn from_sources(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut flags: Vec<(String, Option<String>)> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            match name.as_str() {
                "-h" | "--help" => bail!("{USAGE}"),
                "--dry-run" => flags.push((name, None)),
                "--server" | "--tls-pin" | "--token" | "--node" | "--image" | "--cmdline-file"
                | "--efivars-dir" | "--hooks-dir" | "--http-boot-url" | "--poll-wait"
                | "--state-dir" | "--credentials-file" | "--hostname-file" | "--identity-root"
                | "--image-cache" => {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .with_context(|| format!("{name} needs a value\n{USAGE}"))?
                            .clone(),
                    };
                    flags.push((name, Some(v)));
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        let flag = |n: &str| -> Option<String> {
            flags
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.clone())
        };
        let cmdline_path = flag("--cmdline-file").unwrap_or_else(|| "/proc/cmdline".into());
        let text = std::fs::read_to_string(&cmdline_path).unwrap_or_default();
        let kv = parse_cmdline(&text);
        let state_dir: PathBuf = flag("--state-dir")
            .unwrap_or_else(|| "/run/node-agent".into())
            .into();
        let credentials_file: PathBuf = flag("--credentials-file")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("credentials"));
        let creds = match std::fs::read_to_string(&credentials_file) {
            Ok(t) => parse_cmdline(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %credentials_file.display(), error = %e, "cannot read credentials file; ignoring it");
                Vec::new()
            }
        };
        let pick = |flag_name: &str, env_name: &str, key: &str| -> Option<String> {
            lookup(&creds, key)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .or_else(|| flag(flag_name))
                .or_else(|| env(env_name))
                .or_else(|| lookup(&kv, key).map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        let server = pick("--server", "BOOTSRV_SERVER", cmdline::SERVER).with_context(|| {
            format!(
                "no server: set {}= on the kernel command line, BOOTSRV_SERVER or --server",
                cmdline::SERVER
            )
        })?;
        let server = server.trim_end_matches('/').to_string();
        let tls_pin = pick("--tls-pin", "BOOTSRV_TLS_PIN", cmdline::TLS_PIN);
        if server.starts_with("https://") {
            let Some(pin) = &tls_pin else {
                bail!(
                    "server URL {server:?} is HTTPS: pin its certificate with {}= (its SHA-256), BOOTSRV_TLS_PIN or --tls-pin",
                    cmdline::TLS_PIN
                );
            };
            tls_pin::parse_fingerprint(pin)?;
        } else if !server.starts_with("http://") {
            bail!("server URL {server:?} must start with http:// or https://");
        }
        let poll_wait_secs = match flag("--poll-wait") {
            Some(s) => s.parse().with_context(|| format!("--poll-wait {s:?}"))?,
            None => 25,
        };
        let dry_run = flags.iter().any(|(k, _)| k == "--dry-run")
            || env("NODE_AGENT_DRY_RUN").is_some_and(|v| v == "1");
        let hostname_file = match flag("--hostname-file") {
            Some(p) => Some(PathBuf::from(p)),
            None if dry_run => None,
            None => Some("/etc/hostname".into()),
        };
        let identity_root = match flag("--identity-root") {
            Some(p) => Some(PathBuf::from(p)),
            None if dry_run => None,
            None => Some("/".into()),
        };
        Ok(Config {
            identity_root,
            server,
            tls_pin,
            node: pick("--node", "BOOTSRV_NODE", cmdline::NODE),
            token: pick("--token", "BOOTSRV_TOKEN", cmdline::TOKEN).unwrap_or_default(),
            image: pick("--image", "BOOTSRV_IMAGE", cmdline::IMAGE),
            bootif_mac: lookup(&kv, cmdline::BOOTIF).and_then(parse_bootif),
            efivars_dir: flag("--efivars-dir")
                .unwrap_or_else(|| "/sys/firmware/efi/efivars".into())
                .into(),
            hooks_dir: flag("--hooks-dir")
                .unwrap_or_else(|| "/etc/node-agent/hooks".into())
                .into(),
            http_boot_url: pick("--http-boot-url", "BOOTSRV_HTTPBOOT", cmdline::HTTPBOOT),
            dry_run,
            poll_wait_secs,
            hostname_file,
            credentials_file,
            image_cache: flag("--image-cache")
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("images")),
            handoff: lookup(&kv, cmdline::HANDOFF)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            state_dir,
            args: args.to_vec(),
        })
    }

    /// Re-reads every source (credentials file, environment, kernel command
    /// line) with the arguments this configuration was built from.
    pub fn reload(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        Config::from_sources(&self.args, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_cmdline_words_and_quotes() {
        let kv = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz quiet bootsrv.server=http://10.77.0.1:8080 \
             bootsrv.token=abc=def x=\"a b\" bootsrv.node=n1\n",
        );
        assert_eq!(lookup(&kv, "bootsrv.server"), Some("http://10.77.0.1:8080"));
        assert_eq!(lookup(&kv, "bootsrv.token"), Some("abc=def"));
        assert_eq!(lookup(&kv, "x"), Some("a b"));
        assert_eq!(lookup(&kv, "quiet"), Some(""));
        assert_eq!(lookup(&kv, "bootsrv.node"), Some("n1"));
    }

    #[test]
    fn parses_bootif() {
        assert_eq!(
            parse_bootif("01-52-54-00-AB-cd-ef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(
            parse_bootif("52:54:00:ab:cd:ef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(parse_bootif("01-52-54"), None);
        assert_eq!(parse_bootif("01-zz-54-00-ab-cd-ef"), None);
    }

    #[test]
    fn precedence_flag_env_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        std::fs::write(
            &p,
            "bootsrv.server=http://10.77.0.1:8080/ bootsrv.token=T1 bootsrv.node=n7 \
             bootsrv.image=lab BOOTIF=01-52-54-00-00-00-01",
        )
        .unwrap();
        let args: Vec<String> = vec!["--cmdline-file".into(), p.display().to_string()];
        let none = |_: &str| None;
        let c = Config::from_sources(&args, &none).unwrap();
        assert_eq!(c.server, "http://10.77.0.1:8080");
        assert_eq!(c.token, "T1");
        assert_eq!(c.node.as_deref(), Some("n7"));
        assert_eq!(c.image.as_deref(), Some("lab"));
        assert_eq!(c.bootif_mac.as_deref(), Some("52:54:00:00:00:01"));
        assert!(!c.dry_run);
        assert_eq!(c.hostname_file.as_deref(), Some(Path::new("/etc/hostname")));

        let env = |k: &str| (k == "BOOTSRV_TOKEN").then(|| "T2".to_string());
        let c = Config::from_sources(&args, &env).unwrap();
        assert_eq!(c.token, "T2");

        let mut args2 = args.clone();
        args2.extend(["--token=T3".into(), "--dry-run".into()]);
        let c = Config::from_sources(&args2, &env).unwrap();
        assert_eq!(c.token, "T3");
        assert!(c.dry_run);
        assert_eq!(
            c.hostname_file, None,
            "a dry run leaves /etc/hostname alone"
        );

        assert!(Config::from_sources(&["--bogus".into()], &none).is_err());

        // The credentials file beats flags, environment and command line, and
        // reload() picks up a file written after start.
        let creds = dir.path().join("creds");
        let mut args3 = args2.clone();
        args3.extend(["--credentials-file".into(), creds.display().to_string()]);
        let c = Config::from_sources(&args3, &env).unwrap();
        assert_eq!(c.token, "T3");
        std::fs::write(
            &creds,
            format!(
                "{}=T4 {}=http://10.9.9.9:80\n",
                cmdline::TOKEN,
                cmdline::SERVER
            ),
        )
        .unwrap();
        let c = c.reload(&env).unwrap();
        assert_eq!(c.token, "T4");
        assert_eq!(c.server, "http://10.9.9.9:80");
        assert_eq!(c.node.as_deref(), Some("n7"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "quiet").unwrap();
        let e = Config::from_sources(
            &["--cmdline-file".into(), empty.display().to_string()],
            &none,
        );
        assert!(e.is_err());
    }
}
