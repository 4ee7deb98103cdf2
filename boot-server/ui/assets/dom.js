// dom.js: building elements without innerHTML (every value from the API is
// text, never markup), formatting, toasts.

/** h("div", {class: "x", onclick: f}, child, "text", [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) { el.replaceChildren(); append(el, children); return el; }

export const badge = (s) => h("span", { class: "badge s-" + s }, s);

export function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return (s / 86400).toFixed(1) + " d ago";
}
export const time = (ms) => (ms ? new Date(ms).toLocaleString() : "");
export const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
export function bytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

/** A short message at the bottom right. */
export function toast(msg, isError) {
  const t = h("div", { class: isError ? "error" : "" }, msg);
  document.getElementById("toast").append(t);
  setTimeout(() => t.remove(), isError ? 8000 : 4000);
}

/** A table: columns [{label, key?, sort?: row => value, cell: row => node}]. */
export function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => {
    const th = h("th", { class: c.sort ? "sortable" : "" }, c.label);
    if (opts.sorted && opts.sorted.key === c.key) th.classList.add("sorted", ...(opts.sorted.desc ? ["desc"] : []));
    if (c.sort && opts.onSort) th.addEventListener("click", () => opts.onSort(c));
    return th;
  }));
  const body = h("tbody", {}, rows.map((r) => h("tr", opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => h("td", { class: c.wrap ? "wrap" : "" }, c.cell(r))))));
  return h("table", { class: opts.class || "" }, h("thead", {}, head), body);
}
