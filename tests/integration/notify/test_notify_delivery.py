"""Notifications end to end on a real PostgreSQL with real receivers on loopback.

A device crosses a threshold at HTTP ingest -> the rule opens an alert -> routed -> a local
PagerDuty-format receiver gets trigger; ack via API -> acknowledge; close -> resolve. Receivers that
are down -> retries -> dead letter -> manual retry. SSRF refusals. Restarts lose nothing and a crash
mid-send does not page twice. Two worker sets on one database fan out each event once."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import asyncpg
import pytest
from notify_cloud import ACCEPTED, PD_KEY, NotifyCloud, device, fast_notify, notify_cloud, open_alert, reading, setup_tenant, soon
from notify_receivers import Receiver

from pulse.cloud.alerts import merge_edge_alerts
from pulse.cloud.notify.worker import NotifyWorkers
from pulse.cloud.settings import Settings
from pulse.protocol.batch import Record

pytestmark = pytest.mark.integration

def pd_events(receiver: Receiver, path: str = "/v2/enqueue") -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.requests if r.path == path]


async def test_threshold_to_pagerduty_trigger_then_ack_and_resolve_with_one_dedup_key(ncloud: NotifyCloud, receiver: Receiver) -> None:
    receiver.answer("/v2/enqueue", ACCEPTED, ACCEPTED, ACCEPTED)
    _, h, _ = await setup_tenant(ncloud, {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}})
    alert_id = await open_alert(ncloud, h)
    await ncloud.wait_for(lambda: soon(len(pd_events(receiver)) == 1), what="the trigger")
    assert (await ncloud.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=h)).status_code == 200
    await ncloud.wait_for(lambda: soon(len(pd_events(receiver)) == 2), what="the acknowledge")
    assert (await ncloud.client.post(f"/api/v1/alerts/{alert_id}/close", headers=h)).status_code == 200
    await ncloud.wait_for(lambda: soon(len(pd_events(receiver)) == 3), what="the resolve")
    trigger, ack, resolve = pd_events(receiver)
    assert [e["event_action"] for e in (trigger, ack, resolve)] == ["trigger", "acknowledge", "resolve"]
    assert trigger["dedup_key"] == ack["dedup_key"] == resolve["dedup_key"] and trigger["dedup_key"].startswith("pulse-")
    assert trigger["routing_key"] == PD_KEY and trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["custom_details"]["value"] == 31.5 and trigger["client_url"] == f"https://pulse.example.com/app/alerts/{alert_id}"

    async def all_delivered() -> Any:
        detail = (await ncloud.client.get(f"/api/v1/alerts/{alert_id}", headers=h)).json()
        return detail if [n["status"] for n in detail["notifications"]] == ["delivered"] * 3 else None

    detail = await ncloud.wait_for(all_delivered, what="three delivered notifications in the alert")
    assert [n["event"] for n in detail["notifications"]] == ["opened", "acknowledged", "closed"]
    assert detail["escalation"] is None
    one = (await ncloud.client.get(f"/api/v1/notify/deliveries/{detail['notifications'][0]['id']}", headers=h)).json()
    assert [(a["n"], a["outcome"], a["status_code"]) for a in one["attempt_log"]] == [(1, "delivered", 202)]
    await asyncio.sleep(0.3)  # nothing else arrives
    assert len(pd_events(receiver)) == 3


_COMMIT_MODES = """
CREATE TABLE commit_modes (tbl text, op text, xid bigint, mode text);
CREATE FUNCTION commit_mode_log() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO commit_modes VALUES (TG_TABLE_NAME, TG_OP, txid_current(), current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE TRIGGER commit_mode_log AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION commit_mode_log();
CREATE TRIGGER commit_mode_log AFTER INSERT OR UPDATE ON notify_deliveries FOR EACH ROW EXECUTE FUNCTION commit_mode_log();
"""


async def test_an_alert_is_on_disk_before_a_notification_for_it_is_claimed(receiver: Receiver, cloud_settings: Settings) -> None:
    """The rules runner commits what it derives from outbox entries without waiting for the disk
    (``synchronous_commit = off``: a crash re-evaluates the entries). That is safe for
    notifications only because fan-out and claims are other transactions, committed synchronously:
    PostgreSQL flushes WAL in order, so their commit puts the alert on disk before anything is sent.
    Here every transaction that wrote the alert or its delivery says how it commits (a trigger).
    (The test server does not wait for its disk at all; the app role's sessions are set to, as on
    a production server, before the cloud connects.)"""
    owner = await asyncpg.connect(cloud_settings.database_url)
    app_role = cloud_settings.roles.app
    await owner.execute(_COMMIT_MODES + f'ALTER ROLE "{app_role}" SET synchronous_commit = on;')
    try:
        async with notify_cloud(cloud_settings, fast_notify()) as ncloud:
            receiver.answer("/v2/enqueue", ACCEPTED)
            channel = {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}}
            _, h, _ = await setup_tenant(ncloud, channel)
            await open_alert(ncloud, h)
            await ncloud.wait_for(lambda: soon(len(pd_events(receiver)) == 1), what="the trigger")

            async def recorded() -> Any:
                rows = await owner.fetch("SELECT tbl, op, xid, mode FROM commit_modes")
                seen = {(r["tbl"], r["op"]) for r in rows}
                return (
                    rows
                    if seen >= {("alerts", "INSERT"), ("notify_deliveries", "INSERT"), ("notify_deliveries", "UPDATE")}
                    else None
                )

            rows = await ncloud.wait_for(recorded, what="the alert, its delivery queued, claimed and settled")
        alerts = [r for r in rows if r["tbl"] == "alerts"]
        deliveries = [r for r in rows if r["tbl"] == "notify_deliveries"]
        assert [r["mode"] for r in alerts] == ["off"], "the alert is derived: its transaction does not wait for the disk"
        assert {r["mode"] for r in deliveries} == {"on"}, "queueing, claiming and settling a delivery wait for the disk"
        assert not {r["xid"] for r in deliveries} & {r["xid"] for r in alerts}, "fan-out is a transaction of its own"
    finally:
        await owner.execute(
            f'ALTER ROLE "{app_role}" RESET synchronous_commit; '
            "DROP TRIGGER commit_mode_log ON alerts; DROP TRIGGER commit_mode_log ON notify_deliveries; "
            "DROP FUNCTION commit_mode_log(); DROP TABLE commit_modes"
        )
        await owner.close()


async def test_receiver_down_retries_then_dead_letter_then_manual_retry_delivers(ncloud: NotifyCloud, receiver: Receiver) -> None:
    down = (503, {}, b"maintenance")
    receiver.answer("/hook", down, down, down, (429, {"Retry-After": "0"}, b"slow down"), down)
    _, h, [ch] = await setup_tenant(ncloud, {"kind": "webhook", "config": {"url": receiver.url("/hook")}})
    delivery = (await ncloud.client.post(f"/api/v1/notify/channels/{ch}/test", headers=h)).json()["delivery_id"]

    async def status(want: str) -> Any:
        d = (await ncloud.client.get(f"/api/v1/notify/deliveries/{delivery}", headers=h)).json()
        return d if d["status"] == want else None

    dead = await ncloud.wait_for(lambda: status("dead"), what="the dead letter")
    assert dead["attempts"] == 5 and dead["last_code"] == "notify.receiver_error" and "maintenance" in dead["last_error"]
    assert [(a["n"], a["outcome"], a["status_code"]) for a in dead["attempt_log"]] == [(1, "retry", 503), (2, "retry", 503), (3, "retry", 503), (4, "retry", 429), (5, "retry", 503)]
    assert len(receiver.requests) == 5
    listed = (await ncloud.client.get("/api/v1/notify/deliveries", params={"status": "dead"}, headers=h)).json()["items"]
    assert [d["id"] for d in listed] == [delivery]
    r = await ncloud.client.post(f"/api/v1/notify/deliveries/{delivery}/retry", headers=h)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    done = await ncloud.wait_for(lambda: status("delivered"), what="the manual retry")
    assert done["attempts"] == 6 and done["attempt_log"][-1]["outcome"] == "delivered" and done["delivered_at"]
    r = await ncloud.client.post(f"/api/v1/notify/deliveries/{delivery}/retry", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "notify.not_retryable"
    assert len(receiver.requests) == 6 and json.loads(receiver.requests[-1].body)["event"] == "test"


async def test_pagerduty_400_is_not_retried(ncloud: NotifyCloud, receiver: Receiver) -> None:
    receiver.answer("/v2/enqueue", (400, {"content-type": "application/json"}, b'{"status":"invalid event","errors":["bad routing key"]}'))
    _, h, [ch] = await setup_tenant(ncloud, {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}})
    delivery = (await ncloud.client.post(f"/api/v1/notify/channels/{ch}/test", headers=h)).json()["delivery_id"]

    async def failed() -> Any:
        d = (await ncloud.client.get(f"/api/v1/notify/deliveries/{delivery}", headers=h)).json()
        return d if d["status"] == "failed" else None

    d = await ncloud.wait_for(failed, what="the failure")
    assert d["attempts"] == 1 and d["last_code"] == "notify.rejected" and "bad routing key" in d["last_error"]
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://10.1.2.3/hook", "notify.ssrf_blocked"), ("http://169.254.169.254/latest/meta-data", "notify.ssrf_blocked"), ("http://metadata.google.internal/x", "notify.ssrf_blocked")],
)
async def test_ssrf_refused_addresses_are_never_contacted(ncloud: NotifyCloud, url: str, code: str) -> None:
    _, h, [ch] = await setup_tenant(ncloud, {"kind": "webhook", "config": {"url": url}})
    delivery = (await ncloud.client.post(f"/api/v1/notify/channels/{ch}/test", headers=h)).json()["delivery_id"]

    async def failed() -> Any:
        d = (await ncloud.client.get(f"/api/v1/notify/deliveries/{delivery}", headers=h)).json()
        return d if d["status"] == "failed" else None

    d = await ncloud.wait_for(failed, what="the refusal")
    assert d["last_code"] == code and d["attempts"] == 1


async def test_redirect_to_a_private_address_is_refused_after_the_hop(ncloud: NotifyCloud, receiver: Receiver) -> None:
    receiver.answer("/hook", (307, {"location": "http://192.168.1.10/internal"}, b""))
    _, h, [ch] = await setup_tenant(ncloud, {"kind": "webhook", "config": {"url": receiver.url("/hook")}})
    delivery = (await ncloud.client.post(f"/api/v1/notify/channels/{ch}/test", headers=h)).json()["delivery_id"]

    async def failed() -> Any:
        d = (await ncloud.client.get(f"/api/v1/notify/deliveries/{delivery}", headers=h)).json()
        return d if d["status"] == "failed" else None

    d = await ncloud.wait_for(failed, what="the refusal")
    assert d["last_code"] == "notify.ssrf_blocked" and len(receiver.requests) == 1


async def test_throttle_drops_repeat_opens_of_the_same_fingerprint(ncloud: NotifyCloud, receiver: Receiver) -> None:
    _, h, _ = await setup_tenant(ncloud, {"kind": "webhook", "config": {"url": receiver.url("/hook")}}, route={"throttle_s": 3600})
    dev = await device(ncloud, h)
    for n in (1, 2):  # open, close (the rule clears), open again, close: one fingerprint, two alerts

        async def alerts(state: str, n: int = n) -> Any:
            found = (await ncloud.client.get("/api/v1/alerts", params={"state": state}, headers=h)).json()["items"]
            return len(found) == n or None

        await reading(ncloud, dev, 31.5)
        await ncloud.wait_for(lambda: alerts("open", 1), what=f"alert {n} to open")
        await reading(ncloud, dev, 20)
        await ncloud.wait_for(lambda: alerts("closed"), what=f"alert {n} to close")
    await ncloud.wait_for(lambda: soon(len(receiver.requests) >= 2), what="the first alert's notifications")
    await asyncio.sleep(0.3)
    events = [json.loads(r.body)["event"] for r in receiver.requests]
    assert events == ["opened", "closed"]  # the second alert was throttled, so its close goes nowhere either


async def test_jobs_survive_a_restart_and_a_crash_mid_send_does_not_page_twice(cloud_settings: Settings, receiver: Receiver) -> None:
    # 1. workers off: the alert and its due notification are stored, nothing is sent
    async with notify_cloud(cloud_settings, fast_notify(workers=False)) as c:
        _, h, _ = await setup_tenant(
            c,
            {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/pd")}},
            {"kind": "webhook", "config": {"url": receiver.url("/hook")}},
        )
        await open_alert(c, h)
    assert receiver.requests == []
    # 2. a process starts sending, the receivers take the requests but do not answer; the process dies
    hang = (200, {"x-test-hang-s": "5"}, b"")
    receiver.answer("/pd", (202, {"x-test-hang-s": "5"}, b""))
    receiver.answer("/hook", hang)
    async with notify_cloud(cloud_settings, fast_notify()) as c:
        await c.wait_for(lambda: soon(len(receiver.requests) == 2), what="both sends to start")
        await c.app.state.notify_workers.stop(grace_s=0)  # the crash: claims stay 'sending'
    # 3. the next process finds the stale claims: PagerDuty is sent again (same dedup_key), the webhook is not
    receiver.answer("/pd", ACCEPTED)
    async with notify_cloud(cloud_settings, fast_notify(claim_timeout_s=0.5)) as c:
        async def settled() -> Any:
            r = await c.client.get("/api/v1/notify/deliveries", headers=h)
            items = r.json()["items"]
            return items if sorted(i["status"] for i in items) == ["dead", "delivered"] else None

        items = await c.wait_for(settled, what="recovery")
    by_kind = {i["kind"]: i for i in items}
    assert by_kind["webhook"]["last_code"] == "notify.outcome_unknown"
    pd = pd_events(receiver, "/pd")
    assert len(pd) == 2 and pd[0]["dedup_key"] == pd[1]["dedup_key"] and {e["event_action"] for e in pd} == {"trigger"}
    assert len([r for r in receiver.requests if r.path == "/hook"]) == 1


async def test_events_fanned_out_in_one_batch_go_out_in_order_and_once(cloud_settings: Settings, receiver: Receiver) -> None:
    """Opened, acknowledged and closed while no worker runs: one fan-out batch queues all three in one
    statement, and the channel still hears them one at a time, in order (a resolve never overtakes its trigger)."""
    receiver.answer("/v2/enqueue", ACCEPTED, ACCEPTED, ACCEPTED)
    async with notify_cloud(cloud_settings, fast_notify(workers=False)) as c:
        _, h, _ = await setup_tenant(c, {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}})
        alert_id = await open_alert(c, h)
        assert (await c.client.post(f"/api/v1/alerts/{alert_id}/ack", headers=h)).status_code == 200
        assert (await c.client.post(f"/api/v1/alerts/{alert_id}/close", headers=h)).status_code == 200
        workers = NotifyWorkers(c.db, fast_notify())
        try:
            first = await workers.run_once(wait_sends=True)
            assert (first.queued, first.claimed) == (3, 1)  # the later two wait for the one before them
            for _ in range(6):
                await workers.run_once(wait_sends=True)
        finally:
            await workers.stop()
        detail = (await c.client.get(f"/api/v1/alerts/{alert_id}", headers=h)).json()
    assert [e["event_action"] for e in pd_events(receiver)] == ["trigger", "acknowledge", "resolve"]
    assert [(n["event"], n["status"]) for n in detail["notifications"]] == [("opened", "delivered"), ("acknowledged", "delivered"), ("closed", "delivered")]


async def test_two_worker_sets_fan_out_each_event_once(ncloud: NotifyCloud, cloud_settings: Settings, receiver: Receiver) -> None:
    _, h, _ = await setup_tenant(ncloud, {"kind": "webhook", "config": {"url": receiver.url("/hook")}})
    other = NotifyWorkers(ncloud.db, fast_notify())
    try:
        devices = [await device(ncloud, h) for _ in range(6)]
        for dev in devices:
            await reading(ncloud, dev, 31.5)
        for _ in range(20):
            await other.run_once(wait_sends=True)
        await ncloud.wait_for(lambda: soon(len(receiver.requests) >= 6), what="six notifications")
        await asyncio.sleep(0.3)
    finally:
        await other.stop()
    ids = [json.loads(r.body)["alert_id"] for r in receiver.requests]
    assert len(ids) == 6 and len(set(ids)) == 6


async def test_edge_alerts_merged_by_gateway_sync_are_notified(ncloud: NotifyCloud, receiver: Receiver) -> None:
    """Gateway sync merges a gateway's alert records in the writer role's transaction: they notify like cloud alerts."""
    receiver.answer("/v2/enqueue", ACCEPTED, ACCEPTED)
    tenant, _, _ = await setup_tenant(ncloud, {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}})
    at = int(dt.datetime.now(dt.UTC).timestamp() * 1000)

    def rec(seq: int, action: str) -> Record:
        body = {"action": action, "rule_id": "hot", "device_id": "b7", "severity": "critical", "explanation": {"text": "edge saw it", "metric": "temp_c", "last": 99}}
        return Record(seq, "b7", at + seq, "alert", {}, None, None, body)

    for seq, action in ((1, "open"), (2, "close")):
        async with ncloud.db.writer_transaction() as conn:
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            await merge_edge_alerts(conn, tenant, [rec(seq, action)], gateway_name="gw-1")
        await ncloud.wait_for(lambda n=seq: soon(len(pd_events(receiver)) == n), what=f"PagerDuty event {seq}")
    trigger, resolve = pd_events(receiver)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] and trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "b7"
