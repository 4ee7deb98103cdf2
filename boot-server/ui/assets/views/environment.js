// Environment detail: its slots and the node holding each, load over time,
// the engine's decisions with their reasons (live), policy and schedules;
// scale, activate/deactivate, add/remove/quarantine a node, edit the policy,
// copy, modify (the wizard) and delete.
import { get, post, put, del } from "../api.js";
import { h, fill, badge, ago, time, secs, toast } from "../dom.js";
import { onEvent } from "../live.js";
import { lineChart } from "../chart.js";

const HOUR = 3600e3;

export default async function environment(root, [name]) {
  const enc = encodeURIComponent(name);
  let env = await get("/api/environments/" + enc);
  const hist = await get(`/api/environments/${enc}/history?since_ms=${Date.now() - 6 * HOUR}`);
  const head = h("div"), slotsBox = h("div", { class: "panel", id: "slots" });
  const chartBox = h("div", { class: "panel", id: "env-load" });
  const decisionsBox = h("div", { class: "panel", id: "decisions" });
  const policyBox = h("div", { class: "panel", id: "policy" });
  const nodesBox = h("div", { class: "panel", id: "env-nodes" });
  fill(root, head, h("h2", {}, "Slots"), slotsBox, h("h2", {}, "Add or remove a node"), nodesBox,
    h("h2", {}, "Load over time (average of its nodes)"), chartBox,
    h("h2", {}, "Engine decisions"), decisionsBox, h("h2", {}, "Policy and schedules"), policyBox);

  const run = async (what, f) => {
    try { await f(); toast(what + ": done"); await reload(); } catch (e) { toast(`${what}: ${e.message}`, true); }
  };
  function renderHead() {
    const scaleIn = h("input", { type: "number", id: "scale-nodes", min: env.min, max: env.max, value: env.desired, style: "width: 5em" });
    fill(head,
      h("h1", {}, env.name, " ", h("span", { class: "badge " + (env.active ? "s-ready" : "s-vacant"), id: "env-active" }, env.active ? "active" : "inactive")),
      h("p", { class: "muted" }, env.description || ""),
      h("div", { class: "panel" }, h("dl", { class: "kv" },
        kv("image", env.image), kv("disk base", env.disk_base || "—"), kv("nodes", `min ${env.min} · desired ${env.desired} · max ${env.max} · holding ${env.holding} · target ${env.target}`),
        kv("priority", `${env.priority}${env.preemptible ? " (preemptible)" : ""}${env.share_pct ? `, share ${env.share_pct}%` : ""}`),
        kv("host names", env.hostname_pattern), kv("addresses", env.addresses ? JSON.stringify(env.addresses) : "leases"),
        kv("hooks", Object.keys(env.hooks || {}).join(", ") || "none"), kv("boot", env.boot), kv("updated", time(env.updated_ms)))),
      h("div", { class: "toolbar" },
        h("label", { for: "scale-nodes" }, "Nodes"), scaleIn,
        h("button", { id: "scale", onclick: () => run("scale", () => post(`/api/environments/${enc}/scale`, { nodes: Number(scaleIn.value) })) }, "Scale"),
        env.active
          ? h("button", { class: "secondary", id: "deactivate", onclick: () => run("deactivate", () => post(`/api/environments/${enc}/deactivate`)) }, "Deactivate")
          : h("button", { class: "secondary", id: "activate", onclick: () => run("activate", () => post(`/api/environments/${enc}/activate`)) }, "Activate"),
        h("a", { href: `#/wizard?edit=${enc}` }, h("button", { class: "secondary", type: "button" }, "Modify")),
        h("a", { href: `#/wizard?copy=${enc}` }, h("button", { class: "secondary", type: "button" }, "Copy")),
        h("button", { class: "danger", onclick: async () => {
          if (!confirm(`Delete environment ${env.name}? (It must hold no node: scale it to 0 or deactivate it first.)`)) return;
          try { await del("/api/environments/" + enc); toast("deleted " + env.name); location.hash = "#/environments"; } catch (e) { toast(e.message, true); }
        } }, "Delete")));
  }
  function renderSlots() {
    if (env.slots.length === 0) return fill(slotsBox, h("p", { class: "muted" }, "No slot yet."));
    fill(slotsBox, h("table", {}, h("thead", {}, h("tr", {}, ["slot", "step", "node", "host name", "address", "disk", "since", "detail", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, env.slots.map((s) => h("tr", { dataset: { slot: String(s.index) } },
        h("td", {}, s.index), h("td", {}, badge(s.step)),
        h("td", {}, s.node ? h("a", { href: "#/node/" + s.node }, s.node) : "—"),
        h("td", {}, s.hostname), h("td", {}, s.ip || ""), h("td", {}, s.overlay || ""),
        h("td", {}, ago(s.step_since_ms)), h("td", { class: "wrap" }, s.detail || ""),
        h("td", {}, s.node ? h("button", { class: "secondary", onclick: () => { if (confirm(`Quarantine ${s.node}?`)) run("quarantine", () => post(`/api/environments/${enc}/quarantine`, { node: s.node })); } }, "Quarantine") : ""))))));
  }
  function renderNodes() {
    const input = h("input", { id: "env-node", placeholder: "node id or MAC", size: 24 });
    fill(nodesBox, h("div", { class: "toolbar" }, input,
      h("button", { class: "secondary", onclick: () => run("add node", () => post(`/api/environments/${enc}/add-node`, { node: input.value.trim() })) }, "Add to this environment"),
      h("button", { class: "secondary", onclick: () => run("remove node", () => post(`/api/environments/${enc}/remove-node`, { node: input.value.trim() })) }, "Remove from it")));
  }
  // Average load of its nodes per 10 s bucket.
  const load = [...hist.load];
  const series = () => {
    const b = new Map();
    for (const l of load) { const k = Math.floor(l.at_ms / 10000) * 10; const v = b.get(k) || [0, 0]; v[0] += l.load1; v[1]++; b.set(k, v); }
    const ks = [...b.keys()].sort((x, y) => x - y);
    return [ks, ks.map((k) => b.get(k)[0] / b.get(k)[1])];
  };
  const chart = lineChart(chartBox, [{ label: "average load", stroke: "#3a9d5d" }], series(), { yLabel: "load" });
  const decisions = [...hist.decisions];
  function renderDecisions(fresh) {
    const rows = decisions.slice(-50).reverse();
    if (rows.length === 0) return fill(decisionsBox, h("p", { class: "muted" }, "No decision yet."));
    fill(decisionsBox, h("table", { id: "decision-table" }, h("thead", {}, h("tr", {}, ["when", "kind", "action", "slot", "nodes", "reason"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((e) => h("tr", { class: fresh && fresh.has(e.id) ? "flash" : "", dataset: { id: String(e.id), kind: e.kind, action: e.detail.action || e.detail.to || e.detail.alert || "" } },
        h("td", {}, time(e.at_ms)), h("td", {}, e.kind),
        h("td", {}, e.detail.action || (e.kind === "slot-step" ? `${e.detail.from} → ${e.detail.to}` : e.detail.alert || "")),
        h("td", {}, e.detail.slot ?? ""), h("td", {}, (Array.isArray(e.detail.nodes) ? e.detail.nodes : e.node ? [e.node] : []).join(", ")),
        h("td", { class: "wrap" }, reason(e)))))));
  }
  function renderPolicy() {
    const p = env.policy || { metric: "load", add_above: 0.8, remove_below: 0.2, window_secs: 60 };
    const f = {
      metric: h("input", { id: "policy-metric", value: p.metric, size: 10 }),
      add_above: h("input", { id: "policy-add", type: "number", step: "any", value: p.add_above, style: "width: 6em" }),
      remove_below: h("input", { id: "policy-remove", type: "number", step: "any", value: p.remove_below, style: "width: 6em" }),
      window_secs: h("input", { id: "policy-window", type: "number", min: 1, value: p.window_secs, style: "width: 6em" }),
    };
    fill(policyBox,
      h("p", {}, env.policy ? `Scaling on ${env.policy.metric}: add a node above ${env.policy.add_above}, remove one below ${env.policy.remove_below}, over ${env.policy.window_secs} s.` : "No load policy (the desired count stays as set)."),
      h("div", { class: "toolbar" }, "metric", f.metric, "add above", f.add_above, "remove below", f.remove_below, "window (s)", f.window_secs,
        h("button", { class: "secondary", id: "policy-save", onclick: () => run("policy", () => put(`/api/environments/${enc}/policy`, {
          metric: f.metric.value, add_above: Number(f.add_above.value), remove_below: Number(f.remove_below.value), window_secs: Number(f.window_secs.value) })) }, "Save policy"),
        env.policy ? h("button", { class: "secondary", onclick: () => run("clear policy", () => put(`/api/environments/${enc}/policy`, null)) }, "Clear") : ""),
      h("p", {}, env.schedules.length ? "Schedules:" : "No schedule (edit them with Modify)."),
      env.schedules.length ? h("ul", {}, env.schedules.map((s) => h("li", {}, h("code", {}, s.cron), " → ", typeof s.action === "string" ? s.action : "scale to " + s.action.scale))) : "");
  }
  async function reload() { env = await get("/api/environments/" + enc); renderHead(); renderSlots(); renderPolicy(); }
  renderHead(); renderSlots(); renderNodes(); renderDecisions(); renderPolicy();

  let t = null;
  const off = onEvent((e) => {
    const mine = e.detail && e.detail.env === env.name;
    if (!mine) return;
    if (["engine-decision", "slot-step", "alert"].includes(e.kind)) { decisions.push(e); renderDecisions(new Set([e.id])); }
    if (!t) t = setTimeout(() => { t = null; reload().catch(() => {}); }, 300);
  });
  const poll = setInterval(async () => {
    try {
      const more = await get(`/api/environments/${enc}/history?since_ms=${(load.at(-1) || { at_ms: Date.now() - 60e3 }).at_ms + 1}`);
      if (more.load.length) { load.push(...more.load); chart.set(series()); }
    } catch { /* next time */ }
  }, 15000);
  return () => { off(); clearInterval(poll); if (t) clearTimeout(t); chart.destroy(); };
}

/** Why the engine did it (decisions, alerts), or what a slot step did and how long the step before took. */
function reason(e) {
  const d = e.detail;
  const why = d.reason || d.message || (typeof d.detail === "string" ? d.detail : "") || (d.total_ms ? `ready after ${secs(d.total_ms)}` : "");
  const took = e.kind === "slot-step" && d.ms ? h("span", { class: "muted" }, ` (${d.from} took ${secs(d.ms)})`) : "";
  return [why, took];
}

function kv(k, v) { return [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? "—" : String(v))]; }
