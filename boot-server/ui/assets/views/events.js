// Events: the event log, filtered by node, kind and time, following live.
import { get } from "../api.js";
import { h, fill, time } from "../dom.js";
import { onEvent } from "../live.js";

const KINDS = ["dhcp-boot", "tftp-file", "script", "script-wait", "http-file", "kexec-planned", "node-discovered", "node-enrolled",
  "agent-ready", "node-failed", "node-recovered", "node-state", "access-refused", "command-queued", "command-result", "assigned",
  "default-image", "image-added", "image-removed", "image-corrupt", "disk-created", "disk-deleted", "disk-attached", "disk-detached",
  "reservation-set", "reservation-removed", "store-error", "env-changed", "engine-decision", "slot-step", "alert"];

export default async function events(root, _args, query) {
  const node = h("input", { id: "ev-node", placeholder: "node id or MAC", value: query.get("node") || "" });
  const kind = h("select", { id: "ev-kind" }, h("option", { value: "" }, "any kind"), KINDS.map((k) => h("option", { value: k }, k)));
  kind.value = query.get("kind") || "";
  const since = h("select", { id: "ev-since" }, [["900", "last 15 min"], ["3600", "last hour"], ["86400", "last day"], ["0", "all kept"]].map(([v, l]) => h("option", { value: v }, l)));
  since.value = "3600";
  const follow = h("input", { type: "checkbox", id: "ev-follow", checked: true });
  const box = h("div", { class: "panel" });
  fill(root, h("h1", {}, "Events"), h("div", { class: "toolbar" }, node, kind, since, h("label", {}, follow, " follow live"),
    h("button", { class: "secondary", onclick: () => load() }, "Apply")), box);
  let list = [];
  const wanted = (e) => {
    const n = node.value.trim();
    const s = Number(since.value);
    return (!kind.value || e.kind === kind.value) && (!n || e.node === n || e.node === "node-" + n.replace(/:/g, "").toLowerCase()) && (!s || e.at_ms >= Date.now() - s * 1000);
  };
  function render() {
    const rows = list.filter(wanted).slice(-500).reverse();
    fill(box, rows.length === 0 ? h("p", { class: "muted" }, "No event matches.") : h("table", { id: "event-table" },
      h("thead", {}, h("tr", {}, ["id", "when", "node", "kind", "detail"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((e) => h("tr", {}, h("td", {}, e.id), h("td", {}, time(e.at_ms)),
        h("td", {}, e.node ? h("a", { href: "#/node/" + e.node }, e.node) : ""), h("td", {}, e.kind), h("td", { class: "wrap" }, JSON.stringify(e.detail)))))));
  }
  async function load() {
    const n = node.value.trim();
    list = await get(n ? `/api/events?node=${encodeURIComponent(n)}&limit=100000` : "/api/events?tail=5000&limit=5000");
    render();
  }
  for (const el of [kind, since]) el.addEventListener("change", render);
  node.addEventListener("change", () => load());
  await load();
  const off = onEvent((e) => { if (!follow.checked) return; list.push(e); if (wanted(e)) render(); });
  return off;
}
