"""A device claimed in the field through its gateway (``pulse gateway device claim CODE``,
``POST /sync/v1/claim``): the activation code's rules are ``cloud/subscriptions/activation.py``;
this adds the per-gateway rate limit and wakes the gateways whose downlink changed."""

from __future__ import annotations

import datetime as dt
import time

from pulse.cloud.db.pool import Database
from pulse.cloud.downlink import Notifier
from pulse.cloud.errors import InvalidError, RateLimitedError
from pulse.cloud.ingest.ratelimit import RateLimiter
from pulse.cloud.subscriptions import activation
from pulse.cloud.sync.identity import GatewayCaller
from pulse.protocol.errors import Code
from pulse.protocol.topics import valid_device_id


class Claims:
    def __init__(self, db: Database, notifier: Notifier) -> None:
        self.db = db
        self.notifier = notifier
        self.limiter: RateLimiter | None = None
        """Device claims per gateway (PULSE_ACTIVATION_RATE_PER_MIN, PULSE_ACTIVATION_BURST)."""

    async def claim(self, caller: GatewayCaller, code: str, device_id: str, name: str) -> dict[str, object]:
        """A device of the code's tenant (the gateway's own), served by this gateway, with its token returned once."""
        if self.limiter is not None:
            decision = self.limiter.take(f"gw:{caller.gateway_id}", 1, time.monotonic())
            if not decision.allowed:
                raise RateLimitedError(
                    f"too many activation attempts from this gateway; retry in {decision.retry_after_s} s",
                    retry_after_s=decision.retry_after_s,
                    code=Code.ACTIVATION_RATE_LIMITED,
                )
        if not valid_device_id(device_id):
            raise InvalidError(Code.API_INVALID, "device ids are 1-128 letters, digits, '_', '-', '.', ':'")
        done = await activation.claim(
            self.db, code, device_id, name, dt.datetime.now(dt.UTC), gateway=caller.gateway_id,
            gateway_tenant=caller.tenant_id, gateway_site=caller.site_id, actor=f"gateway:{caller.gateway_id}",
        )
        self.notifier.wake(done.woken)
        return {"id": str(done.id), "device_id": done.device_id, "token": done.token}
