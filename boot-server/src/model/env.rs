//! Application environments (virtual clusters that claim nodes from the
//! pool), their slots (one per node position, with its own host name,
//! address and disk), the durable steps a slot goes through while a node is
//! moved into or out of it, scaling policies, schedules and load samples.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// An application environment: an image, how many nodes it wants, how it
/// ranks against the others, and what its nodes run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Environment {
    /// Unique name (`[a-z0-9-]`, ≤ 40 characters).
    pub name: String,
    /// Free text for operators.
    pub description: String,
    /// Boot image its nodes boot (a Linux image for warm moves by kexec).
    pub image: String,
    /// Base disk each slot's copy-on-write overlay is made from (root on NBD).
    pub disk_base: Option<String>,
    /// Never fewer nodes than this while active (preemption and policy respect it).
    pub min: u32,
    /// Nodes wanted now (set by `env scale`, policies and schedules).
    pub desired: u32,
    /// Never more nodes than this.
    pub max: u32,
    /// Higher takes nodes from lower when short of them.
    pub priority: i32,
    /// Share of the pool (percent) this environment is entitled to over the
    /// engine's sliding window; below it, it may take nodes from
    /// environments above theirs.
    pub share_pct: Option<u32>,
    /// Its nodes may be taken by higher-priority environments.
    pub preemptible: bool,
    /// What a node must have to serve here.
    pub requirements: Requirements,
    /// Application hooks delivered to the agent with each slot.
    #[schema(value_type = Object)]
    pub hooks: boot_proto::Hooks,
    /// Key/values delivered to every slot (a slot's own ones win).
    pub config: BTreeMap<String, String>,
    /// Host name of slot `n`: `{env}` and `{slot}` are replaced.
    pub hostname_pattern: String,
    /// Addresses given to slots in index order (DHCP reservations that
    /// follow whichever node holds the slot); none: nodes keep their lease.
    pub addresses: Option<AddressRange>,
    /// Start / stop / resize at given times.
    pub schedules: Vec<Schedule>,
    /// Load-driven scaling.
    pub policy: Option<Policy>,
    /// Inactive environments hold no nodes.
    pub active: bool,
    /// Warm moves (kexec when the agent is up) or always a cold reboot.
    pub boot: BootMode,
    /// How its nodes are judged failed (then fenced and their slots failed over).
    pub detection: Detection,
    /// When a slot that failed over to a VM moves back to its repaired node.
    pub failback: Failback,
    /// The maintenance window of `failback: window`: `HH:MM-HH:MM` (UTC;
    /// it may wrap past midnight) or a cron expression with seconds first
    /// whose matching minutes make the window ([`failback_window_open`]).
    pub failback_window: Option<String>,
    /// Which VM a slot failing over from one of its physical nodes gets
    /// when no spare node is free.
    pub vm_mapping: VmMapping,
    /// Software version label of what the environment runs.
    pub version: String,
    /// When it was created and last changed (ms since the epoch).
    pub created_ms: i64,
    /// Last change (ms since the epoch).
    pub updated_ms: i64,
}

impl Default for Environment {
    fn default() -> Self {
        Environment {
            name: String::new(),
            description: String::new(),
            image: String::new(),
            disk_base: None,
            min: 0,
            desired: 0,
            max: 16,
            priority: 0,
            share_pct: None,
            preemptible: true,
            requirements: Requirements::default(),
            hooks: boot_proto::Hooks::default(),
            config: BTreeMap::new(),
            hostname_pattern: "{env}-{slot}".into(),
            addresses: None,
            schedules: Vec::new(),
            policy: None,
            active: true,
            boot: BootMode::Warm,
            detection: Detection::default(),
            failback: Failback::default(),
            failback_window: None,
            vm_mapping: VmMapping::default(),
            version: String::new(),
            created_ms: 0,
            updated_ms: 0,
        }
    }
}

impl Environment {
    /// Nodes the environment should hold now.
    pub fn target(&self) -> u32 {
        if self.active {
            self.desired.clamp(self.min, self.max)
        } else {
            0
        }
    }

    /// Host name of slot `index`.
    pub fn hostname(&self, index: u32) -> String {
        self.hostname_pattern
            .replace("{env}", &self.name)
            .replace("{slot}", &index.to_string())
    }

    /// Address of slot `index`, if the environment gives addresses.
    pub fn address(&self, index: u32) -> Option<Ipv4Addr> {
        self.addresses.as_ref().and_then(|r| r.nth(index))
    }

    /// Overlay (disk) id of slot `index`, if the environment has a disk base.
    pub fn overlay(&self, index: u32) -> Option<String> {
        self.disk_base
            .as_ref()
            .map(|_| format!("{}-slot{index}", self.name))
    }

    /// Checks the fields an admin sets; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(format!(
                "environment name {:?}: use 1-40 of a-z, 0-9 and '-'",
                self.name
            ));
        }
        if self.image.is_empty() {
            return Err("an environment needs an image (--image)".into());
        }
        if self.min > self.max {
            return Err(format!("min {} is above max {}", self.min, self.max));
        }
        if self.max > 1024 {
            return Err(format!("max {} is above 1024", self.max));
        }
        if let Some(s) = self.share_pct {
            if s > 100 {
                return Err(format!("share {s}% is above 100%"));
            }
        }
        self.detection.validate()?;
        match (&self.failback, &self.failback_window) {
            (Failback::Window, None) => {
                return Err(
                    "failback window needs its window: window=HH:MM-HH:MM or window=CRON".into(),
                )
            }
            (_, Some(w)) => {
                failback_window_open(w, 0)?;
            }
            _ => {}
        }
        if let Some(r) = &self.addresses {
            if r.len() < self.max as u64 {
                return Err(format!(
                    "address range {r} has {} addresses for up to {} slots",
                    r.len(),
                    self.max
                ));
            }
        }
        let probe = self.hostname(self.max.max(1) - 1);
        let host_ok = !probe.is_empty()
            && probe.len() <= 63
            && probe.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !probe.starts_with('-');
        if !host_ok {
            return Err(format!(
                "hostname pattern {:?} gives {probe:?}, not a host name",
                self.hostname_pattern
            ));
        }
        for s in &self.schedules {
            s.parse_cron()?;
        }
        if let Some(p) = &self.policy {
            p.validate()?;
        }
        Ok(())
    }
}

/// When a slot standing on a VM goes back to its home node once that node
/// is repaired (it says hello again, or an admin marks it repaired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    /// As soon as the home node is back.
    Immediate,
    /// Once the VM's busy hook says it is not busy.
    #[default]
    WhenIdle,
    /// Never: the slot stays on the VM until an admin moves it.
    Never,
    /// Only inside the environment's maintenance window
    /// ([`Environment::failback_window`]); then as `immediate`.
    Window,
}

impl Failback {
    /// Parses the kebab-case names.
    pub fn parse(s: &str) -> Option<Failback> {
        match s {
            "immediate" => Some(Failback::Immediate),
            "when-idle" => Some(Failback::WhenIdle),
            "never" => Some(Failback::Never),
            "window" => Some(Failback::Window),
            _ => None,
        }
    }
}

/// Whether the maintenance window `spec` is open at `now_ms` (UTC), or
/// why `spec` is no window. `HH:MM-HH:MM`: from the first time (included)
/// to the second (excluded), wrapping past midnight when the second is
/// earlier. Otherwise a cron expression (the `cron` crate's syntax, seconds
/// first): the window is open during every minute that starts at a time it
/// matches, so `0 * 2 * * *` is 02:00-03:00 every day and `0 * 2-3 * * Sun`
/// is 02:00-04:00 on Sundays.
pub fn failback_window_open(spec: &str, now_ms: i64) -> Result<bool, String> {
    let spec = spec.trim();
    if let Some((a, b)) = spec.split_once('-').filter(|_| !spec.contains(' ')) {
        let minute = |t: &str| -> Result<i64, String> {
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| format!("{t:?}: write HH:MM"))?;
            let (h, m): (i64, i64) = (
                h.parse()
                    .map_err(|_| format!("{t:?}: hour is not a number"))?,
                m.parse()
                    .map_err(|_| format!("{t:?}: minute is not a number"))?,
            );
            if !(0..24).contains(&h) || !(0..60).contains(&m) {
                return Err(format!("{t:?}: not a time of day (00:00-23:59)"));
            }
            Ok(h * 60 + m)
        };
        let (start, end) = (minute(a)?, minute(b)?);
        if start == end {
            return Err(format!("failback window {spec:?} is empty"));
        }
        let now = now_ms.div_euclid(60_000).rem_euclid(1440);
        return Ok(if start < end {
            (start..end).contains(&now)
        } else {
            now >= start || now < end
        });
    }
    use chrono::{TimeZone, Utc};
    let cron: cron::Schedule = spec.parse().map_err(|e| {
        format!("failback window {spec:?}: {e} (HH:MM-HH:MM, or cron: sec min hour dom month dow [year])")
    })?;
    let Some(from) = Utc.timestamp_millis_opt(now_ms - 60_000).single() else {
        return Ok(false);
    };
    Ok(cron
        .after(&from)
        .next()
        .is_some_and(|t| t.timestamp_millis() <= now_ms))
}

/// How a failing-over slot's VM is found when no spare node is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmMapping {
    /// The next free VM place on the least-loaded live failover host.
    #[default]
    Sequential,
    /// Each physical node holding a slot has its own standby VM reserved on
    /// a failover host ([`crate::model::VmState::Reserved`]: defined — MAC,
    /// node, size, host — and counted against the host's reserve, but not
    /// running); that node's failover starts that VM. Without a usable
    /// standby (its host down) the slot falls back to sequential.
    OneToOne,
}

impl VmMapping {
    /// Parses the kebab-case names.
    pub fn parse(s: &str) -> Option<VmMapping> {
        match s {
            "sequential" => Some(VmMapping::Sequential),
            "one-to-one" => Some(VmMapping::OneToOne),
            _ => None,
        }
    }
}

/// Warm or cold moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// kexec into the new image when the agent is up (else cold).
    #[default]
    Warm,
    /// Always reboot through firmware.
    Cold,
}

/// An inclusive IPv4 range, written `10.0.0.10-10.0.0.20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    pub last: Ipv4Addr,
}

impl AddressRange {
    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last)).saturating_sub(u64::from(u32::from(self.first))) + 1
    }
    /// Whether the range is empty (never: first ≤ last is checked at parse).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The `n`th address (0-based), if inside the range.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let ip = u32::from(self.first).checked_add(n)?;
        (ip <= u32::from(self.last)).then(|| Ipv4Addr::from(ip))
    }
}

impl std::fmt::Display for AddressRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for AddressRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: write FIRST-LAST, e.g. 10.0.0.10-10.0.0.20"))?;
        let first: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?}: not an IPv4 address"))?;
        let last: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?}: not an IPv4 address"))?;
        if first > last {
            return Err(format!("{s}: the first address is above the last"));
        }
        Ok(AddressRange { first, last })
    }
}

/// OpenAPI: an address range is a string `FIRST-LAST`.
impl utoipa::PartialSchema for AddressRange {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::model::string_schema("An inclusive IPv4 range FIRST-LAST", "10.0.0.10-10.0.0.20")
    }
}

impl utoipa::ToSchema for AddressRange {}

impl Serialize for AddressRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddressRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a node must have to serve an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct Requirements {
    /// Firmware/architecture as seen at boot (`bios`, `uefi-x64`, ...).
    pub firmware: Option<String>,
    /// At least this many CPUs (agent inventory).
    pub min_cpus: Option<u32>,
    /// At least this much memory in MiB (agent inventory).
    pub min_memory_mib: Option<u64>,
    /// Labels the node must carry with these values (rack, location, ...).
    pub labels: BTreeMap<String, String>,
}

impl Requirements {
    /// Whether `node` meets them (unknown inventory fails a stated minimum).
    pub fn met_by(&self, node: &super::Node) -> bool {
        if let Some(f) = &self.firmware {
            if node.arch.as_deref() != Some(f.as_str()) {
                return false;
            }
        }
        let inv = node.inventory.as_ref();
        if let Some(c) = self.min_cpus {
            let cpus = inv.and_then(|i| i.get("cpus")).and_then(|v| v.as_u64());
            if cpus.unwrap_or(0) < u64::from(c) {
                return false;
            }
        }
        if let Some(m) = self.min_memory_mib {
            let mem = inv
                .and_then(|i| i.get("memory_bytes"))
                .and_then(|v| v.as_u64());
            if mem.unwrap_or(0) / (1024 * 1024) < m {
                return false;
            }
        }
        self.labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
    }
}

/// A timed change of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    /// When, in the `cron` crate's syntax with seconds
    /// (`sec min hour day-of-month month day-of-week [year]`), UTC.
    pub cron: String,
    /// What happens then.
    pub action: ScheduleAction,
}

impl Schedule {
    /// The parsed cron expression, or why it does not parse.
    pub fn parse_cron(&self) -> Result<cron::Schedule, String> {
        self.cron.parse::<cron::Schedule>().map_err(|e| {
            format!(
                "schedule {:?}: {e} (sec min hour dom month dow [year])",
                self.cron
            )
        })
    }
}

/// What a schedule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleAction {
    /// Make the environment active.
    Activate,
    /// Make it inactive (it gives its nodes back).
    Deactivate,
    /// Set its desired node count.
    Scale(u32),
}

/// How an environment's nodes are judged failed. Every way ends the same:
/// the node is marked failed, fenced, and its slot fails over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Detection {
    /// Heartbeat silence (seconds) after which a node holding a slot is
    /// failed; `None`: the server's `[agent] heartbeat_timeout_secs`.
    pub heartbeat_timeout_secs: Option<u64>,
    /// Heartbeats in a row whose health hook failed (`health=failed`)
    /// before the node is failed; 0 (default): the health hook only informs.
    pub health_failures: u32,
    /// The agent reporting the application failed (the start hook failed,
    /// or the application exited with an error) fails the node.
    pub app_failure: bool,
    /// Read the node's power state (BMC or QEMU monitor) where it has power
    /// control: a machine that reads off is failed within seconds.
    pub power_watch: bool,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            heartbeat_timeout_secs: None,
            health_failures: 0,
            app_failure: false,
            power_watch: true,
        }
    }
}

impl Detection {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .heartbeat_timeout_secs
            .is_some_and(|s| !(3..=86_400).contains(&s))
        {
            return Err("detection.heartbeat_timeout_secs must be 3..=86400 seconds".into());
        }
        if self.health_failures > 1000 {
            return Err("detection.health_failures must be at most 1000".into());
        }
        Ok(())
    }
}

/// Load-driven scaling of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Policy {
    /// Health key averaged over the environment's nodes (`load` falls back
    /// to the agent's 1-minute load average when the health hook prints none).
    pub metric: String,
    /// Add a node when the average stays above this for the window.
    pub add_above: f64,
    /// Remove a (not busy) node when it stays below this for the window.
    pub remove_below: f64,
    /// The window, seconds.
    pub window_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            metric: "load".into(),
            add_above: 0.8,
            remove_below: 0.2,
            window_secs: 60,
        }
    }
}

impl Policy {
    /// Checks thresholds and window.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.add_above.is_finite() && self.remove_below.is_finite()) {
            return Err("policy thresholds must be numbers".into());
        }
        if self.remove_below >= self.add_above {
            return Err(format!(
                "remove-below {} must be under add-above {}",
                self.remove_below, self.add_above
            ));
        }
        if self.window_secs == 0 || self.window_secs > 86_400 {
            return Err("policy window must be 1..=86400 seconds".into());
        }
        Ok(())
    }
}

/// Where a slot is in moving a node in or out. Every step is stored before
/// its action is taken, so a restarted engine resumes where it stopped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SlotStep {
    /// No node.
    #[default]
    Vacant,
    /// A node was chosen; nothing done to it yet.
    Pending,
    /// Its previous work is being stopped (stop hook, then force).
    Stopping,
    /// Its boot is being pointed at the environment: image, address, disk.
    Pointing,
    /// It reboots (kexec or cold) into the environment's image.
    Booting,
    /// Its agent is up in the image: configuration and start hook.
    Starting,
    /// It serves the environment.
    Ready,
    /// It is leaving the environment (stop, unconfigure, back to the pool).
    Releasing,
    /// The move failed; the engine gives the node back and tries another.
    Failed,
}

impl SlotStep {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotStep::Vacant => "vacant",
            SlotStep::Pending => "pending",
            SlotStep::Stopping => "stopping",
            SlotStep::Pointing => "pointing",
            SlotStep::Booting => "booting",
            SlotStep::Starting => "starting",
            SlotStep::Ready => "ready",
            SlotStep::Releasing => "releasing",
            SlotStep::Failed => "failed",
        }
    }
    /// Parses [`SlotStep::as_str`] names.
    pub fn parse(s: &str) -> Option<SlotStep> {
        [
            SlotStep::Vacant,
            SlotStep::Pending,
            SlotStep::Stopping,
            SlotStep::Pointing,
            SlotStep::Booting,
            SlotStep::Starting,
            SlotStep::Ready,
            SlotStep::Releasing,
            SlotStep::Failed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
    /// Steps of a node moving in (not yet serving, not leaving).
    pub fn moving_in(self) -> bool {
        matches!(
            self,
            SlotStep::Pending
                | SlotStep::Stopping
                | SlotStep::Pointing
                | SlotStep::Booting
                | SlotStep::Starting
        )
    }
}

/// One node position of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct Slot {
    /// Environment name.
    pub environment: String,
    /// Position (0-based); host name, address and disk follow it.
    pub index: u32,
    /// Host name of the slot.
    pub hostname: String,
    /// Fixed address (a reservation for whichever node holds the slot).
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    /// The slot's own overlay disk (created on first use).
    pub overlay: Option<String>,
    /// Node holding the slot (at most one slot per node).
    pub node: Option<String>,
    /// Where the move in or out is.
    pub step: SlotStep,
    /// When the current step began (ms since the epoch).
    pub step_since_ms: i64,
    /// When the current move began (timings are relative to it).
    pub move_since_ms: i64,
    /// Human-readable detail of the step (why it waits, why it failed).
    pub detail: String,
    /// Failed moves in a row (back-off).
    pub attempt: u32,
    /// The agent command the current step waits for.
    pub command: Option<i64>,
    /// The node's last hello when its reboot was asked for: a later hello
    /// (whatever the clocks say) is the new boot.
    pub hello_before: Option<i64>,
    /// Releasing: the node was sent back to the pool image; the slot waits
    /// for it to leave before cutting its disk connections.
    pub returning: bool,
    /// Overlays detached from the node at pointing whose connections stay
    /// open until it has booted the new image (it runs from them until then).
    pub cut_after_boot: Vec<String>,
    /// Per-slot key/values (post-boot configuration), over the environment's.
    pub config: BTreeMap<String, String>,
    /// Milliseconds each step of the current or last move took.
    pub timings: BTreeMap<String, i64>,
    /// When the node that held the slot was found failed (and fenced): the
    /// slot is failing over until a new node is ready in it.
    pub failed_over_ms: Option<i64>,
    /// A live clone of this (ready) slot in progress, or the last one's outcome.
    pub clone: Option<CloneJob>,
    /// This slot's disk was cloned from another slot of the environment.
    pub clone_of: Option<CloneOrigin>,
    /// The node coming into this slot takes a new identity at its first
    /// boot (a clone: machine id, SSH host keys, `purge-sessions`); cleared
    /// once the slot is ready.
    pub reidentify: bool,
    /// `env remove-node`: once its node has left, the slot goes away (and
    /// with `delete_disk` its overlay too).
    pub removal: Option<Removal>,
    /// The node the engine takes for this slot when it is idle in the pool
    /// (set by `env import --map-nodes`); otherwise it allocates as usual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_node: Option<String>,
    /// The physical node the slot belongs on while it stands on a VM (set
    /// when it fails over from that node): the slot moves back to it once
    /// it is repaired ([`Environment::failback`]).
    pub home: Option<String>,
    /// When the slot left its home node (its failure).
    pub home_left_ms: Option<i64>,
    /// An admin marked the home node repaired (it may take the slot back
    /// even while it cools down after its failure).
    pub home_repaired: bool,
    /// Failing back: the VM's work is being stopped before the slot moves
    /// to its home node.
    pub failing_back: bool,
}

impl Slot {
    /// A clone of this slot is under way (its node must stay).
    pub fn cloning(&self) -> bool {
        self.clone.as_ref().is_some_and(|c| !c.phase.is_final())
    }
}

/// Where a live clone of a slot is. Every phase is stored before its
/// action, so a restarted engine resumes it (and the agent thaws by itself
/// when the hold time passes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClonePhase {
    /// The agent runs `prepare-clone` and freezes the file systems.
    #[default]
    Preparing,
    /// Frozen: the server snapshots the slot's overlay into the new slot's.
    Snapshotting,
    /// The agent thaws and runs `clone-done`.
    Thawing,
    /// The snapshot is taken and the new slot joins the environment.
    Done,
    /// The clone stopped (refused, or it failed); nothing was created.
    Failed,
}

impl ClonePhase {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClonePhase::Preparing => "preparing",
            ClonePhase::Snapshotting => "snapshotting",
            ClonePhase::Thawing => "thawing",
            ClonePhase::Done => "done",
            ClonePhase::Failed => "failed",
        }
    }
    /// Done or failed.
    pub fn is_final(self) -> bool {
        matches!(self, ClonePhase::Done | ClonePhase::Failed)
    }
}

/// A live clone of a slot into another slot of its environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct CloneJob {
    /// The new slot's index.
    pub into: u32,
    /// Go on when `prepare-clone` refuses.
    pub force: bool,
    /// Where it is.
    pub phase: ClonePhase,
    /// The agent command the phase waits for.
    pub command: Option<i64>,
    /// When it was asked for (ms since the epoch).
    pub requested_ms: i64,
    /// When the current phase began.
    pub phase_since_ms: i64,
    /// When the agent said the file systems were frozen.
    pub frozen_ms: Option<i64>,
    /// The template's pause (freeze to thaw), as its agent measured it.
    pub pause_ms: Option<i64>,
    /// Milliseconds the snapshot took.
    pub snapshot_ms: Option<i64>,
    /// The overlay made from the snapshot (the new slot's disk).
    pub overlay: Option<String>,
    /// The environment's desired count when the clone was asked (it
    /// becomes one more once the snapshot is taken).
    pub desired_before: Option<u32>,
    /// What happened (the refusal's reason, a warning).
    pub detail: String,
}

/// Where a cloned slot's disk came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct CloneOrigin {
    /// The template slot's index.
    pub slot: u32,
    /// The node that held it.
    pub node: Option<String>,
    /// When the clone was asked for (its "request to ready" starts there).
    pub requested_ms: i64,
    /// The template's pause.
    pub pause_ms: Option<i64>,
}

/// A slot on its way out of the environment (`env remove-node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct Removal {
    /// Delete the slot's overlay too (else it is kept).
    pub delete_disk: bool,
}

impl Slot {
    /// This slot emptied at `now_ms` (its node left it), saying why.
    pub fn vacated(&self, now_ms: i64, why: &str) -> Slot {
        Slot {
            node: None,
            step: SlotStep::Vacant,
            step_since_ms: now_ms,
            command: None,
            returning: false,
            cut_after_boot: Vec::new(),
            detail: why.to_string(),
            clone: self.clone.clone().map(|mut c| {
                if !c.phase.is_final() {
                    c.phase = ClonePhase::Failed;
                    c.detail = format!("the template left its slot ({why})");
                }
                c
            }),
            ..self.clone()
        }
    }
}

/// One load report of a node serving an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadSample {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Node that reported it.
    pub node: String,
    /// Environment it served.
    pub environment: String,
    /// 1-minute load average.
    pub load1: f64,
    /// CPU busy fraction.
    pub cpu_busy: f64,
    /// What the busy hook said.
    pub busy: Option<bool>,
    /// What the health hook printed.
    pub health: BTreeMap<String, String>,
}

impl LoadSample {
    /// The value of `metric`: a numeric health key, else for `load` the
    /// 1-minute load average and for `cpu` the busy fraction.
    pub fn metric(&self, metric: &str) -> Option<f64> {
        if let Some(v) = self.health.get(metric).and_then(|v| v.parse::<f64>().ok()) {
            return v.is_finite().then_some(v);
        }
        match metric {
            "load" => Some(self.load1),
            "cpu" => Some(self.cpu_busy),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hostnames_and_validation() {
        let r: AddressRange = "10.0.0.10-10.0.0.12".parse().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.nth(2), Some("10.0.0.12".parse().unwrap()));
        assert_eq!(r.nth(3), None);
        assert!("10.0.0.12-10.0.0.10".parse::<AddressRange>().is_err());
        let mut e = Environment {
            name: "web".into(),
            image: "lab".into(),
            max: 3,
            addresses: Some(r),
            ..Default::default()
        };
        assert_eq!(e.hostname(2), "web-2");
        assert_eq!(e.address(1), Some("10.0.0.11".parse().unwrap()));
        assert!(e.validate().is_ok());
        e.max = 4;
        assert!(e.validate().unwrap_err().contains("3 addresses"));
        e.max = 3;
        e.schedules.push(Schedule {
            cron: "not cron".into(),
            action: ScheduleAction::Activate,
        });
        assert!(e.validate().is_err());
        e.schedules[0].cron = "*/5 * * * * *".into();
        assert!(e.validate().is_ok());
        e.desired = 9;
        assert_eq!(e.target(), 3);
        e.active = false;
        assert_eq!(e.target(), 0);
        let j = serde_json::to_value(ScheduleAction::Scale(2)).unwrap();
        assert_eq!(j, serde_json::json!({"scale": 2}));
    }
}
