// Unit test of the UI's boot timeline (boot-server/ui/assets/timeline.js): node --test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { boots } from "../../boot-server/ui/assets/timeline.js";

const images = { lab: { kernel: "build/lab/vmlinuz", initrd: "build/lab/initrd.img" } };
const ev = (id, at_ms, kind, detail = {}) => ({ id, at_ms, kind, detail, node: "n" });

test("a cold boot: PXE and iPXE DHCP, script, kernel, initrd, agent ready", () => {
  const b = boots([
    ev(1, 1000, "dhcp-boot"), ev(2, 1400, "tftp-file", { path: "undionly.kpxe" }), ev(3, 1800, "dhcp-boot"),
    ev(4, 2000, "script", { image: "lab" }), ev(5, 2100, "http-file", { path: "build/lab/vmlinuz" }),
    ev(6, 2600, "http-file", { path: "build/lab/initrd.img" }), ev(7, 9600, "agent-ready", { image: "lab" }),
  ], images);
  assert.equal(b.length, 1);
  assert.deepEqual(b[0].steps.map((s) => [s.phase, s.ms]), [["dhcp", 1000], ["script", 100], ["kernel", 500], ["initrd", 7000], ["agent", 0]]);
  assert.equal(b[0].total_ms, 8600);
  assert.equal(b[0].done, true);
  assert.equal(b[0].image, "lab");
});

test("a second boot starts at its DHCP; a warm move at its kexec; an unfinished boot is running", () => {
  const b = boots([
    ev(1, 0, "dhcp-boot"), ev(2, 100, "script", { image: "lab" }), ev(3, 5000, "agent-ready"),
    ev(4, 10000, "kexec-planned", { image: "web" }), ev(5, 14000, "agent-ready"),
    ev(6, 20000, "dhcp-boot"), ev(7, 20500, "script", { image: "lab" }),
  ], images, 23000);
  assert.equal(b.length, 3);
  assert.deepEqual(b[1].steps.map((s) => s.phase), ["kexec", "agent"]);
  assert.equal(b[1].total_ms, 4000);
  assert.equal(b[2].done, false);
  assert.equal(b[2].total_ms, 3000);
  assert.deepEqual(b[2].steps.at(-1), { phase: "script", label: "script", from_ms: 20500, ms: 2500, running: true });
});
