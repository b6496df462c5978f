// The one way the console talks to the cloud: JSON over fetch with the session's bearer token.
// An expired access token is refreshed once (single flight) and the request retried; when the
// refresh fails too, the session ends and the login page shows.

import type { Page } from "./paging";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly body: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export type Session = { access: string; refresh: string };

const KEY = "pulse.session";
const listeners = new Set<() => void>();
let current: Session | null = load();

function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export const session = {
  get: (): Session | null => current,
  set(s: Session | null) {
    current = s;
    if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
    else sessionStorage.removeItem(KEY);
    listeners.forEach((l) => l());
  },
  subscribe(l: () => void): () => void {
    listeners.add(l);
    return () => listeners.delete(l);
  },
};

type Tokens = { access_token: string; refresh_token: string };

async function errorOf(r: Response): Promise<ApiError> {
  let code = "http." + r.status;
  let message = `${r.status} ${r.statusText}`;
  let extra: Record<string, unknown> = {};
  try {
    const body = await r.json();
    if (body && typeof body.message === "string") message = body.message;
    if (body && typeof body.code === "string") code = body.code;
    // FastAPI's own validation errors: {detail: [{loc, msg}]}
    if (body && Array.isArray(body.detail)) message = body.detail.map((d: { loc?: unknown[]; msg?: string }) => `${(d.loc ?? []).slice(1).join(".")}: ${d.msg}`).join("; ");
    if (body && typeof body === "object") extra = body;
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(r.status, code, message, extra);
}

export async function login(email: string, password: string): Promise<void> {
  const r = await fetch("/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  if (!r.ok) throw await errorOf(r);
  const t = (await r.json()) as Tokens;
  session.set(null); // whoever was signed in here before: nothing of theirs stays in the cache
  session.set({ access: t.access_token, refresh: t.refresh_token });
}

export function logout(): void {
  session.set(null);
}

/** Ends every session of the account (every browser, every refresh token), then this one. */
export async function logoutEverywhere(): Promise<void> {
  if (current) await fetch("/auth/logout-all", { method: "POST", headers: { Authorization: `Bearer ${current.access}` } }).catch(() => undefined);
  session.set(null);
}

/** What a one-time link (invitation or reset) is for; throws users.link_invalid when it is spent. */
export async function inspectLink(token: string): Promise<{ kind: string; email: string }> {
  const r = await fetch("/auth/links/inspect", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) });
  if (!r.ok) throw await errorOf(r);
  return (await r.json()) as { kind: string; email: string };
}

export async function acceptLink(token: string, password: string): Promise<void> {
  const r = await fetch("/auth/links/accept", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token, password }) });
  if (!r.ok) throw await errorOf(r);
  const t = (await r.json()) as Tokens;
  session.set(null); // whoever was signed in here before: nothing of theirs stays in the cache
  session.set({ access: t.access_token, refresh: t.refresh_token });
}

let refreshing: Promise<boolean> | null = null;

function refresh(): Promise<boolean> {
  const s = current;
  if (!s) return Promise.resolve(false);
  refreshing ??= (async () => {
    try {
      const r = await fetch("/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: s.refresh }),
      });
      if (!r.ok) return false;
      const t = (await r.json()) as Tokens;
      session.set({ access: t.access_token, refresh: t.refresh_token });
      return true;
    } catch {
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** A fresh access token for the live socket (refreshing first when the server said it expired). */
export async function accessToken(forceRefresh = false): Promise<string | null> {
  if (forceRefresh && !(await refresh())) return null;
  return current?.access ?? null;
}

export type Query = Record<string, string | number | string[] | undefined | null>;

export function queryString(q: Query | undefined): string {
  if (!q) return "";
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => p.append(k, x));
    else p.append(k, String(v));
  }
  const s = p.toString();
  return s ? "?" + s : "";
}

type Opts = { method?: string; body?: unknown; query?: Query };

export async function api<T>(path: string, opts: Opts = {}): Promise<T> {
  return (await request<T>(path, opts)).body;
}

/** A list page: every list of the API answers {items, next_cursor} (the cursor is in the body). */
export async function apiPage<T>(path: string, opts: Opts = {}): Promise<Page<T>> {
  return api<Page<T>>(path, opts);
}

async function request<T>(path: string, opts: Opts): Promise<{ body: T; headers: Headers }> {
  const send = () =>
    fetch(path + queryString(opts.query), {
      method: opts.method ?? "GET",
      headers: {
        ...(current ? { Authorization: `Bearer ${current.access}` } : {}),
        ...(opts.body !== undefined ? { "Content-Type": "application/json" } : {}),
      },
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
  let r = await send();
  if (r.status === 401 && current) {
    if (await refresh()) r = await send();
    else {
      session.set(null);
      throw new ApiError(401, "auth.expired", "Your session ended; log in again.");
    }
  }
  if (!r.ok) throw await errorOf(r);
  if (r.status === 204) return { body: undefined as T, headers: r.headers };
  return { body: (await r.json()) as T, headers: r.headers };
}
