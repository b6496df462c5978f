import { StrictMode, useSyncExternalStore } from "react";
import { createRoot } from "react-dom/client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { ApiError, session } from "./api";
import { App } from "./App";
import { LoginPage } from "./features/login/Login";
import { AcceptPage } from "./features/accept/Accept";
import { useLocation } from "./router";
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
session.subscribe(() => {
  if (!session.get()) queries.clear();
});

function Root() {
  const s = useSyncExternalStore(session.subscribe, session.get);
  const { path } = useLocation();
  if (path === "/accept") return <AcceptPage />; // an invitation or reset link, signed in or not
  return s ? <App /> : <LoginPage />;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queries}>
      <Root />
    </QueryClientProvider>
  </StrictMode>,
);
