// Disks: bases, overlays (with their allocated size, the node they are
// attached to and the server that serves them) and snapshots; snapshot,
// detach and delete.
import { get, post, del } from "../api.js";
import { h, fill, bytes, toast } from "../dom.js";

export default async function disks(root) {
  const box = h("div");
  fill(root, h("h1", {}, "Disks"), box);
  async function act(what, f) { try { await f(); toast(what + ": done"); await load(); } catch (e) { toast(`${what}: ${e.message}`, true); } }
  async function load() {
    let list;
    try { list = await get("/api/disks"); } catch (e) { return fill(box, h("p", { class: "muted" }, "Disks: " + e.message)); }
    const group = (kind, title, extra) => {
      const rows = list.filter((d) => d.kind === kind);
      return [h("h2", {}, title), h("div", { class: "panel" }, rows.length === 0 ? h("p", { class: "muted" }, "None.") :
        h("table", { id: "disks-" + kind }, h("thead", {}, h("tr", {}, ["name", "base / origin", "size", "allocated", "attached to", "served by", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows.map((d) => h("tr", { dataset: { disk: d.name } },
            h("td", {}, d.name), h("td", {}, d.base || d.origin || ""), h("td", {}, bytes(d.size)), h("td", {}, bytes(d.allocated_bytes)),
            h("td", {}, d.node ? h("a", { href: "#/node/" + d.node }, d.node) : "—"), h("td", { class: "server" }, d.server || "—"), h("td", {}, extra(d)))))))];
    };
    const del_ = (d) => h("button", { class: "danger", onclick: () => { if (confirm(`Delete ${d.name}?`)) act(`delete ${d.name}`, () => del(`/api/disks/${encodeURIComponent(d.name)}${d.kind === "base" ? "?base=true" : ""}`)); } }, "Delete");
    fill(box,
      group("base", "Bases", del_),
      group("overlay", "Overlays", (d) => [
        h("button", { class: "secondary", onclick: () => { const s = prompt(`Snapshot name for ${d.name}:`); if (s) act(`snapshot ${d.name}`, () => post(`/api/disks/${encodeURIComponent(d.name)}/snapshot`, { snapshot: s })); } }, "Snapshot"), " ",
        d.node ? h("button", { class: "secondary", onclick: () => act(`detach ${d.name}`, () => post(`/api/disks/${encodeURIComponent(d.name)}/detach`)) }, "Detach") : "", " ", del_(d)]),
      group("snapshot", "Snapshots", del_));
  }
  await load();
}
