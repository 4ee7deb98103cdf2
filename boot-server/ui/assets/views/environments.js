// Environments: the list (min / current / desired / max, active), with the
// way to the wizard and to each environment's detail.
import { get } from "../api.js";
import { h, fill, badge } from "../dom.js";
import { onEvent } from "../live.js";

export default async function environments(root) {
  const box = h("div", { class: "panel" });
  fill(root, h("h1", {}, "Environments"),
    h("div", { class: "toolbar" }, h("a", { href: "#/wizard", id: "new-env" }, h("button", { type: "button" }, "New environment"))), box);
  async function load() {
    const envs = await get("/api/environments");
    if (envs.length === 0) return fill(box, h("p", { class: "muted" }, "No environment yet."));
    fill(box, h("table", { id: "env-table" },
      h("thead", {}, h("tr", {}, ["name", "state", "priority", "min", "ready", "held", "desired", "max", "image", "policy", "description"].map((c) => h("th", {}, c)))),
      h("tbody", {}, envs.map((e) => h("tr", { dataset: { env: e.name } },
        h("td", {}, h("a", { href: "#/environment/" + encodeURIComponent(e.name) }, e.name)),
        h("td", {}, badge(e.active ? "ready" : "vacant"), " ", e.active ? "active" : "inactive"),
        h("td", {}, e.priority), h("td", {}, e.min),
        h("td", {}, e.slots.filter((s) => s.node && s.step === "ready").length),
        h("td", {}, e.holding), h("td", {}, e.desired), h("td", {}, e.max), h("td", {}, e.image),
        h("td", {}, e.policy ? `${e.policy.metric} ${e.policy.remove_below}–${e.policy.add_above}` : "—"),
        h("td", { class: "wrap" }, e.description))))));
  }
  await load();
  let t = null;
  const off = onEvent((e) => {
    if (!["env-changed", "engine-decision", "slot-step"].includes(e.kind) || t) return;
    t = setTimeout(() => { t = null; load().catch(() => {}); }, 300);
  });
  return () => { off(); if (t) clearTimeout(t); };
}
