"""What the sync listener and enrollment do, behind thin routers (cloud/sync/app.py,
cloud/api/gateways.py), one module per concern:

- ``identity.py``: who a gateway is (its verified certificate, checked against the database on every
  request); enrollment, renewal, rekey.
- ``receive.py``: batches, stored exactly once and in order per stream (telemetry and events as
  rows, alerts merged, twin reports and command answers applied).
- ``downlink.py``: the downlink long-poll and its ack.
- ``claim.py``: devices claimed in the field with an activation code.
- ``reports.py``: the gateway's periodic report.

``SyncService`` only builds them and shares the downlink ``Notifier`` between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.downlink import Notifier
from pulse.cloud.metrics import Metrics
from pulse.cloud.settings import SyncConfig
from pulse.cloud.sync.claim import Claims
from pulse.cloud.sync.downlink import Downlink
from pulse.cloud.sync.identity import Identity
from pulse.cloud.sync.receive import Receiver
from pulse.cloud.sync.reports import Reports
from pulse.protocol.batch import DEFAULT_BATCH_LIMITS, BatchLimits
from pulse.protocol.twin import DEFAULT_LIMITS as DEFAULT_TWIN_LIMITS
from pulse.protocol.twin import TwinLimits


class SyncService:
    def __init__(
        self,
        config: SyncConfig,
        db: Database,
        metrics: Metrics,
        *,
        limits: BatchLimits = DEFAULT_BATCH_LIMITS,
        on_commit: Callable[[Sequence[TelemetryRow]], None] | None = None,
        twin_limits: TwinLimits = DEFAULT_TWIN_LIMITS,
    ) -> None:
        self.config = config
        self.notifier = Notifier()
        """Wakes a gateway's downlink long-poll when something was queued for it."""
        self.identity = Identity(config, db)
        self.receiver = Receiver(db, metrics, limits=limits, on_commit=on_commit, twin_limits=twin_limits)
        self.downlink = Downlink(db, self.notifier)
        self.claims = Claims(db, self.notifier)
        self.reports = Reports(db)

    @property
    def ca(self) -> CertificateAuthority:
        return self.identity.ca
