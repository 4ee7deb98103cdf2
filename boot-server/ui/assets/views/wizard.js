// The environment wizard: create a new environment, or (?edit=NAME) modify
// one, or (?copy=NAME) start from a copy. Three steps (basics, nodes, policy
// hooks, policy and schedules) and a review; the result is one POST or PATCH.
import { get, post, patch } from "../api.js";
import { h, fill, toast } from "../dom.js";

const STEPS = ["Basics", "Nodes", "Hooks", "Policy & schedules", "Review"];
const HOOKS = ["start", "stop", "health", "busy"];

export default async function wizard(root, _args, query) {
  const editing = query.get("edit"), copying = query.get("copy");
  const [images, disks] = await Promise.all([get("/api/images"), get("/api/disks").catch(() => [])]);
  let src = null;
  if (editing || copying) src = await get("/api/environments/" + encodeURIComponent(editing || copying));
  const v = src ? structuredClone(src) : { name: "", description: "", image: (images.find((i) => i.default) || images[0] || {}).name || "", disk_base: null,
    min: 0, desired: 1, max: 4, priority: 0, preemptible: true, hostname_pattern: "{env}-{slot}", active: true, policy: null, schedules: [], hooks: {} };
  if (copying) v.name = copying + "-copy";
  let step = 0;
  const box = h("div", { class: "panel" });
  const stepper = h("div", { class: "steps" });
  fill(root, h("h1", {}, editing ? `Modify ${editing}` : copying ? `Copy ${copying}` : "New environment"), stepper, box);

  const field = (label, input) => [h("label", { for: input.id }, label), input];
  const num = (id, val, min = 0) => h("input", { id, type: "number", min, value: val, style: "width: 7em" });
  const inputs = {
    name: h("input", { id: "wz-name", value: v.name, required: true, pattern: "[a-z0-9-]{1,40}", disabled: !!editing, placeholder: "web" }),
    description: h("input", { id: "wz-description", value: v.description, size: 50 }),
    image: h("select", { id: "wz-image" }, images.map((i) => h("option", { value: i.name }, `${i.name} (${i.kind})`))),
    disk_base: h("select", { id: "wz-disk" }, h("option", { value: "" }, "none (RAM root)"), disks.filter((d) => d.kind === "base").map((d) => h("option", { value: d.name }, d.name))),
    min: num("wz-min", v.min), desired: num("wz-desired", v.desired), max: num("wz-max", v.max, 1),
    priority: h("input", { id: "wz-priority", type: "number", value: v.priority, style: "width: 7em" }),
    preemptible: h("input", { id: "wz-preemptible", type: "checkbox", checked: v.preemptible }),
    active: h("input", { id: "wz-active", type: "checkbox", checked: v.active }),
    hostname_pattern: h("input", { id: "wz-hostname", value: v.hostname_pattern }),
    ...Object.fromEntries(HOOKS.map((k) => [`hook_${k}`, h("textarea", { id: `wz-hook-${k}`, rows: k === "start" ? 5 : 3, cols: 70,
      placeholder: k === "start" ? "#!/bin/sh\n# runs on the node when it takes a slot (SLOT_INDEX, SLOT_HOSTNAME, config keys in the environment)" : `#!/bin/sh (optional ${k} hook)` },
      (v.hooks || {})[k] || "")])),
    policy_on: h("input", { id: "wz-policy", type: "checkbox", checked: !!v.policy }),
    metric: h("input", { id: "wz-metric", value: v.policy ? v.policy.metric : "load", size: 10 }),
    add_above: h("input", { id: "wz-add-above", type: "number", step: "any", value: v.policy ? v.policy.add_above : 0.8, style: "width: 7em" }),
    remove_below: h("input", { id: "wz-remove-below", type: "number", step: "any", value: v.policy ? v.policy.remove_below : 0.2, style: "width: 7em" }),
    window_secs: num("wz-window", v.policy ? v.policy.window_secs : 60, 1),
    schedules: h("textarea", { id: "wz-schedules", rows: 4, cols: 60, placeholder: "0 0 8 * * Mon-Fri => activate\n0 0 20 * * * => scale 1" },
      v.schedules.map((s) => `${s.cron} => ${typeof s.action === "string" ? s.action : "scale " + s.action.scale}`).join("\n")),
  };
  inputs.image.value = v.image;
  inputs.disk_base.value = v.disk_base || "";
  const pages = [
    [field("Name", inputs.name), field("Description", inputs.description), field("Image", inputs.image), field("Disk base", inputs.disk_base)],
    [field("Minimum nodes", inputs.min), field("Nodes now (desired)", inputs.desired), field("Maximum nodes", inputs.max),
      field("Priority", inputs.priority), field("Preemptible", inputs.preemptible), field("Active", inputs.active), field("Host names", inputs.hostname_pattern)],
    [h("p", { class: "full muted" }, "Scripts the node's agent runs: start (required to serve: the application), stop, health (prints key=value, e.g. load=0.4), busy (exit 0 while busy)."),
      HOOKS.map((k) => field(`${k} hook`, inputs[`hook_${k}`]))],
    [field("Load policy", inputs.policy_on), field("Metric", inputs.metric), field("Add a node above", inputs.add_above), field("Remove one below", inputs.remove_below),
      field("Window (s)", inputs.window_secs), h("label", { for: "wz-schedules" }, "Schedules (cron => activate | deactivate | scale N)"), inputs.schedules],
  ];

  function body() {
    const b = {
      name: inputs.name.value.trim(), description: inputs.description.value, image: inputs.image.value,
      disk_base: inputs.disk_base.value || null, min: Number(inputs.min.value), desired: Number(inputs.desired.value), max: Number(inputs.max.value),
      priority: Number(inputs.priority.value), preemptible: inputs.preemptible.checked, active: inputs.active.checked,
      hostname_pattern: inputs.hostname_pattern.value,
      policy: inputs.policy_on.checked ? { metric: inputs.metric.value, add_above: Number(inputs.add_above.value), remove_below: Number(inputs.remove_below.value), window_secs: Number(inputs.window_secs.value) } : null,
      schedules: [],
      hooks: Object.fromEntries(HOOKS.map((k) => [k, inputs[`hook_${k}`].value]).filter(([, t]) => t.trim() !== "")),
    };
    for (const line of inputs.schedules.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const [cron, act = ""] = line.split("=>").map((x) => x.trim());
      const m = act.match(/^scale\s+(\d+)$/);
      if (!cron || !(act === "activate" || act === "deactivate" || m)) throw new Error(`schedule "${line}": write CRON => activate | deactivate | scale N`);
      b.schedules.push({ cron, action: m ? { scale: Number(m[1]) } : act });
    }
    if (copying && src) { b.config = src.config; b.requirements = src.requirements; b.addresses = null; b.boot = src.boot; b.version = src.version; b.share_pct = src.share_pct; }
    return b;
  }
  function validate() {
    if (step === 0 && !/^[a-z0-9-]{1,40}$/.test(inputs.name.value.trim())) return "Name: 1-40 lowercase letters, digits or '-'.";
    if (step === 0 && !inputs.image.value) return "Pick an image (add one under Images first).";
    if (step === 1) {
      const [mi, de, ma] = [inputs.min, inputs.desired, inputs.max].map((i) => Number(i.value));
      if (!(mi <= de && de <= ma)) return "Nodes: minimum ≤ desired ≤ maximum.";
    }
    if (step === 2 && !inputs.hook_start.value.trim()) return "A start hook is needed: the node runs it to serve this environment.";
    if (step === 3) { try { body(); } catch (e) { return e.message; } }
    return null;
  }
  const err = h("p", { class: "error", id: "wz-error" });
  function render() {
    fill(stepper, STEPS.map((s, i) => h("span", { class: i === step ? "on" : "" }, `${i + 1}. ${s}`)));
    const nav = h("div", { class: "toolbar full" },
      step > 0 ? h("button", { type: "button", class: "secondary", onclick: () => { step--; render(); } }, "Back") : "",
      step < pages.length ? h("button", { type: "button", id: "wz-next", onclick: () => { const m = validate(); fill(err, m || ""); if (!m) { step++; render(); } } }, "Next")
        : h("button", { type: "button", id: "wz-submit", onclick: submit }, editing ? "Save changes" : "Create environment"));
    if (step < pages.length) fill(box, h("form", { class: "grid", onsubmit: (e) => e.preventDefault() }, pages[step], nav, err));
    else fill(box, h("pre", { id: "wz-review" }, JSON.stringify(body(), null, 2)), nav, err);
  }
  async function submit() {
    try {
      const b = body();
      const r = editing ? await patch("/api/environments/" + encodeURIComponent(editing), b) : await post("/api/environments", b);
      toast(`${editing ? "saved" : "created"} ${r.name}`);
      location.hash = "#/environment/" + encodeURIComponent(r.name);
    } catch (e) { fill(err, e.message); }
  }
  render();
}
