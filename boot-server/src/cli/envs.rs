//! The engine's commands: `env` (environments), `slot list` and `policy`.
//! Options are parsed by clap value parsers, so a malformed `--require`,
//! `--config`, `--hook`, `--schedule` or `--addresses` is a usage error
//! (exit 2) that says what to write. `env create` sends an environment
//! body; `env set` sends only what was given, merged client-side with the
//! current environment for maps (config, hooks, requirements), while
//! `--schedule` replaces the schedule list (`--clear-schedules` empties it).

use super::client::{CallError, Client};
use super::{enc, env_print, show, Failure};
use crate::model::{AddressRange, Schedule, ScheduleAction};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Map, Value};

/// `env` subcommands.
#[derive(Subcommand)]
pub enum EnvCmd {
    /// Create an environment (active unless --inactive).
    Create {
        /// Environment name (a-z, 0-9, '-').
        name: String,
        /// Boot image its nodes boot.
        #[arg(long)]
        image: String,
        /// The other settings.
        #[command(flatten)]
        opts: EnvOpts,
    },
    /// Change an environment: only the options given change.
    Set {
        /// Environment name.
        name: String,
        /// Boot image its nodes boot.
        #[arg(long)]
        image: Option<String>,
        /// The settings to change.
        #[command(flatten)]
        opts: EnvOpts,
        /// Remove a config key (repeatable).
        #[arg(long = "unset-config", value_name = "KEY")]
        unset_config: Vec<String>,
        /// Remove a hook: start, stop, health, busy, prepare-clone, clone-done or purge-sessions (repeatable).
        #[arg(long = "unset-hook", value_name = "NAME", value_parser = HOOKS)]
        unset_hook: Vec<String>,
        /// Drop every requirement (before adding the --require ones).
        #[arg(long)]
        clear_requirements: bool,
        /// Drop every schedule.
        #[arg(long, conflicts_with = "schedules")]
        clear_schedules: bool,
    },
    /// Every environment with its node counts.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// An environment, its slots and their last move's timings.
    Show {
        /// Environment name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete an environment (refused while it holds nodes: deactivate it first).
    Delete {
        /// Environment name.
        name: String,
    },
    /// Make an environment active (it claims nodes).
    Activate {
        /// Environment name.
        name: String,
    },
    /// Make an environment inactive (it gives its nodes back).
    Deactivate {
        /// Environment name.
        name: String,
    },
    /// Set the number of nodes it wants (min ≤ N ≤ max).
    Scale {
        /// Environment name.
        name: String,
        /// Nodes wanted.
        nodes: u32,
    },
    /// Put an idle pool node (id or MAC) into the environment.
    AddNode {
        /// Environment name.
        name: String,
        /// Node id or MAC.
        node: String,
    },
    /// Take a node out of the environment (back to the pool). Given a slot
    /// index, or for a clone's node, the slot goes away too once its node has
    /// left (its disk kept unless --delete-disk).
    RemoveNode {
        /// Environment name.
        name: String,
        /// Node id or MAC, or a slot index.
        node: String,
        /// Delete the slot's overlay too (the slot goes away).
        #[arg(long)]
        delete_disk: bool,
    },
    /// Clone a running slot into a new slot while it keeps serving: its
    /// prepare-clone hook (may refuse), freeze, snapshot of its disk, thaw,
    /// clone-done; the new slot boots from the snapshot with its own host
    /// name, address, machine id and SSH host keys, then joins.
    Clone {
        /// Environment name.
        name: String,
        /// The (ready) slot to clone.
        slot: u32,
        /// The new slot's index (default: the lowest free one).
        #[arg(long)]
        into: Option<u32>,
        /// Go on when the prepare-clone hook refuses.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text (the API's answer as is).
        #[arg(long)]
        json: bool,
    },
    /// Cut a node out without stopping it (kept up for inspection, never allocated).
    Quarantine {
        /// Environment name.
        name: String,
        /// Node id or MAC.
        node: String,
    },
    /// Write the environment (definition, slots, image, base and overlays,
    /// access settings) as one bundle file for `env import` on another server.
    Export {
        /// Environment name.
        name: String,
        /// Bundle file to write (`-`: standard output).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: String,
        /// Deactivate the environment first and wait until its nodes are
        /// released (otherwise its disks are snapshotted while it runs).
        #[arg(long)]
        halt: bool,
    },
    /// Create an environment (inactive) from a bundle of `env export`:
    /// everything is verified before anything is created.
    Import {
        /// Bundle file (`-`: standard input).
        file: String,
        /// Create it under this name (its disks and host names follow).
        #[arg(long = "as", value_name = "NEW_NAME")]
        as_name: Option<String>,
        /// Move its addresses into this subnet (same host offsets).
        #[arg(long, value_name = "CIDR", conflicts_with = "map_addresses")]
        subnet: Option<String>,
        /// File of `OLD NEW` address lines (the range moves as one).
        #[arg(long, value_name = "FILE")]
        map_addresses: Option<std::path::PathBuf>,
        /// File of `FROM NODE` lines: FROM is a source node id or `slotN`;
        /// unmapped slots get nodes from the engine's allocation.
        #[arg(long, value_name = "FILE")]
        map_nodes: Option<std::path::PathBuf>,
        /// Verify the bundle and print the plan; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load reports of its nodes and the engine's decisions about it.
    History {
        /// Environment name.
        name: String,
        /// Only from this time on (ms since the Unix epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Print JSON instead of text (the API's answer as is).
        #[arg(long)]
        json: bool,
    },
}

/// Options shared by `env create` and `env set` (each optional).
#[derive(Args)]
pub struct EnvOpts {
    /// Free text for operators.
    #[arg(long)]
    description: Option<String>,
    /// Never fewer nodes while active.
    #[arg(long)]
    min: Option<u32>,
    /// Nodes wanted now.
    #[arg(long = "nodes")]
    desired: Option<u32>,
    /// Never more nodes.
    #[arg(long)]
    max: Option<u32>,
    /// Higher takes nodes from lower.
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Share of the pool in percent (`none` clears it).
    #[arg(long, value_name = "PCT|none", value_parser = parse_share)]
    share: Option<Clearable<u32>>,
    /// Its nodes may be taken by higher priorities (`--preemptible=false` to forbid).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    preemptible: Option<bool>,
    /// Base disk of each slot's overlay (`none` clears it).
    #[arg(long, value_name = "BASE|none", value_parser = parse_disk_base)]
    disk_base: Option<Clearable<String>>,
    /// Host name of slot N, e.g. 'web-{slot}' ({env} is the environment's name).
    #[arg(long)]
    hostname_pattern: Option<String>,
    /// Addresses of the slots in index order, FIRST-LAST (`none`: nodes keep their lease).
    #[arg(long, value_name = "FIRST-LAST|none", value_parser = parse_addresses)]
    addresses: Option<Clearable<AddressRange>>,
    /// firmware=bios | cpus=N | memory-mib=N | label:KEY=VALUE (repeatable).
    #[arg(long = "require", value_name = "REQ", value_parser = parse_require)]
    requires: Vec<Require>,
    /// NAME=FILE: FILE's text becomes the start, stop, health or busy hook (repeatable).
    #[arg(long = "hook", value_name = "NAME=FILE", value_parser = parse_hook)]
    hooks: Vec<(String, String)>,
    /// KEY=VALUE delivered to every slot (repeatable).
    #[arg(long = "config", id = "env_config", value_name = "KEY=VALUE", value_parser = parse_kv)]
    config: Vec<(String, String)>,
    /// 'CRON=>activate', 'CRON=>deactivate' or 'CRON=>scale:N'; CRON has
    /// seconds first (sec min hour dom month dow [year], UTC). Repeatable; on
    /// `env set` the given ones replace the list.
    #[arg(long = "schedule", id = "schedules", value_name = "CRON=>ACTION", value_parser = parse_schedule)]
    schedules: Vec<Schedule>,
    /// Created inactive (`env set --inactive=false` activates).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    inactive: Option<bool>,
    /// Moves: warm (kexec when the agent is up) or cold (always reboot).
    #[arg(long, value_parser = ["warm", "cold"])]
    boot: Option<String>,
    /// Failure detection (repeatable, merged on `env set`): silence=SECS|default
    /// (heartbeat timeout), health-failures=N (failed health hooks in a row; 0 =
    /// off), app-failure=BOOL (the agent reporting the app failed), power-watch=BOOL.
    #[arg(long = "detect", value_name = "KEY=VALUE", value_parser = parse_detect)]
    detect: Vec<(String, Value)>,
    /// When a slot standing on a VM moves back to its repaired node:
    /// immediate, when-idle (its busy hook says not busy), never, or
    /// window=HH:MM-HH:MM (UTC, may wrap midnight) | window=CRON (seconds
    /// first; open during each minute it matches: '0 * 2 * * *' is 02:00-03:00).
    #[arg(long, value_name = "POLICY", value_parser = parse_failback)]
    failback: Option<(String, Option<String>)>,
    /// Which VM a failing-over slot gets when no spare node is free:
    /// sequential (the next free place on the least-loaded host) or
    /// one-to-one (a standby VM reserved per protected node).
    #[arg(long, value_parser = ["sequential", "one-to-one"])]
    vm_mapping: Option<String>,
    /// Version label of what it runs.
    #[arg(long)]
    version: Option<String>,
}

/// `slot` subcommands.
#[derive(Subcommand)]
pub enum SlotCmd {
    /// Slots of every environment, or of ENV.
    List {
        /// Only this environment's slots.
        env: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `policy` subcommands.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Scale ENV by load: add a node when the metric stays above X for the
    /// window, remove one when it stays below Y.
    Set {
        /// Environment name.
        env: String,
        /// Add a node when the metric's average stays above this.
        #[arg(long, allow_hyphen_values = true)]
        add_above: f64,
        /// Remove a (not busy) node when it stays below this.
        #[arg(long, allow_hyphen_values = true)]
        remove_below: f64,
        /// Window in seconds.
        #[arg(long = "window")]
        window_secs: u64,
        /// Health key averaged over the nodes (`load`: 1-minute load average).
        #[arg(long, default_value = "load")]
        metric: String,
    },
    /// Remove ENV's policy.
    Clear {
        /// Environment name.
        env: String,
    },
}

/// A value or `none` (clears the field).
#[derive(Clone, Debug)]
pub enum Clearable<T> {
    /// Set the field to this.
    Set(T),
    /// Clear the field (`none`).
    Clear,
}

impl<T: serde::Serialize> Clearable<T> {
    fn to_json(&self) -> Value {
        match self {
            Clearable::Set(v) => json!(v),
            Clearable::Clear => Value::Null,
        }
    }
}

fn clearable<T>(s: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Clearable<T>, String> {
    if s == "none" {
        Ok(Clearable::Clear)
    } else {
        f(s).map(Clearable::Set)
    }
}

fn parse_failback(s: &str) -> Result<(String, Option<String>), String> {
    if let Some(w) = s.strip_prefix("window=") {
        crate::model::failback_window_open(w, 0)?;
        return Ok(("window".into(), Some(w.trim().to_string())));
    }
    match s {
        "immediate" | "when-idle" | "never" => Ok((s.to_string(), None)),
        _ => Err(format!(
            "{s:?}: immediate, when-idle, never, window=HH:MM-HH:MM or window=CRON"
        )),
    }
}

fn parse_share(s: &str) -> Result<Clearable<u32>, String> {
    clearable(s, |s| {
        s.trim_end_matches('%')
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| "give a percentage 0..100, or none".to_string())
    })
}

fn parse_disk_base(s: &str) -> Result<Clearable<String>, String> {
    clearable(s, |s| {
        if s.is_empty() {
            Err("give a base disk name (boot-server disk list), or none".into())
        } else {
            Ok(s.to_string())
        }
    })
}

fn parse_addresses(s: &str) -> Result<Clearable<AddressRange>, String> {
    clearable(s, |s| s.parse::<AddressRange>())
}

/// One `--require`.
#[derive(Clone, Debug, PartialEq)]
pub enum Require {
    /// `firmware=NAME`.
    Firmware(String),
    /// `cpus=N`: at least N CPUs.
    Cpus(u32),
    /// `memory-mib=N`: at least N MiB.
    MemoryMib(u64),
    /// `label:KEY=VALUE`.
    Label(String, String),
}

const REQUIRE_USAGE: &str =
    "use firmware=bios|uefi-x64|..., cpus=N, memory-mib=N or label:KEY=VALUE";

fn parse_require(s: &str) -> Result<Require, String> {
    if let Some(label) = s.strip_prefix("label:") {
        let (k, v) = parse_kv(label).map_err(|_| format!("{s:?}: {REQUIRE_USAGE}"))?;
        return Ok(Require::Label(k, v));
    }
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: {REQUIRE_USAGE}"))?;
    let number = || format!("{s:?}: {k} takes a whole number");
    match k {
        "firmware" if !v.is_empty() => Ok(Require::Firmware(v.to_string())),
        "cpus" => v.parse().map(Require::Cpus).map_err(|_| number()),
        "memory-mib" => v.parse().map(Require::MemoryMib).map_err(|_| number()),
        _ => Err(format!("{s:?}: {REQUIRE_USAGE}")),
    }
}

/// `--detect KEY=VALUE`: the [`Detection`](crate::model::Detection) field and its JSON value.
fn parse_detect(s: &str) -> Result<(String, Value), String> {
    const USAGE: &str = "use silence=SECS|default, health-failures=N, app-failure=true|false or power-watch=true|false";
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: {USAGE}"))?;
    let bad = || format!("{s:?}: {USAGE}");
    let flag = || v.parse::<bool>().map(Value::from).map_err(|_| bad());
    match k {
        "silence" if v == "default" => Ok(("heartbeat_timeout_secs".into(), Value::Null)),
        "silence" => v
            .parse::<u64>()
            .map(|n| ("heartbeat_timeout_secs".into(), json!(n)))
            .map_err(|_| bad()),
        "health-failures" => v
            .parse::<u32>()
            .map(|n| ("health_failures".into(), json!(n)))
            .map_err(|_| bad()),
        "app-failure" => Ok(("app_failure".into(), flag()?)),
        "power-watch" => Ok(("power_watch".into(), flag()?)),
        _ => Err(bad()),
    }
}

/// `KEY=VALUE` (also `node add --label`).
pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: use KEY=VALUE")),
    }
}

const HOOKS: [&str; 7] = boot_proto::HOOK_NAMES;

fn parse_hook(s: &str) -> Result<(String, String), String> {
    let names = HOOKS.join(", ");
    let (name, file) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use NAME=FILE with NAME one of {names}"))?;
    if !HOOKS.contains(&name) {
        return Err(format!("{name:?} is not a hook: use one of {names}"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
    Ok((name.to_string(), text))
}

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let usage = "use 'CRON=>activate', 'CRON=>deactivate' or 'CRON=>scale:N'";
    let (cron, action) = s
        .rsplit_once("=>")
        .ok_or_else(|| format!("{s:?}: {usage}"))?;
    let action = match action.trim() {
        "activate" => ScheduleAction::Activate,
        "deactivate" => ScheduleAction::Deactivate,
        a => match a.strip_prefix("scale:").map(|n| n.trim().parse::<u32>()) {
            Some(Ok(n)) => ScheduleAction::Scale(n),
            _ => return Err(format!("{a:?}: {usage}")),
        },
    };
    let sched = Schedule {
        cron: cron.trim().to_string(),
        action,
    };
    sched.parse_cron()?;
    Ok(sched)
}

/// The JSON fields `opts` set; `current` (the stored environment, for
/// `env set`) is what maps are merged into.
fn fields(opts: EnvOpts, current: Option<&Value>) -> Map<String, Value> {
    let mut f = Map::new();
    let mut put = |k: &str, v: Value| {
        f.insert(k.to_string(), v);
    };
    if let Some(v) = opts.description {
        put("description", json!(v));
    }
    if let Some(v) = opts.min {
        put("min", json!(v));
    }
    if let Some(v) = opts.desired {
        put("desired", json!(v));
    }
    if let Some(v) = opts.max {
        put("max", json!(v));
    }
    if let Some(v) = opts.priority {
        put("priority", json!(v));
    }
    if let Some(v) = opts.share {
        put("share_pct", v.to_json());
    }
    if let Some(v) = opts.preemptible {
        put("preemptible", json!(v));
    }
    if let Some(v) = opts.disk_base {
        put("disk_base", v.to_json());
    }
    if let Some(v) = opts.hostname_pattern {
        put("hostname_pattern", json!(v));
    }
    if let Some(v) = opts.addresses {
        put("addresses", v.to_json());
    }
    if let Some(v) = opts.inactive {
        put("active", json!(!v));
    }
    if let Some(v) = opts.boot {
        put("boot", json!(v));
    }
    if let Some((policy, window)) = opts.failback {
        put("failback", json!(policy));
        put("failback_window", json!(window));
    }
    if let Some(v) = opts.vm_mapping {
        put("vm_mapping", json!(v));
    }
    if let Some(v) = opts.version {
        put("version", json!(v));
    }
    let base = |k: &str| {
        current
            .and_then(|c| c.get(k))
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}))
    };
    if !opts.requires.is_empty() {
        let mut r = base("requirements");
        for req in opts.requires {
            match req {
                Require::Firmware(fw) => r["firmware"] = json!(fw),
                Require::Cpus(n) => r["min_cpus"] = json!(n),
                Require::MemoryMib(n) => r["min_memory_mib"] = json!(n),
                Require::Label(k, v) => {
                    if !r["labels"].is_object() {
                        r["labels"] = json!({});
                    }
                    r["labels"][k] = json!(v);
                }
            }
        }
        put("requirements", r);
    }
    if !opts.detect.is_empty() {
        let mut d = base("detection");
        for (k, v) in opts.detect {
            d[k] = v;
        }
        put("detection", d);
    }
    if !opts.hooks.is_empty() {
        let mut h = base("hooks");
        for (name, text) in opts.hooks {
            h[name] = json!(text);
        }
        put("hooks", h);
    }
    if !opts.config.is_empty() {
        let mut c = base("config");
        for (k, v) in opts.config {
            c[k] = json!(v);
        }
        put("config", c);
    }
    if !opts.schedules.is_empty() {
        put("schedules", json!(opts.schedules));
    }
    f
}

fn env_path(name: &str) -> String {
    format!("/api/environments/{}", enc(name))
}

/// One line about an environment after a change.
fn summary(verb: &str, v: &Value) {
    println!(
        "{verb} environment {} ({}, {} of {}..{} nodes wanted, holding {})",
        v["name"].as_str().unwrap_or("?"),
        if v["active"] == true {
            "active"
        } else {
            "inactive"
        },
        v["desired"],
        v["min"],
        v["max"],
        v["holding"]
    );
}

/// Runs an `env` command.
pub async fn env_command(c: &Client, cmd: EnvCmd) -> Result<(), Failure> {
    match cmd {
        EnvCmd::Create { name, image, opts } => {
            let mut body = fields(opts, None);
            body.insert("name".into(), json!(name));
            body.insert("image".into(), json!(image));
            let v = c
                .json(Method::POST, "/api/environments", Some(Value::Object(body)))
                .await?;
            summary("created", &v);
        }
        EnvCmd::Set {
            name,
            image,
            opts,
            unset_config,
            unset_hook,
            clear_requirements,
            clear_schedules,
        } => {
            let mut current = c.json(Method::GET, &env_path(&name), None).await?;
            for k in &unset_config {
                if let Some(m) = current["config"].as_object_mut() {
                    m.remove(k);
                }
            }
            for k in &unset_hook {
                if let Some(m) = current["hooks"].as_object_mut() {
                    m.remove(k);
                }
            }
            if clear_requirements {
                current["requirements"] = json!({});
            }
            let mut body = fields(opts, Some(&current));
            for (changed, key) in [
                (!unset_config.is_empty(), "config"),
                (!unset_hook.is_empty(), "hooks"),
                (clear_requirements, "requirements"),
            ] {
                if changed && !body.contains_key(key) {
                    body.insert(key.into(), current[key].clone());
                }
            }
            if clear_schedules {
                body.insert("schedules".into(), json!([]));
            }
            if let Some(i) = image {
                body.insert("image".into(), json!(i));
            }
            if body.is_empty() {
                return Err(Failure {
                    code: 2,
                    error: anyhow::anyhow!(
                        "nothing to change: give at least one option (see env set --help)"
                    ),
                });
            }
            let v = c
                .json(Method::PATCH, &env_path(&name), Some(Value::Object(body)))
                .await?;
            summary("changed", &v);
        }
        EnvCmd::List { json } => {
            let v = c.json(Method::GET, "/api/environments", None).await?;
            if json {
                show(&v)
            } else {
                env_print::environments(&v)
            }
        }
        EnvCmd::Show { name, json } => {
            let v = c.json(Method::GET, &env_path(&name), None).await?;
            if json {
                show(&v)
            } else {
                env_print::environment(&v)
            }
        }
        EnvCmd::Delete { name } => {
            c.json(Method::DELETE, &env_path(&name), None).await?;
            println!("deleted environment {name}");
        }
        EnvCmd::Activate { name } => {
            let v = c
                .json(Method::POST, &format!("{}/activate", env_path(&name)), None)
                .await?;
            summary("activated", &v);
        }
        EnvCmd::Deactivate { name } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("{}/deactivate", env_path(&name)),
                    None,
                )
                .await?;
            summary("deactivated", &v);
        }
        EnvCmd::Scale { name, nodes } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("{}/scale", env_path(&name)),
                    Some(json!({ "nodes": nodes })),
                )
                .await?;
            summary("scaled", &v);
        }
        EnvCmd::AddNode { name, node } => {
            let v = node_call(c, &name, "add-node", &node).await?;
            println!(
                "{} takes slot {} of {name} ({}, {})",
                v["node"].as_str().unwrap_or(&node),
                v["index"],
                v["hostname"].as_str().unwrap_or("?"),
                v["step"].as_str().unwrap_or("?")
            );
        }
        EnvCmd::RemoveNode {
            name,
            node,
            delete_disk,
        } => {
            let mut body = match node.parse::<u32>() {
                Ok(i) => json!({ "slot": i }),
                Err(_) => json!({ "node": node }),
            };
            if delete_disk {
                body["delete_disk"] = json!(true);
            }
            let v = c
                .json(
                    Method::POST,
                    &format!("{}/remove-node", env_path(&name)),
                    Some(body),
                )
                .await?;
            let gone = if v["removal"].is_null() {
                String::new()
            } else if delete_disk {
                "; the slot and its disk go away".into()
            } else {
                format!(
                    "; the slot goes away, disk {} kept",
                    v["overlay"].as_str().unwrap_or("-")
                )
            };
            println!(
                "{} leaves slot {} of {name} ({}{gone})",
                v["node"].as_str().unwrap_or("no node"),
                v["index"],
                v["step"].as_str().unwrap_or("?")
            );
        }
        EnvCmd::Clone {
            name,
            slot,
            into,
            force,
            json,
        } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("{}/clone", env_path(&name)),
                    Some(json!({ "slot": slot, "into": into, "force": force })),
                )
                .await?;
            if json {
                show(&v)
            } else {
                let j = &v["job"];
                let ns = &v["new_slot"];
                println!(
                    "cloned {name} slot {slot} into slot {} ({}): template paused {} ms, snapshot {} ms, disk {}; {} ({}) waits for a node",
                    j["into"],
                    j["phase"].as_str().unwrap_or("?"),
                    j["pause_ms"].as_i64().map_or("?".into(), |p| p.to_string()),
                    j["snapshot_ms"].as_i64().map_or("?".into(), |p| p.to_string()),
                    j["overlay"].as_str().unwrap_or("-"),
                    ns["hostname"].as_str().unwrap_or("?"),
                    ns["ip"].as_str().unwrap_or("no fixed address"),
                );
                if let Some(d) = j["detail"].as_str().filter(|d| !d.is_empty()) {
                    println!("  {d}");
                }
            }
        }
        EnvCmd::Quarantine { name, node } => {
            let v = node_call(c, &name, "quarantine", &node).await?;
            println!(
                "{} is {} (cut out of {name}, kept running)",
                v["id"].as_str().unwrap_or(&node),
                v["state"].as_str().unwrap_or("?")
            );
        }
        EnvCmd::Export { name, output, halt } => {
            super::bundles::export(c, &name, &output, halt).await?;
        }
        EnvCmd::Import {
            file,
            as_name,
            subnet,
            map_addresses,
            map_nodes,
            dry_run,
            json,
        } => {
            let opts = super::bundles::ImportArgs {
                as_name,
                subnet,
                map_addresses,
                map_nodes,
                dry_run,
                json,
            };
            super::bundles::import(c, &file, opts).await?;
        }
        EnvCmd::History {
            name,
            since_ms,
            json,
        } => {
            let v = c
                .json(
                    Method::GET,
                    &format!(
                        "{}/history?since_ms={}",
                        env_path(&name),
                        since_ms.unwrap_or(0)
                    ),
                    None,
                )
                .await?;
            if json {
                show(&v)
            } else {
                env_print::history(&v)
            }
        }
    }
    Ok(())
}

async fn node_call(c: &Client, env: &str, what: &str, node: &str) -> Result<Value, CallError> {
    c.json(
        Method::POST,
        &format!("{}/{what}", env_path(env)),
        Some(json!({ "node": node })),
    )
    .await
}

/// Runs a `slot` command.
pub async fn slot_command(c: &Client, cmd: SlotCmd) -> Result<(), Failure> {
    match cmd {
        SlotCmd::List { env, json } => {
            let path = match &env {
                Some(e) => format!("/api/slots?environment={}", enc(e)),
                None => "/api/slots".to_string(),
            };
            let v = c.json(Method::GET, &path, None).await?;
            if json {
                show(&v)
            } else {
                env_print::slots(&v, true)
            }
        }
    }
    Ok(())
}

/// Runs a `policy` command.
pub async fn policy_command(c: &Client, cmd: PolicyCmd) -> Result<(), Failure> {
    let (env, body) = match cmd {
        PolicyCmd::Set {
            env,
            add_above,
            remove_below,
            window_secs,
            metric,
        } => (
            env,
            json!({ "metric": metric, "add_above": add_above, "remove_below": remove_below, "window_secs": window_secs }),
        ),
        PolicyCmd::Clear { env } => (env, Value::Null),
    };
    let v = c
        .json(
            Method::PUT,
            &format!("{}/policy", env_path(&env)),
            Some(body),
        )
        .await?;
    println!("{env}: {}", env_print::policy(&v["policy"]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks (duplicate options etc.) run only in debug builds
        // or here: `env create --config KEY=VALUE` beside `boot-server --config FILE`.
        use clap::CommandFactory;
        super::super::Cli::command().debug_assert();
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from([
            "boot-server",
            "--config",
            "f.toml",
            "env",
            "create",
            "web",
            "--image",
            "lab",
            "--config",
            "role=a",
            "--preemptible",
            "--priority",
            "-2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("f.toml")));
        let super::super::Cmd::Env(cmd) = cli.command else {
            panic!("not env")
        };
        let EnvCmd::Create { opts, .. } = *cmd else {
            panic!("not env create")
        };
        assert_eq!(opts.config, vec![("role".to_string(), "a".to_string())]);
        assert_eq!(opts.preemptible, Some(true));
        assert_eq!(opts.priority, Some(-2));
        let serve =
            super::super::Cli::try_parse_from(["boot-server", "serve", "--config", "f.toml"])
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            serve.command,
            super::super::Cmd::Serve {
                config: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn option_values_parse_or_say_what_to_write() {
        assert_eq!(
            parse_require("label:rack=r1").unwrap(),
            Require::Label("rack".into(), "r1".into())
        );
        assert_eq!(parse_require("cpus=2").unwrap(), Require::Cpus(2));
        assert_eq!(
            parse_require("memory-mib=512").unwrap(),
            Require::MemoryMib(512)
        );
        assert_eq!(
            parse_require("firmware=bios").unwrap(),
            Require::Firmware("bios".into())
        );
        assert!(parse_require("cpus=two")
            .unwrap_err()
            .contains("whole number"));
        assert!(parse_require("gpu=1")
            .unwrap_err()
            .contains("label:KEY=VALUE"));
        let s = parse_schedule("0 0 8 * * *=>scale:3").unwrap();
        assert_eq!(s.action, ScheduleAction::Scale(3));
        assert_eq!(s.cron, "0 0 8 * * *");
        assert_eq!(
            parse_schedule("*/5 * * * * * => deactivate")
                .unwrap()
                .action,
            ScheduleAction::Deactivate
        );
        assert!(parse_schedule("0 0 8 * * *=>scale:x").is_err());
        assert!(parse_schedule("0 0 8 * * *").is_err());
        assert!(parse_schedule("never=>activate")
            .unwrap_err()
            .contains("sec min hour"));
        assert!(parse_kv("=v").is_err());
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_hook("boot=/dev/null")
            .unwrap_err()
            .contains("not a hook"));
        assert!(parse_hook("start=/nonexistent/x")
            .unwrap_err()
            .contains("reading"));
        assert!(matches!(parse_share("none"), Ok(Clearable::Clear)));
        assert!(parse_share("150").is_err());
        assert!(parse_addresses("10.0.0.9-10.0.0.1").is_err());
    }

    #[test]
    fn set_merges_maps_and_replaces_schedules() {
        let current = json!({
            "config": {"a": "1", "b": "2"},
            "hooks": {"start": "old"},
            "requirements": {"labels": {"rack": "r1"}},
            "schedules": [{"cron": "0 0 1 * * *", "action": "activate"}]
        });
        let opts = EnvOpts {
            description: None,
            min: Some(1),
            desired: None,
            max: None,
            priority: None,
            share: Some(Clearable::Clear),
            preemptible: None,
            disk_base: None,
            hostname_pattern: None,
            addresses: None,
            requires: vec![Require::Cpus(2), Require::Label("zone".into(), "z".into())],
            hooks: vec![("health".into(), "echo load=1".into())],
            config: vec![("b".into(), "3".into())],
            schedules: vec![parse_schedule("0 0 2 * * *=>scale:2").unwrap()],
            inactive: Some(false),
            boot: Some("cold".into()),
            detect: vec![parse_detect("health-failures=3").unwrap()],
            failback: Some(parse_failback("window=22:00-02:00").unwrap()),
            vm_mapping: Some("one-to-one".into()),
            version: None,
        };
        let f = Value::Object(fields(opts, Some(&current)));
        assert_eq!(f["failback"], json!("window"));
        assert_eq!(f["failback_window"], json!("22:00-02:00"));
        assert_eq!(f["vm_mapping"], json!("one-to-one"));
        assert_eq!(parse_failback("never").unwrap(), ("never".into(), None));
        assert!(parse_failback("window=0 * 2 * * *").is_ok());
        assert!(parse_failback("window=25:00-01:00").is_err());
        assert!(parse_failback("window=not cron").is_err());
        assert!(parse_failback("sometimes").is_err());
        assert_eq!(f["config"], json!({"a": "1", "b": "3"}));
        assert_eq!(f["hooks"], json!({"start": "old", "health": "echo load=1"}));
        assert_eq!(
            f["requirements"],
            json!({"min_cpus": 2, "labels": {"rack": "r1", "zone": "z"}})
        );
        assert_eq!(
            f["schedules"],
            json!([{"cron": "0 0 2 * * *", "action": {"scale": 2}}])
        );
        assert_eq!(f["share_pct"], Value::Null);
        assert_eq!(f["active"], json!(true));
        assert_eq!(f["boot"], json!("cold"));
        assert_eq!(f["detection"], json!({"health_failures": 3}));
        assert!(parse_detect("silence=x").is_err());
        assert_eq!(parse_detect("silence=default").unwrap().1, Value::Null);
        assert_eq!(f["min"], json!(1));
        assert!(f.get("description").is_none() && f.get("max").is_none());
    }
}
