// What the notification pages share: the lists they pick from and how a cloud without notifications looks.
import { useQuery } from "@tanstack/react-query";
import { api, ApiError } from "../../api";
import type { Page } from "../../paging";
import type { Channel, EscalationPolicy, Schedule } from "../../types";
import { Empty, ErrorBox } from "../../components/ui";

export function notAvailable(e: unknown): boolean {
  return e instanceof ApiError && e.status === 404 && e.code !== "api.not_found";
}

export function Failure({ error, retry }: { error: unknown; retry?: () => void }) {
  return notAvailable(error) ? <Empty title="Notifications are not available on this cloud yet." /> : <ErrorBox error={error} retry={retry} />;
}

export function useChannels() {
  return useQuery({ queryKey: ["channels"], queryFn: () => api<Page<Channel>>("/api/v1/notify/channels", { query: { limit: 500 } }).then(items) });
}
export function useSchedules() {
  return useQuery({ queryKey: ["schedules"], queryFn: () => api<Page<Schedule>>("/api/v1/oncall/schedules", { query: { limit: 500 } }).then(items) });
}
export function usePolicies() {
  return useQuery({ queryKey: ["policies"], queryFn: () => api<Page<EscalationPolicy>>("/api/v1/escalation-policies", { query: { limit: 500 } }).then(items) });
}
/** The items of a list page; the console asks for up to 500 (the API's largest page). */
export function items<T>(x: Page<T>): T[] {
  return x.items;
}
