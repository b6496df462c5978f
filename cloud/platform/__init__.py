"""Pulse watching itself: the platform sampler (``sampler``), the figures it derives (``figures``),
the platform health rules (``health``) and the reads of ``system_metrics`` (``store``)."""
