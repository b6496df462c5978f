// A small history router: the console lives under /app, every page is a path below it, and
// list filters live in the query string so that a filtered view can be shared as a link.
import { useSyncExternalStore } from "react";

export const BASE = "/app";
const EVENT = "pulse:navigate";

function snapshot(): string {
  const path = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) || "/" : "/";
  return path + location.search;
}

function subscribe(cb: () => void): () => void {
  window.addEventListener("popstate", cb);
  window.addEventListener(EVENT, cb);
  return () => {
    window.removeEventListener("popstate", cb);
    window.removeEventListener(EVENT, cb);
  };
}

export function navigate(to: string, opts: { replace?: boolean } = {}): void {
  const url = BASE + to;
  if (opts.replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  window.dispatchEvent(new Event(EVENT));
}

/** The current location below /app: { path, query }. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const s = useSyncExternalStore(subscribe, snapshot);
  const i = s.indexOf("?");
  return { path: i < 0 ? s : s.slice(0, i), query: new URLSearchParams(i < 0 ? "" : s.slice(i)) };
}

/** Match "/devices/:id" against a path; returns the parameters or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const names: string[] = [];
  const re = new RegExp(
    "^" + pattern.replace(/:([a-z]+)/g, (_, n: string) => (names.push(n), "([^/]+)")).replace(/\/$/, "") + "/?$",
  );
  const m = re.exec(path);
  if (!m) return null;
  return Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1])]));
}
