// api.js: the admin REST API as the UI uses it. The token lives in
// sessionStorage (gone when the tab closes) and travels only in the
// Authorization header: the live event stream is read with fetch(), not
// EventSource (which cannot send headers), so no token ever lands in a URL.

const KEY = "boot-server.token";

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(t) { sessionStorage.setItem(KEY, t); }
export function clearToken() { sessionStorage.removeItem(KEY); }

/** An API error: HTTP status plus the server's {code, message}. */
export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

let onUnauthorized = () => {};
/** Called when the server refuses the token (401/403 on a read): back to the login. */
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

async function check(r) {
  if (r.ok) {
    if (r.status === 204) return null;
    const ct = r.headers.get("content-type") || "";
    return ct.includes("json") ? r.json() : r.text();
  }
  let code = "http_" + r.status, message = r.statusText;
  try { const b = await r.json(); code = b.code || code; message = b.message || message; } catch { /* not JSON */ }
  const e = new ApiError(r.status, code, message);
  if (r.status === 401) onUnauthorized(e);
  throw e;
}

/** `method` `path` with an optional JSON body; resolves to the parsed answer. */
export async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + (token() || "") };
  const init = { method, headers };
  if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  return check(await fetch(path, init));
}
export const get = (p) => call("GET", p);
export const post = (p, b) => call("POST", p, b === undefined ? {} : b);
export const put = (p, b) => call("PUT", p, b);
export const patch = (p, b) => call("PATCH", p, b);
export const del = (p) => call("DELETE", p);

/** Uploads `file` with PUT to `path`, reporting progress (0..1) to `progress`. */
export function upload(path, file, progress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", path);
    x.setRequestHeader("Authorization", "Bearer " + (token() || ""));
    x.upload.onprogress = (e) => { if (e.lengthComputable) progress(e.loaded / e.total); };
    x.onload = () => {
      let b = {};
      try { b = JSON.parse(x.responseText); } catch { /* empty */ }
      if (x.status >= 200 && x.status < 300) { progress(1); resolve(b); }
      else reject(new ApiError(x.status, b.code || "http_" + x.status, b.message || x.statusText));
    };
    x.onerror = () => reject(new ApiError(0, "network", "upload failed (connection lost)"));
    x.send(file);
  });
}

/**
 * The live event stream (GET /api/events/stream, Server-Sent Events) read with
 * fetch. Calls onEvent(event) for each stored event and onState(true|false) as
 * the connection comes and goes; reconnects (with ?after= the last id, so
 * nothing is missed) after an error or when the server dropped us for being
 * slow. Returns a function that stops it.
 */
export function liveEvents(onEvent, onState) {
  let stopped = false, ctrl = null, lastId = null, delay = 500;
  async function run() {
    while (!stopped) {
      ctrl = new AbortController();
      try {
        const q = lastId === null ? "" : "?after=" + lastId;
        const r = await fetch("/api/events/stream" + q, {
          headers: { Authorization: "Bearer " + (token() || ""), Accept: "text/event-stream" },
          signal: ctrl.signal,
        });
        if (r.status === 401 || r.status === 403) { onState(false); await check(r).catch(() => {}); return; }
        if (!r.ok || !r.body) throw new Error("stream: HTTP " + r.status);
        onState(true);
        delay = 500;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i); buf = buf.slice(i + 2);
            let type = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) type = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trimStart();
            }
            if (type === "event" && data) {
              const e = JSON.parse(data);
              lastId = e.id;
              onEvent(e);
            } else if (type === "open" && lastId === null) {
              lastId = -1; // from now on, reconnects replay what was missed
            }
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      onState(false);
      if (lastId === -1) lastId = null;
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }
  run();
  return () => { stopped = true; if (ctrl) ctrl.abort(); };
}
