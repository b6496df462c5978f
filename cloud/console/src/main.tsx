import { StrictMode, useEffect, useSyncExternalStore } from "react";
import { createRoot } from "react-dom/client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { ApiError, session } from "./api";
import { App } from "./App";
import { LoginPage } from "./features/login/Login";
import { AcceptPage } from "./features/accept/Accept";
import { navigate, useLocation } from "./router";
import { Loading } from "./components/ui";
import "./styles.css";

const queries = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 15_000,
      refetchOnWindowFocus: false,
      // a 4xx will not get better by asking again
      retry: (n, e) => !(e instanceof ApiError && e.status < 500) && n < 2,
    },
  },
});

// a new session starts with an empty cache: nothing of the previous user's stays visible
// a refreshed session may carry new roles (a tenant admin changed them): the shell asks again
session.subscribe(() => {
  if (!session.get()) queries.clear();
  else void queries.invalidateQueries({ queryKey: ["me"] });
});

// Back from single sign-on: the cloud put the session in the fragment (never sent to a server);
// take it, drop it from the address bar and history, and go where the person was going.
function SignedIn() {
  useEffect(() => {
    const f = new URLSearchParams(location.hash.replace(/^#/, ""));
    const access = f.get("access_token");
    const refresh = f.get("refresh_token");
    const then = f.get("then") ?? "/";
    if (access && refresh) {
      session.set(null);
      session.set({ access, refresh });
    }
    navigate(then.startsWith("/") && !then.startsWith("//") ? then : "/", { replace: true });
  }, []);
  return <Loading what="Signing in" />;
}

function Root() {
  const s = useSyncExternalStore(session.subscribe, session.get);
  const { path } = useLocation();
  if (path === "/accept") return <AcceptPage />; // an invitation or reset link, signed in or not
  if (path === "/signed-in") return <SignedIn />; // back from single sign-on
  return s ? <App /> : <LoginPage />;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queries}>
      <Root />
    </QueryClientProvider>
  </StrictMode>,
);
