// timeline.js: a node's boots from its events: DHCP -> script -> kernel ->
// initrd -> agent ready (cold boot), or kexec -> agent ready (warm move), with
// the time each phase took. Pure functions (no DOM) over /api/events objects.

/** The phases in boot order, with their labels. */
export const PHASES = [
  ["dhcp", "DHCP"], ["script", "script"], ["kernel", "kernel"], ["initrd", "initrd"], ["kexec", "kexec"], ["agent", "agent ready"],
];
const ORDER = Object.fromEntries(PHASES.map(([k], i) => [k, i]));

/** Which phase an event marks, if any (images: name -> {kernel, initrd}). */
function phaseOf(e, images, current) {
  switch (e.kind) {
    case "dhcp-boot": return "dhcp";
    case "script": return "script";
    case "kexec-planned": return "kexec";
    case "agent-ready": return "agent";
    case "http-file": {
      const img = images[(current && current.image) || ""] || {};
      const p = (e.detail && e.detail.path) || "";
      if (p === img.kernel || /vmlinuz|bzimage|kernel/i.test(p)) return "kernel";
      if (p === img.initrd || /initrd|initramfs/i.test(p)) return "initrd";
      return null;
    }
    default: return null;
  }
}

/**
 * Boots of one node, oldest first: {start_ms, image, done, marks: [{phase, at_ms}],
 * steps: [{phase, label, from_ms, ms, running}], total_ms}. A boot starts at
 * a DHCP answer (when the boot before it got past DHCP) or a planned kexec;
 * the first time a phase is seen in a boot counts.
 */
export function boots(events, images, now = Date.now()) {
  const out = [];
  let cur = null;
  for (const e of [...events].sort((a, b) => a.id - b.id)) {
    const phase = phaseOf(e, images, cur);
    if (!phase) continue;
    const past = cur && cur.marks.some((m) => ORDER[m.phase] > ORDER.dhcp);
    if (!cur || (phase === "dhcp" && past) || phase === "kexec" || (cur.done && phase !== "agent")) {
      cur = { start_ms: e.at_ms, image: null, done: false, marks: [] };
      out.push(cur);
    }
    if (phase === "script" && e.detail && e.detail.image) cur.image = e.detail.image;
    if (phase === "kexec" && e.detail && e.detail.image) cur.image = e.detail.image;
    if (!cur.marks.some((m) => m.phase === phase)) cur.marks.push({ phase, at_ms: e.at_ms });
    if (phase === "agent") cur.done = true;
  }
  for (const b of out) {
    b.marks.sort((x, y) => x.at_ms - y.at_ms || ORDER[x.phase] - ORDER[y.phase]);
    b.steps = b.marks.map((m, i) => {
      const next = b.marks[i + 1];
      const label = PHASES[ORDER[m.phase]][1];
      if (m.phase === "agent") return { phase: m.phase, label, from_ms: m.at_ms, ms: 0, running: false };
      const end = next ? next.at_ms : (b.done ? m.at_ms : now);
      return { phase: m.phase, label, from_ms: m.at_ms, ms: Math.max(0, end - m.at_ms), running: !next && !b.done };
    });
    const last = b.marks[b.marks.length - 1];
    b.total_ms = (b.done ? last.at_ms : now) - b.start_ms;
  }
  return out;
}
