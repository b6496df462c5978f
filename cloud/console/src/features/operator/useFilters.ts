// The filters of an operator list, kept in the URL's query string.
import { navigate, useLocation } from "../../router";

export function useFilters(path: string, names: string[]) {
  const { query } = useLocation();
  const f = Object.fromEntries(names.map((n) => [n, query.get(n) ?? ""]));
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(query);
    if (value) next.set(name, value);
    else next.delete(name);
    const s = next.toString();
    navigate(path + (s ? "?" + s : ""), { replace: true });
  };
  return [f, set] as const;
}
