// Nodes: one table for the whole fleet, fast with thousands of nodes: the
// list is fetched once (and again on node events), filtered, searched and
// sorted in memory, and only one page of rows is in the DOM. Bulk actions on
// the selected nodes: reboot, reprovision, quarantine, assign an image, add
// to an environment.
import { get, post, put } from "../api.js";
import { h, fill, badge, ago, toast } from "../dom.js";
import { onEvent } from "../live.js";

const PAGE = 100;
const COLUMNS = [
  { key: "id", label: "node", get: (n) => n.id },
  { key: "mac", label: "MAC", get: (n) => n.mac },
  { key: "state", label: "state", get: (n) => n.state },
  { key: "environment", label: "environment", get: (n) => (n.environment ? `${n.environment}/${n.slot}` : "") },
  { key: "image", label: "image", get: (n) => n.running_image || n.booted_image || "" },
  { key: "ip", label: "address", get: (n) => (n.heartbeat && n.heartbeat.ip) || n.observed_ip || "" },
  { key: "load", label: "load", get: (n) => (n.heartbeat ? Number(n.heartbeat.load1 || 0) : -1) },
  { key: "seen", label: "last seen", get: (n) => n.last_seen_ms || 0 },
];

export default async function nodes(root, _args, query) {
  const st = { all: [], rows: [], page: 0, sort: "id", desc: false, q: "", state: query.get("state") || "", selected: new Set() };
  const search = h("input", { type: "search", id: "node-search", placeholder: "search id, MAC, label, serial, image…", size: 36 });
  const stateSel = h("select", { id: "node-state" }, h("option", { value: "" }, "any state"),
    ["ready", "idle", "provisioning", "discovered", "failed", "quarantined", "retired"].map((s) => h("option", { value: s }, s)));
  stateSel.value = st.state;
  const count = h("span", { class: "muted", id: "node-count" });
  const tableBox = h("div", { class: "panel" });
  const pager = h("div", { class: "pager" });
  const imageSel = h("select", { id: "bulk-image" }, h("option", { value: "" }, "image…"));
  const envSel = h("select", { id: "bulk-env" }, h("option", { value: "" }, "environment…"));
  const bulk = h("div", { class: "toolbar", id: "bulk" },
    h("span", { id: "selected-count" }, "0 selected"),
    h("button", { class: "secondary", onclick: () => act("reboot") }, "Reboot"),
    h("button", { class: "secondary", onclick: () => act("reprovision") }, "Reprovision"),
    h("button", { class: "secondary", onclick: () => act("quarantine") }, "Quarantine"),
    imageSel, h("button", { class: "secondary", onclick: () => act("assign") }, "Assign image"),
    envSel, h("button", { class: "secondary", onclick: () => act("add-to-env") }, "Add to environment"));
  fill(root, h("h1", {}, "Nodes"), h("div", { class: "toolbar" }, search, stateSel, count), bulk, tableBox, pager);

  function apply() {
    const q = st.q.toLowerCase();
    const col = COLUMNS.find((c) => c.key === st.sort);
    st.rows = st.all.filter((n) => (!st.state || n.state === st.state) && (!q || haystack(n).includes(q)));
    st.rows.sort((a, b) => { const x = col.get(a), y = col.get(b); return (x < y ? -1 : x > y ? 1 : 0) * (st.desc ? -1 : 1); });
    st.page = Math.min(st.page, Math.max(0, Math.ceil(st.rows.length / PAGE) - 1));
    render();
  }
  function render() {
    const rows = st.rows.slice(st.page * PAGE, (st.page + 1) * PAGE);
    const allBox = h("input", { type: "checkbox", title: "select all matching", checked: st.rows.length > 0 && st.rows.every((n) => st.selected.has(n.id)),
      onchange: (e) => { for (const n of st.rows) e.target.checked ? st.selected.add(n.id) : st.selected.delete(n.id); render(); } });
    const head = h("tr", {}, h("th", {}, allBox), COLUMNS.map((c) => h("th", {
      class: "sortable" + (st.sort === c.key ? " sorted" + (st.desc ? " desc" : "") : ""),
      onclick: () => { st.desc = st.sort === c.key ? !st.desc : false; st.sort = c.key; apply(); },
    }, c.label)));
    const body = document.createElement("tbody");
    for (const n of rows) {
      body.append(h("tr", { dataset: { node: n.id } },
        h("td", {}, h("input", { type: "checkbox", checked: st.selected.has(n.id), onchange: (e) => { e.target.checked ? st.selected.add(n.id) : st.selected.delete(n.id); selCount(); } })),
        h("td", {}, h("a", { href: "#/node/" + n.id }, n.id)), h("td", {}, n.mac), h("td", {}, badge(n.state)),
        h("td", {}, n.environment ? h("a", { href: "#/environment/" + n.environment }, `${n.environment}/${n.slot}`) : ""),
        h("td", {}, n.running_image || n.booted_image || ""), h("td", {}, COLUMNS[5].get(n)),
        h("td", {}, n.heartbeat ? Number(n.heartbeat.load1 || 0).toFixed(2) : ""), h("td", {}, ago(n.last_seen_ms))));
    }
    fill(tableBox, h("table", { id: "nodes-table", dataset: { total: String(st.all.length), shown: String(st.rows.length) } }, h("thead", {}, head), body));
    const pages = Math.max(1, Math.ceil(st.rows.length / PAGE));
    fill(pager,
      h("button", { class: "secondary", disabled: st.page === 0, onclick: () => { st.page--; render(); } }, "‹ prev"),
      h("span", { id: "page" }, `page ${st.page + 1} of ${pages}`),
      h("button", { class: "secondary", disabled: st.page >= pages - 1, onclick: () => { st.page++; render(); } }, "next ›"));
    fill(count, `${st.rows.length} of ${st.all.length} nodes`);
    selCount();
  }
  function selCount() { fill(document.getElementById("selected-count") || h("span"), `${st.selected.size} selected`); }

  async function act(what) {
    const ids = [...st.selected];
    if (ids.length === 0) return toast("Select nodes first.", true);
    const image = imageSel.value, env = envSel.value;
    if (what === "assign" && !image) return toast("Pick an image.", true);
    if (what === "add-to-env" && !env) return toast("Pick an environment.", true);
    if (!confirm(`${what} ${ids.length} node(s)?`)) return;
    let ok = 0; const errors = [];
    for (const id of ids) {
      const n = st.all.find((x) => x.id === id);
      try {
        if (what === "reboot" || what === "reprovision") await post(`/api/nodes/${id}/commands`, { kind: what });
        else if (what === "quarantine") await put(`/api/nodes/${id}/state`, { state: "quarantined" });
        else if (what === "assign") await put("/api/assignments", { mac: n.mac, image });
        else if (what === "add-to-env") await post(`/api/environments/${encodeURIComponent(env)}/add-node`, { node: id });
        ok++;
      } catch (e) { errors.push(`${id}: ${e.message}`); }
    }
    toast(`${what}: ${ok} of ${ids.length} done` + (errors.length ? ` — ${errors[0]}` : ""), errors.length > 0);
    await load();
  }

  async function load() {
    st.all = await get("/api/nodes");
    apply();
  }
  search.addEventListener("input", () => { st.q = search.value; st.page = 0; apply(); });
  stateSel.addEventListener("change", () => { st.state = stateSel.value; st.page = 0; apply(); });
  await load();
  Promise.all([get("/api/images"), get("/api/environments")]).then(([imgs, envs]) => {
    for (const i of imgs) imageSel.append(h("option", { value: i.name }, i.name));
    for (const e of envs) envSel.append(h("option", { value: e.name }, e.name));
  }).catch(() => {});
  let timer = null;
  const off = onEvent((e) => {
    if (!e.node || ["http-file", "tftp-file"].includes(e.kind) || timer) return;
    timer = setTimeout(() => { timer = null; load().catch(() => {}); }, 2000);
  });
  return () => { off(); if (timer) clearTimeout(timer); };
}

function haystack(n) {
  return [n.id, n.mac, n.serial, n.uuid, n.environment, n.booted_image, n.running_image, n.state,
    n.observed_ip, n.heartbeat && n.heartbeat.ip, ...Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`)]
    .filter(Boolean).join(" ").toLowerCase();
}
