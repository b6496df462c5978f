"""Rules runner and alerts (cloud). ``merge_edge_alerts`` is what gateway sync calls for the ALERTS stream."""

from pulse.cloud.alerts.store import MergeReport, merge_edge_alerts

__all__ = ["MergeReport", "merge_edge_alerts"]
