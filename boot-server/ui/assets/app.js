// app.js: the UI shell. Login (the admin token, kept in sessionStorage), the
// hash router (#/view/arg), the one live event stream shared by the views,
// and the views' life cycle (each view returns a cleanup function).

import * as api from "./api.js";
import { h, fill, toast } from "./dom.js";
import { dispatch } from "./live.js";
import dashboard from "./views/dashboard.js";
import nodes from "./views/nodes.js";
import node from "./views/node.js";
import environments from "./views/environments.js";
import environment from "./views/environment.js";
import wizard from "./views/wizard.js";
import images from "./views/images.js";
import disks from "./views/disks.js";
import hosts from "./views/hosts.js";
import events from "./views/events.js";

const routes = {
  dashboard, nodes, node, environments, environment, wizard, images, disks, hosts, events,
};
const nav = { node: "nodes", environment: "environments", wizard: "environments" };

const app = document.getElementById("app");
let cleanup = null;
let stopLive = null;

function setLive(on) {
  const el = document.getElementById("live");
  el.textContent = on ? "live" : "offline";
  el.classList.toggle("on", on);
}

function startLive() {
  if (stopLive) stopLive();
  stopLive = api.liveEvents(dispatch, setLive);
}

function showLogin(message) {
  if (cleanup) { cleanup(); cleanup = null; }
  if (stopLive) { stopLive(); stopLive = null; }
  setLive(false);
  document.getElementById("top").hidden = true;
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "admin token", required: true });
  const err = h("p", { class: "error", id: "login-error" }, message || "");
  const form = h("form", { class: "panel login", id: "login" },
    h("h1", {}, "boot-server"),
    h("label", { for: "token" }, "Admin token"),
    input,
    h("button", { type: "submit" }, "Log in"),
    err,
    h("p", { class: "muted" }, "The token is kept in this tab only (sessionStorage). It is in state_dir/admin.token on the server."),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    try {
      await api.get("/api/environments");
      if (!location.hash || location.hash === "#/login") location.hash = "#/dashboard";
      start();
    } catch (e) {
      api.clearToken();
      fill(err, e.status === 401 || e.status === 403 ? "The server refused this token." : "Cannot reach the server: " + e.message);
    }
  });
  fill(app, form);
  input.focus();
}

async function route() {
  if (!api.token()) return showLogin();
  const [path, qs = ""] = (location.hash || "#/dashboard").slice(1).split("?");
  const [, name = "dashboard", ...args] = path.split("/");
  const view = routes[name] || dashboard;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === (nav[name] || name));
  if (cleanup) { cleanup(); cleanup = null; }
  const root = h("div", { id: "view-" + name, class: "view" });
  fill(app, root);
  try {
    cleanup = (await view(root, args.map(decodeURIComponent), new URLSearchParams(qs))) || null;
  } catch (e) {
    if (e.status === 401) return;
    fill(root, h("p", { class: "error" }, "Could not load this view: " + e.message));
  }
}

function start() {
  document.getElementById("top").hidden = false;
  startLive();
  route();
}

api.setUnauthorizedHandler(() => {
  api.clearToken();
  showLogin("The server refused the token (revoked or expired): log in again.");
});
document.getElementById("logout").addEventListener("click", () => { api.clearToken(); showLogin(); });
window.addEventListener("hashchange", () => { if (api.token()) route(); });
window.addEventListener("unhandledrejection", (e) => {
  if (e.reason instanceof api.ApiError && e.reason.status !== 401) toast(e.reason.message, true);
});

if (api.token()) start(); else showLogin();
