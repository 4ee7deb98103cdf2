//! Pre-staging: where each idle or preemptible node most likely goes next,
//! so its agent can load that environment's image before the decision.

use super::{fit_rank, holding, World};
use crate::model::{Environment, Node, SlotStep};
use std::collections::{HashMap, HashSet};

/// A node's most likely next environment: pre-stage its image there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The node to pre-stage.
    pub node: String,
    /// The environment it is most likely to join next.
    pub env: String,
    /// Why, for the log.
    pub reason: String,
}

/// Where each idle node, and each node of a preemptible environment's ready
/// slot, most likely goes next, so that its agent can download and load that
/// environment's image ahead of the decision. Environments that boot warm
/// offer places, best first: nodes they want now and lack (unmet demand),
/// then nodes their next scheduled scale-up (`scale_ups`: environment →
/// target) will want, then room to grow (up to `max`; an inactive
/// environment up to its desired count), each class by priority (highest
/// first), then name. Places are filled by idle nodes (best fit first, as
/// [`super::decide`] picks them); each node a higher-priority environment could
/// preempt stages the best place idle nodes left. A node only stages an
/// environment whose requirements it meets. Environments whose slots have
/// disks are not staged (the slot's root disk is on the command line).
pub fn likely_next(w: &World, scale_ups: &HashMap<String, u32>) -> Vec<Stage> {
    use crate::model::BootMode;
    // (class, -priority, env name, why) per place.
    let mut places: Vec<(u8, i32, &Environment, &'static str)> = Vec::new();
    // An environment whose slots have disks boots from the slot's disk,
    // slot data the command line would carry: not staged.
    for env in w
        .envs
        .iter()
        .filter(|e| e.boot == BootMode::Warm && e.disk_base.is_none())
    {
        let held = holding(w.slots, &env.name);
        let target = env.target();
        let unmet = target.saturating_sub(held);
        let scheduled = scale_ups
            .get(&env.name)
            .map_or(0, |t| t.min(&env.max).saturating_sub(held.max(target)));
        let potential = if env.active {
            env.max
        } else {
            env.desired.clamp(env.min, env.max)
        };
        let room = potential.saturating_sub(held.max(target) + scheduled);
        for (class, n, why) in [
            (0, unmet, "wants nodes it lacks now"),
            (1, scheduled, "its next scheduled scale-up wants nodes"),
            (2, room, "has room to grow"),
        ] {
            places.extend((0..n).map(|_| (class, -env.priority, env, why)));
        }
    }
    places.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    let mut idle: Vec<&Node> = w.nodes.iter().filter(|n| w.eligible(n)).collect();
    idle.sort_by_key(|n| fit_rank(n));
    // Nodes a higher-priority environment could take: ready, not busy, in a
    // preemptible environment.
    let preemptible: Vec<(&Node, &Environment)> = w
        .slots
        .iter()
        .filter(|s| s.step == SlotStep::Ready && !s.cloning())
        .filter_map(|s| {
            let node = w.node(s.node.as_deref()?)?;
            let env = w.envs.iter().find(|e| e.name == s.environment)?;
            (env.preemptible && node.busy() != Some(true)).then_some((node, env))
        })
        .collect();
    let mut used: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    let mut left = Vec::new();
    for (_, _, env, why) in places {
        let Some(node) = idle
            .iter()
            .find(|n| !used.contains(n.id.as_str()) && env.requirements.met_by(n))
        else {
            left.push((env, why));
            continue;
        };
        used.insert(&node.id);
        out.push(Stage {
            node: node.id.clone(),
            env: env.name.clone(),
            reason: format!("{} {why}; node idle", env.name),
        });
    }
    // The places idle nodes could not fill go to preemption; which victim
    // it takes depends on load at the time, so every node it could take
    // stages the best such place (without using it up).
    for (node, from) in preemptible {
        let best = left.iter().find(|(env, _)| {
            from.name != env.name && from.priority < env.priority && env.requirements.met_by(node)
        });
        if let Some((env, why)) = best {
            out.push(Stage {
                node: node.id.clone(),
                env: env.name.clone(),
                reason: format!("{} {why}; node preemptible in {}", env.name, from.name),
            });
        }
    }
    out
}
