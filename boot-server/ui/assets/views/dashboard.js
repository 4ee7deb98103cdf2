// Dashboard: the pool at a glance (nodes by state, environments with
// min / current / max, active alerts, boots in progress), live.
import { get } from "../api.js";
import { h, fill, badge, ago } from "../dom.js";
import { onEvent } from "../live.js";

const STATES = ["ready", "idle", "provisioning", "discovered", "failed", "quarantined", "retired"];
const MOVING = ["pending", "stopping", "pointing", "booting", "starting", "releasing"];

export default async function dashboard(root) {
  const body = h("div");
  fill(root, h("h1", {}, "Dashboard"), body);
  let timer = null;
  async function load() {
    const [nodes, envs, events] = await Promise.all([
      get("/api/nodes"), get("/api/environments"), get("/api/events?tail=2000&limit=2000"),
    ]);
    const count = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const n of nodes) count[n.state] = (count[n.state] || 0) + 1;
    const booting = nodes.filter((n) => n.state === "provisioning");
    const moving = envs.flatMap((e) => e.slots.filter((s) => MOVING.includes(s.step)));
    // An alert is active until a later alert of the same kind and subject clears it;
    // the log holds no "cleared" for most kinds, so show the last hour's.
    const hour = Date.now() - 3600e3;
    const alerts = events.filter((e) => e.kind === "alert" && e.at_ms >= hour).reverse().slice(0, 20);
    // Agents that came up recently (the last boot of each node).
    const seen = new Set();
    const ready = events.filter((e) => e.kind === "agent-ready").reverse().filter((e) => !seen.has(e.node) && seen.add(e.node)).slice(0, 10);
    const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
    fill(body,
      h("div", { class: "cards", id: "node-states" }, STATES.map((s) =>
        h("a", { class: "card", href: "#/nodes?state=" + s, dataset: { state: s } },
          h("div", { class: "big", dataset: { count: s } }, String(count[s] || 0)), h("div", { class: "sub" }, badge(s))))),
      h("h2", {}, "Environments"),
      h("div", { class: "panel" }, envs.length === 0 ? h("p", { class: "muted" }, "No environment yet. ", h("a", { href: "#/wizard" }, "Create one")) :
        h("table", { id: "env-summary" },
          h("thead", {}, h("tr", {}, ["name", "active", "min", "current", "desired", "max", "image"].map((c) => h("th", {}, c)))),
          h("tbody", {}, envs.map((e) => h("tr", {},
            h("td", {}, h("a", { href: "#/environment/" + encodeURIComponent(e.name) }, e.name)),
            h("td", {}, e.active ? "yes" : "no"), h("td", {}, e.min),
            h("td", {}, `${e.slots.filter((s) => s.node && s.step === "ready").length} ready / ${e.holding} held`),
            h("td", {}, e.desired), h("td", {}, e.max), h("td", {}, e.image)))))),
      h("h2", {}, "Boots in progress"),
      h("div", { class: "panel", id: "boots" }, booting.length + moving.length === 0 ? h("p", { class: "muted" }, "None.") :
        h("ul", {},
          booting.map((n) => h("li", {}, h("a", { href: "#/node/" + n.id }, n.id), " provisioning ", n.booted_image || "", " (since ", ago(n.last_seen_ms), ")")),
          moving.map((s) => h("li", {}, `${s.environment}/${s.index} `, badge(s.step), s.node ? [" ", h("a", { href: "#/node/" + s.node }, s.node)] : "", " ", s.detail || "")))),
      h("h2", {}, "Agents up recently"),
      h("div", { class: "panel", id: "recent-ready" }, ready.length === 0 ? h("p", { class: "muted" }, "No agent has said hello yet.") :
        h("table", {}, h("tbody", {}, ready.map((e) => h("tr", { dataset: { node: e.node } },
          h("td", {}, h("a", { href: "#/node/" + e.node }, e.node)), h("td", {}, byId[e.node] ? badge(byId[e.node].state) : ""),
          h("td", {}, e.detail.image || ""), h("td", { class: "muted" }, "agent ready ", ago(e.at_ms))))))),
      h("h2", {}, "Active alerts (last hour)"),
      h("div", { class: "panel", id: "alerts" }, alerts.length === 0 ? h("p", { class: "muted" }, "None.") :
        h("ul", {}, alerts.map((a) => h("li", {}, h("strong", {}, a.detail.alert || "alert"), " ", a.detail.env ? a.detail.env + " " : "", a.node ? h("a", { href: "#/node/" + a.node }, a.node) : "", " ", a.detail.message || a.detail.reason || "", h("span", { class: "muted" }, " ", ago(a.at_ms)))))),
    );
  }
  await load();
  // Reload (at most every 500 ms) on any event that changes what is shown.
  const off = onEvent((e) => {
    if (["http-file", "tftp-file"].includes(e.kind) || timer) return;
    timer = setTimeout(() => { timer = null; load().catch(() => {}); }, 500);
  });
  const tick = setInterval(() => load().catch(() => {}), 10000);
  return () => { off(); clearInterval(tick); if (timer) clearTimeout(timer); };
}
