// live.js: the live events the shell's one stream delivers, for views to follow.
const listeners = new Set();

/** Calls f(event) for every live event until the returned function is called. */
export function onEvent(f) { listeners.add(f); return () => listeners.delete(f); }

/** Hands an event to every listener (the shell calls it). */
export function dispatch(e) {
  for (const f of [...listeners]) { try { f(e); } catch (err) { console.error(err); } }
}
