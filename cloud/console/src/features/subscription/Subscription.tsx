// The tenant's subscriptions (read-only): the device limit and its use, each subscription's state
// and term, whether data is refused, and the history of changes. Operators change them via the API.
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api } from "../../api";
import { usePaging, type Page } from "../../paging";
import type { SubscriptionChange, SubscriptionSummary } from "../../types";
import { Empty, ErrorBox, Loading, Pager, Time } from "../../components/ui";

export function SubscriptionPage() {
  const q = useQuery({ queryKey: ["subscription"], queryFn: () => api<SubscriptionSummary>("/api/v1/subscription") });
  const paging = usePaging({});
  const history = useQuery({
    queryKey: ["subscription-history", paging.cursor],
    queryFn: () => api<Page<SubscriptionChange>>("/api/v1/subscription/history", { query: { limit: 50, cursor: paging.cursor } }),
    placeholderData: keepPreviousData,
  });
  if (q.isPending) return <Loading />;
  if (q.isError) return <ErrorBox error={q.error} retry={() => q.refetch()} />;
  const s = q.data;
  return (
    <>
      <h1>Subscription</h1>
      <p data-testid="subscription-limit">
        {s.device_limit === null
          ? `No subscription: devices are not limited (${s.devices} devices).`
          : `${s.devices} of ${s.device_limit} devices used.`}
      </p>
      {s.refusal && (
        <p className="error" role="alert" data-testid="subscription-refusal">
          {s.refusal === "subscription.suspended"
            ? "Your subscription is suspended: devices' data is refused (gateways keep it) until it is renewed."
            : "Your subscriptions have expired: devices' data is refused. Stored data is kept."}{" "}
          <code>{s.refusal}</code>
        </p>
      )}
      {s.subscriptions.length === 0 ? (
        <Empty title="No subscriptions." />
      ) : (
        <table className="table" data-testid="subscriptions-table">
          <thead><tr><th>Kind</th><th>State</th><th>Devices</th><th>Starts</th><th>Ends</th><th>Project</th></tr></thead>
          <tbody>
            {s.subscriptions.map((sub) => (
              <tr key={sub.id}>
                <td>{sub.kind}</td>
                <td><span className="tag">{sub.state}</span></td>
                <td>{sub.device_limit}</td>
                <td><Time value={sub.starts_at} /></td>
                <td><Time value={sub.ends_at} /></td>
                <td>{sub.project}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>History</h2>
      {history.isPending ? (
        <Loading />
      ) : history.isError ? (
        <ErrorBox error={history.error} retry={() => history.refetch()} />
      ) : history.data.items.length === 0 ? (
        <Empty title="No changes yet." />
      ) : (
        <>
          <table className="table dense" data-testid="subscription-history">
            <thead><tr><th>When</th><th>Who</th><th>Change</th><th>From</th><th>To</th></tr></thead>
            <tbody>
              {history.data.items.map((h) => (
                <tr key={h.id}>
                  <td><Time value={h.at} /></td>
                  <td>{h.actor}</td>
                  <td><code>{h.action}</code></td>
                  <td>{h.before_state ?? ""}</td>
                  <td>{h.after_state}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager page={paging.page} count={history.data.items.length} what="changes" hasNext={!!history.data.next_cursor} onPrevious={paging.previous} onNext={() => paging.next(history.data!.next_cursor)} />
        </>
      )}
    </>
  );
}
