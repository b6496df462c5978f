import { useEffect, useState, type FormEvent } from "react";
import { ApiError, login } from "../../api";

type Sso = { enabled: boolean; label: string };

export function LoginPage() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  // a refused single sign-on comes back here with its reason (?sso_error=...)
  const [error, setError] = useState<string | null>(() => new URLSearchParams(location.search).get("sso_error"));
  const [busy, setBusy] = useState(false);
  const [sso, setSso] = useState<Sso | null>(null);
  const [forgot, setForgot] = useState(false);

  useEffect(() => {
    fetch("/auth/oidc")
      .then((r) => (r.ok ? (r.json() as Promise<Sso>) : null))
      .then(setSso, () => setSso(null));
  }, []);
  const then = location.pathname.startsWith("/app") ? location.pathname.slice(4) || "/" : "/";

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(email, password);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? "Wrong email or password." : String((err as Error).message));
    } finally {
      setBusy(false);
    }
  }

  if (forgot) return <ForgotPage initial={email} onBack={() => setForgot(false)} />;

  return (
    <div className="login">
      <form onSubmit={submit} className="card" aria-label="Log in">
        <h1>Pulse</h1>
        <p className="muted">Log in to the fleet console.</p>
        <label>
          Email
          <input name="email" type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          Password
          <input name="password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
        </label>
        {error && <div className="error" role="alert">{error}</div>}
        <button className="btn primary" type="submit" disabled={busy}>
          {busy ? "Logging in…" : "Log in"}
        </button>
        <button type="button" className="btn link" onClick={() => setForgot(true)}>
          Forgot password?
        </button>
        {sso?.enabled && (
          <>
            <div className="muted or">or</div>
            <a className="btn" href={`/auth/oidc/start?then=${encodeURIComponent(then)}`} data-testid="sso">
              {sso.label}
            </a>
          </>
        )}
      </form>
    </div>
  );
}

function ForgotPage({ initial, onBack }: { initial: string; onBack: () => void }) {
  const [email, setEmail] = useState(initial);
  const [answer, setAnswer] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const r = await fetch("/auth/forgot", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ email }) });
      const body = await r.json();
      if (r.ok) setAnswer(body.message);
      else setError(body.message ?? `${r.status} ${r.statusText}`);
    } catch (err) {
      setError(String((err as Error).message));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="login">
      <form onSubmit={submit} className="card" aria-label="Forgot password">
        <h1>Pulse</h1>
        <p className="muted">Enter your email: if your account signs in with a password, a link to set a new one is mailed to you.</p>
        <label>
          Email
          <input name="email" type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        {answer && <div className="note" role="status" data-testid="forgot-answer">{answer}</div>}
        {error && <div className="error" role="alert">{error}</div>}
        {!answer && (
          <button className="btn primary" type="submit" disabled={busy}>
            {busy ? "Sending…" : "Send me a link"}
          </button>
        )}
        <button type="button" className="btn link" onClick={onBack}>
          Back to sign-in
        </button>
      </form>
    </div>
  );
}
