"""What the sync listener and enrollment do, behind thin routers (cloud/sync/app.py,
cloud/api/gateways.py), one module per concern:

- ``identity.py``: who a gateway is (its verified certificate, checked against the database on every
  request); enrollment, renewal, rekey.
- ``receive.py``: batches, stored exactly once and in order per stream (telemetry and events as
  rows, alerts merged, twin reports and command answers applied).
- ``downlink.py``: the downlink long-poll and its ack.
- ``claim.py``: devices claimed in the field with an activation code.
- ``reports.py``: the gateway's periodic report.

``SyncService`` holds them and shares the downlink ``Notifier`` between them; the ``Receiver``
is built by the caller (cloud/app.py), which chooses its after-commit listeners.
"""

from __future__ import annotations

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.db.pool import Database
from pulse.cloud.downlink import Notifier
from pulse.cloud.settings import SyncConfig
from pulse.cloud.sync.claim import Claims
from pulse.cloud.sync.downlink import Downlink
from pulse.cloud.sync.identity import Identity
from pulse.cloud.sync.receive import Receiver
from pulse.cloud.sync.reports import Reports


class SyncService:
    def __init__(self, config: SyncConfig, db: Database, receiver: Receiver) -> None:
        self.config = config
        self.db = db
        self.notifier = Notifier()
        """Wakes a gateway's downlink long-poll when something was queued for it."""
        self.identity = Identity(config, db)
        self.receiver = receiver
        self.downlink = Downlink(db, self.notifier)
        self.claims = Claims(db, self.notifier)
        self.reports = Reports(db)

    @property
    def ca(self) -> CertificateAuthority:
        return self.identity.ca
