// Node detail: identity and inventory, the heartbeat/load chart (the load
// history API plus the heartbeats seen while the page is open), and the live
// boot timeline of its boots, from its events.
import { get, post, put } from "../api.js";
import { h, fill, badge, ago, time, secs, toast } from "../dom.js";
import { onEvent } from "../live.js";
import { boots } from "../timeline.js";
import { lineChart } from "../chart.js";

export default async function node(root, [id]) {
  let n = await get("/api/nodes/" + encodeURIComponent(id));
  const [events, imageList, history] = await Promise.all([
    get(`/api/events?node=${encodeURIComponent(n.id)}&limit=5000`),
    get("/api/images"),
    get(`/api/nodes/${encodeURIComponent(n.id)}/load?since_ms=${Date.now() - 6 * 3600e3}`),
  ]);
  const images = Object.fromEntries(imageList.map((i) => [i.name, i]));
  const head = h("div");
  const timelineBox = h("div", { class: "panel timeline", id: "timeline" });
  const chartBox = h("div", { class: "panel", id: "load-chart" });
  const invBox = h("div", { class: "panel", id: "inventory" });
  const eventsBox = h("div", { class: "panel", id: "node-events" });
  fill(root, head, h("h2", {}, "Boot timeline"), timelineBox, h("h2", {}, "Heartbeat load"), chartBox,
    h("h2", {}, "Inventory"), invBox, h("h2", {}, "Recent events"), eventsBox);

  const command = async (what, body) => {
    if (!confirm(`${what} ${n.id}?`)) return;
    try { await body(); toast(`${what}: sent to ${n.id}`); } catch (e) { toast(`${what}: ${e.message}`, true); }
  };
  function renderHead() {
    const hb = n.heartbeat || {};
    fill(head,
      h("h1", {}, n.id, " ", badge(n.state)),
      h("div", { class: "toolbar" },
        h("button", { class: "secondary", onclick: () => command("reboot", () => post(`/api/nodes/${n.id}/commands`, { kind: "reboot" })) }, "Reboot"),
        h("button", { class: "secondary", onclick: () => command("reprovision", () => post(`/api/nodes/${n.id}/commands`, { kind: "reprovision" })) }, "Reprovision"),
        n.state === "quarantined"
          ? h("button", { class: "secondary", onclick: () => command("release", () => put(`/api/nodes/${n.id}/state`, { state: "idle" })) }, "Release")
          : h("button", { class: "secondary", onclick: () => command("quarantine", () => put(`/api/nodes/${n.id}/state`, { state: "quarantined" })) }, "Quarantine")),
      h("div", { class: "panel" }, h("dl", { class: "kv" },
        kv("MAC", n.mac), kv("UUID", n.uuid), kv("serial", n.serial), kv("firmware", n.arch),
        kv("environment", n.environment ? `${n.environment} slot ${n.slot}` : "—"),
        kv("booted image", n.booted_image), kv("running image", n.running_image),
        kv("address", n.observed_ip), kv("last heartbeat", n.last_heartbeat_ms ? `${ago(n.last_heartbeat_ms)} (load ${Number(hb.load1 || 0).toFixed(2)}${hb.busy ? ", busy" : ""})` : "never"),
        kv("agent up since", time(n.last_hello_ms)), kv("first seen", time(n.first_seen_ms)),
        kv("labels", Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
        kv("health", Object.entries(hb.health || {}).map(([k, v]) => `${k}=${v}`).join(", ")))));
  }
  function renderTimeline() {
    const list = boots(events, images).reverse().slice(0, 5);
    if (list.length === 0) return fill(timelineBox, h("p", { class: "muted" }, "No boot seen yet."));
    fill(timelineBox, list.map((b, i) => {
      const total = Math.max(1, b.steps.reduce((a, s) => a + s.ms, 0));
      return h("div", { class: "boot", dataset: { done: String(b.done) } },
        h("div", {}, h("strong", {}, i === 0 ? "Latest boot" : "Earlier boot"), " ", time(b.start_ms), b.image ? ` — image ${b.image}` : "",
          " — ", b.done ? `agent ready after ${secs(b.total_ms)}` : h("em", {}, `in progress, ${secs(b.total_ms)} so far`)),
        h("div", { class: "bar" }, b.steps.filter((s) => s.ms > 0 || s.running).map((s) =>
          h("div", { class: `seg p-${s.phase}${s.running ? " running" : ""}`, style: `flex: ${Math.max(s.ms, total / 100)}`, title: `${s.label}: ${secs(s.ms)}` }, `${s.label} ${secs(s.ms)}`))),
        h("table", { class: "phases" }, h("tbody", {}, b.steps.map((s) => h("tr", { dataset: { phase: s.phase } },
          h("td", {}, s.label), h("td", {}, "+" + secs(s.from_ms - b.start_ms)),
          h("td", {}, s.phase === "agent" ? "ready" : s.running ? "running…" : secs(s.ms)))))));
    }));
  }
  // The chart: stored load samples, then each new heartbeat while the page is open.
  const pts = history.map((l) => [l.at_ms, l.load1]);
  const addHeartbeat = () => {
    if (n.heartbeat && n.last_heartbeat_ms && (pts.length === 0 || pts[pts.length - 1][0] < n.last_heartbeat_ms)) pts.push([n.last_heartbeat_ms, Number(n.heartbeat.load1 || 0)]);
  };
  addHeartbeat();
  const series = () => [pts.map((p) => p[0] / 1000), pts.map((p) => p[1])];
  const chart = lineChart(chartBox, [{ label: "load (1 min)", stroke: "#2457c5" }], series(), { yLabel: "load" });
  function renderInventory() {
    const inv = n.inventory;
    if (!inv) return fill(invBox, h("p", { class: "muted" }, "No inventory yet (the agent reports it at hello)."));
    fill(invBox, h("dl", { class: "kv" }, Object.entries(inv).map(([k, v]) => kv(k, typeof v === "object" ? JSON.stringify(v) : String(v)))));
  }
  function renderEvents() {
    fill(eventsBox, h("table", {}, h("tbody", {}, events.slice(-30).reverse().map((e) => h("tr", {},
      h("td", {}, time(e.at_ms)), h("td", {}, e.kind), h("td", { class: "wrap" }, JSON.stringify(e.detail)))))));
  }
  renderHead(); renderTimeline(); renderInventory(); renderEvents();

  let refresh = null;
  const off = onEvent((e) => {
    if (e.node !== n.id) return;
    events.push(e);
    renderTimeline(); renderEvents();
    if (!refresh) refresh = setTimeout(async () => { refresh = null; n = await get("/api/nodes/" + n.id); renderHead(); renderInventory(); }, 300);
  });
  // Heartbeats are not events: poll the node for the chart and the header.
  const poll = setInterval(async () => {
    try { n = await get("/api/nodes/" + n.id); addHeartbeat(); chart.set(series()); renderHead(); if (events.length && !boots(events, images).at(-1).done) renderTimeline(); } catch { /* shown by the next poll */ }
  }, 2000);
  return () => { off(); clearInterval(poll); if (refresh) clearTimeout(refresh); chart.destroy(); };
}

function kv(k, v) { return [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? "—" : String(v))]; }
