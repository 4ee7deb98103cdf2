// Failover hosts (`node-agent host`) and the VMs they run for failed-over
// slots: state, capacity, VMs in use, and each VM's slot, node and the
// physical node it stands in for.
import { get } from "../api.js";
import { h, fill, bytes } from "../dom.js";

const ago = (ms) => (ms ? `${Math.max(0, Math.round((Date.now() - ms) / 1000))} s ago` : "never");

export default async function hosts(root) {
  const box = h("div");
  fill(root, h("h1", {}, "Failover hosts"), box);
  let list;
  try { list = await get("/api/hosts"); } catch (e) { return fill(box, h("p", { class: "muted" }, "Hosts: " + e.message)); }
  if (list.length === 0) {
    return fill(box, h("p", { class: "muted" }, "No failover host is enrolled (boot-server host add NAME, then node-agent host on the host)."));
  }
  fill(box,
    h("div", { class: "panel" }, h("table", { id: "hosts" },
      h("thead", {}, h("tr", {}, ["host", "state", "CPUs", "memory", "VMs in use / reserved", "KVM", "last poll"].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.map((x) => h("tr", { dataset: { host: x.name } },
        h("td", {}, x.name), h("td", {}, x.state),
        h("td", {}, x.capacity ? String(x.capacity.cpus) : "—"),
        h("td", {}, x.capacity ? bytes(x.capacity.memory_bytes) : "—"),
        h("td", {}, `${x.vms_in_use} / ${x.capacity ? x.capacity.reserve : "?"}`),
        h("td", {}, x.capacity && x.capacity.kvm ? "yes" : "no"),
        h("td", {}, ago(x.last_seen_ms))))))),
    h("h2", {}, "VMs"),
    h("div", { class: "panel" }, h("table", { id: "vms" },
      h("thead", {}, h("tr", {}, ["VM", "host", "state", "environment / slot", "node", "stands in for", "size"].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.flatMap((x) => x.vms).map((v) => h("tr", { dataset: { vm: v.id } },
        h("td", {}, v.id), h("td", {}, v.host), h("td", {}, v.state),
        h("td", {}, h("a", { href: "#/environment/" + v.environment }, `${v.environment} / ${v.slot}`)),
        h("td", {}, h("a", { href: "#/node/" + v.node }, v.node)),
        h("td", {}, v.stands_in_for ? h("a", { href: "#/node/" + v.stands_in_for }, v.stands_in_for) : "—"),
        h("td", {}, `${v.cpus} CPU, ${v.memory_mb} MiB, ${v.firmware}`)))))));
}
