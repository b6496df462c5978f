// The page an invitation or password-reset link opens (/app/accept#<token>): the token stays in
// the fragment (never sent to a server log); the person chooses a password and is signed in.
import { useEffect, useState, type FormEvent } from "react";
import { ApiError, acceptLink, inspectLink } from "../../api";
import { navigate } from "../../router";

export function AcceptPage() {
  const token = location.hash.replace(/^#/, "");
  const [info, setInfo] = useState<{ kind: string; email: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    inspectLink(token).then(setInfo, (e: Error) => setError(e.message));
  }, [token]);

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (password !== again) return setError("The two passwords differ.");
    setBusy(true);
    setError(null);
    try {
      await acceptLink(token, password);
      history.replaceState(null, "", "/app/");
      navigate("/", { replace: true });
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="login">
      <form onSubmit={submit} className="card" aria-label="Choose a password">
        <h1>Pulse</h1>
        {info ? (
          <p className="muted">
            {info.kind === "invite" ? "You are invited. " : "Reset your password. "}
            Choose a password for <strong data-testid="accept-email">{info.email}</strong> (at least 12 characters).
          </p>
        ) : (
          !error && <p className="muted">Checking the link…</p>
        )}
        {info && (
          <>
            <label>
              New password
              <input name="password" type="password" autoComplete="new-password" minLength={12} required value={password} onChange={(e) => setPassword(e.target.value)} />
            </label>
            <label>
              Again
              <input name="again" type="password" autoComplete="new-password" minLength={12} required value={again} onChange={(e) => setAgain(e.target.value)} />
            </label>
          </>
        )}
        {error && <div className="error" role="alert">{error}</div>}
        {info && (
          <button className="btn primary" type="submit" disabled={busy}>
            {busy ? "Saving…" : info.kind === "invite" ? "Accept and sign in" : "Set password and sign in"}
          </button>
        )}
      </form>
    </div>
  );
}
