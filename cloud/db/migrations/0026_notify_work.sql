-- Notification workers (issue 25): which work each tenant has, so a pass runs only the steps that
-- have something to do (fan-out, stale-claim recovery, escalation, delivery) instead of one
-- transaction per step for every busy tenant. Same sources and rules as pulse_notify_busy_tenants,
-- which stays for whoever still calls it.
CREATE FUNCTION pulse_notify_work(stale_before timestamptz, at timestamptz)
RETURNS TABLE (tenant_id uuid, outbox boolean, due boolean, stale boolean, escalations boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT w.tenant_id, bool_or(w.k = 1), bool_or(w.k = 2), bool_or(w.k = 3), bool_or(w.k = 4)
    FROM (
        SELECT DISTINCT o.tenant_id, 1 AS k FROM notify_outbox o
        UNION ALL SELECT DISTINCT d.tenant_id, 2 FROM notify_deliveries d WHERE d.status = 'pending' AND d.next_attempt_at <= at
        UNION ALL SELECT DISTINCT d.tenant_id, 3 FROM notify_deliveries d WHERE d.status = 'sending' AND d.claimed_at < stale_before
        UNION ALL SELECT DISTINCT e.tenant_id, 4 FROM alert_escalations e WHERE NOT e.stopped AND e.next_at <= at
    ) AS w
    GROUP BY w.tenant_id
    ORDER BY w.tenant_id
$$;
ALTER FUNCTION pulse_notify_work(timestamptz, timestamptz) OWNER TO {{identity}};
REVOKE ALL ON FUNCTION pulse_notify_work(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulse_notify_work(timestamptz, timestamptz) TO {{app}}, {{operator}};
