"""The webhook inbox of `pulse up` checks Pulse's signature, refuses replays of old requests, counts
repeats of one notification instead of listing them twice, and keeps what arrived across restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from pulse.cli.inbox import Inbox
from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify.senders.webhook import signature

pytestmark = pytest.mark.integration

SECRET = "s3cret-s3cret-s3cret"


def _post(url: str, body: dict[str, object], *, secret: str = SECRET, ts: int | None = None, event_id: str = "ev-1") -> httpx.Response:
    raw = json.dumps(body).encode()
    ts = int(time.time()) if ts is None else ts
    headers = {
        "Content-Type": "application/json",
        "X-Pulse-Event-Id": event_id,
        "X-Signature-Timestamp": str(ts),
        "X-Signature-SHA256": signature(secret, ts, raw),
    }
    return httpx.post(url + "/hook", content=raw, headers=headers, timeout=5)


@pytest.fixture
def inbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    box = Inbox(tmp_path / "inbox.jsonl", SECRET)
    port = free_port()
    box.serve("127.0.0.1", port)
    yield box, f"http://127.0.0.1:{port}"
    box.stop()


def test_signed_notifications_are_kept_and_repeats_counted_once(inbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    box, url = inbox
    body = {"event": "opened", "severity": "critical", "device": "dev-0000", "explanation": "<b>hot</b>", "console_url": "http://x/app"}
    assert _post(url, body).status_code == 204
    assert _post(url, body).status_code == 204  # a retry of the same notification
    assert _post(url, {**body, "event": "closed"}, event_id="ev-2").status_code == 204
    listed = httpx.get(url + "/messages", timeout=5).json()
    assert [(m["event_id"], m["repeats"], m["body"]["event"]) for m in listed] == [("ev-2", 0, "closed"), ("ev-1", 1, "opened")]
    page = httpx.get(url + "/", timeout=5).text
    assert "dev-0000" in page and "&lt;b&gt;hot&lt;/b&gt;" in page and "<b>hot" not in page  # escaped
    # a second inbox on the same file shows what arrived before
    again = Inbox(tmp_path / "inbox.jsonl", SECRET)
    assert [(m.event_id, m.repeats) for m in again.messages()] == [("ev-2", 0), ("ev-1", 1)]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"secret": "another-secret-value"}, "inbox.bad_signature"),
        ({"ts": int(time.time()) - 3600}, "inbox.stale_signature"),
    ],
)
def test_forged_or_replayed_requests_are_refused(inbox, kwargs: dict[str, object], code: str) -> None:  # type: ignore[no-untyped-def]
    box, url = inbox
    r = _post(url, {"event": "opened"}, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 401 and r.json()["code"] == code
    unsigned = httpx.post(url + "/hook", json={"event": "opened"}, timeout=5)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "inbox.unsigned"
    assert box.messages() == []
