// Images: the image table, the default image, removal, and import: files
// uploaded with a progress bar (PUT /api/images/NAME/files/FILE), then the
// manifest that names them (POST /api/images).
import { get, post, put, del, upload } from "../api.js";
import { h, fill, bytes, toast } from "../dom.js";

export default async function images(root) {
  const box = h("div", { class: "panel" });
  const name = h("input", { id: "imp-name", placeholder: "name", pattern: "[A-Za-z0-9_.-]+" });
  const kernel = h("input", { id: "imp-kernel", type: "file" });
  const initrd = h("input", { id: "imp-initrd", type: "file" });
  const cmdline = h("input", { id: "imp-cmdline", value: "console=ttyS0 quiet", size: 40 });
  const bar = h("progress", { id: "imp-progress", max: 1, value: 0 });
  const status = h("span", { id: "imp-status", class: "muted" });
  fill(root, h("h1", {}, "Images"), box, h("h2", {}, "Import a Linux image"),
    h("div", { class: "panel" }, h("form", { class: "grid", onsubmit: (e) => { e.preventDefault(); doImport(); } },
      h("label", { for: "imp-name" }, "Name"), name, h("label", { for: "imp-kernel" }, "Kernel"), kernel,
      h("label", { for: "imp-initrd" }, "Initrd"), initrd, h("label", { for: "imp-cmdline" }, "Command line"), cmdline,
      h("span"), h("div", {}, h("button", { type: "submit" }, "Upload and add"), " ", bar, " ", status))));

  async function load() {
    const list = await get("/api/images");
    fill(box, list.length === 0 ? h("p", { class: "muted" }, "No image.") : h("table", { id: "image-table" },
      h("thead", {}, h("tr", {}, ["name", "version", "kind", "kernel", "initrd", "archs", "size", "default", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.map((i) => h("tr", { dataset: { image: i.name } },
        h("td", {}, i.name), h("td", {}, i.version), h("td", {}, i.kind), h("td", {}, i.kernel || ""), h("td", {}, i.initrd || ""),
        h("td", {}, (i.archs || []).join(", ")), h("td", {}, bytes(i.size_bytes)), h("td", {}, i.default ? "default" : ""),
        h("td", {},
          i.default ? "" : h("button", { class: "secondary", onclick: () => act(`default ${i.name}`, () => put("/api/default-image", { image: i.name })) }, "Make default"), " ",
          h("button", { class: "danger", onclick: () => { if (confirm(`Remove image ${i.name}?`)) act(`remove ${i.name}`, () => del("/api/images/" + encodeURIComponent(i.name))); } }, "Remove")))))));
  }
  async function act(what, f) { try { await f(); toast(what + ": done"); await load(); } catch (e) { toast(`${what}: ${e.message}`, true); } }
  async function doImport() {
    const n = name.value.trim();
    const files = [kernel.files[0], initrd.files[0]];
    if (!n || !files[0]) return toast("Give a name and at least a kernel.", true);
    const total = files.filter(Boolean).reduce((a, f) => a + f.size, 0);
    let done = 0;
    const paths = [];
    try {
      for (const f of files) {
        if (!f) { paths.push(null); continue; }
        fill(status, `uploading ${f.name}…`);
        const r = await upload(`/api/images/${encodeURIComponent(n)}/files/${encodeURIComponent(f.name)}`, f, (p) => { bar.value = (done + p * f.size) / total; });
        done += f.size;
        paths.push(r.path);
      }
      const q = (s) => JSON.stringify(s);
      const manifest = `name = ${q(n)}\nversion = "1"\nkind = "linux"\nkernel = ${q(paths[0])}\n` + (paths[1] ? `initrd = ${q(paths[1])}\n` : "") + `cmdline = ${q(cmdline.value)}\narchs = ["bios", "uefi-x64"]\n`;
      await post("/api/images", { manifest });
      fill(status, `added ${n}`);
      toast(`image ${n} added`);
      await load();
    } catch (e) { fill(status, ""); toast(`import: ${e.message}`, true); }
  }
  await load();
}
