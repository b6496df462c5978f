// Small shared pieces: status badges, empty and error states, the one-time secret box, time text.
import { useState, type ReactNode } from "react";
import { ApiError } from "../api";

export function StatusBadge({ status }: { status: string }) {
  return <span className={`badge badge-${status}`}>{status}</span>;
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="empty" role="status">
      <strong>{title}</strong>
      {children && <div>{children}</div>}
    </div>
  );
}

export function ErrorBox({ error, retry }: { error: unknown; retry?: () => void }) {
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof ApiError ? error.code : null;
  return (
    <div className="error" role="alert">
      <strong>Could not load this.</strong> {message} {code && <code>{code}</code>}
      {retry && (
        <button className="btn small" onClick={retry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return <div className="loading" aria-busy="true">{what}…</div>;
}

export function SecretOnce({ token, onDone, label = "New device token", children }: { token: string; onDone: () => void; label?: string; children?: ReactNode }) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="secret" role="dialog" aria-label={label}>
      {children ?? (
        <p>
          <strong>Copy this token now.</strong> Pulse keeps only a hash of it: it will not be shown again. The device
          sends it as <code>Authorization: Bearer …</code>.
        </p>
      )}
      <pre data-testid="secret-token">{token}</pre>
      <div className="row">
        <button
          className="btn"
          onClick={() => navigator.clipboard?.writeText(token).then(() => setCopied(true), () => setCopied(false))}
        >
          {copied ? "Copied" : "Copy"}
        </button>
        <button className="btn primary" onClick={onDone}>
          I have stored it
        </button>
      </div>
    </div>
  );
}

const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function Time({ value }: { value: string | null | undefined }) {
  if (!value) return <span className="muted">—</span>;
  const d = new Date(value);
  return <time dateTime={value} title={d.toISOString()}>{fmt.format(d)}</time>;
}

export function ago(value: string | null | undefined, now = Date.now()): string {
  if (!value) return "never";
  const s = Math.max(0, Math.round((now - new Date(value).getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function SeverityBadge({ severity }: { severity: string }) {
  return <span className={`sev sev-${severity}`}>{severity}</span>;
}

/** Previous / Next for a cursor-paged list (see paging.ts). */
export function Pager({
  page,
  count,
  what,
  hasNext,
  onPrevious,
  onNext,
}: {
  page: number;
  count: number;
  what: string;
  hasNext: boolean;
  onPrevious: () => void;
  onNext: () => void;
}) {
  return (
    <div className="pager">
      <button className="btn small" disabled={page === 1} onClick={onPrevious}>
        ← Previous
      </button>
      <span className="muted">
        Page {page} · {count} {what}
      </span>
      <button className="btn small" disabled={!hasNext} onClick={onNext}>
        Next →
      </button>
    </div>
  );
}

/** A list query's states in one place: loading, error with retry, empty, or the rows. */
export function ListState<T>({
  q,
  empty,
  children,
}: {
  q: { isPending: boolean; isError: boolean; error: unknown; data?: T[]; refetch: () => unknown };
  empty: ReactNode;
  children: (rows: T[]) => ReactNode;
}) {
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  if (!q.data || q.data.length === 0) return <>{empty}</>;
  return <>{children(q.data)}</>;
}

export function bytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function until(value: string | null | undefined, now = Date.now()): string {
  if (!value) return "—";
  const s = Math.round((new Date(value).getTime() - now) / 1000);
  if (s <= 0) return "expired";
  if (s < 3600) return `in ${Math.ceil(s / 60)}m`;
  if (s < 86400) return `in ${Math.floor(s / 3600)}h`;
  return `in ${Math.floor(s / 86400)}d`;
}
