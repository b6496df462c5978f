// The tenant's sites, shared by every feature that names or filters by site.
import { useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import type { Site } from "../../types";

export function useSites() {
  return useQuery({ queryKey: ["sites"], queryFn: () => api<Site[]>("/api/v1/sites") });
}
