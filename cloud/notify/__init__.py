"""Notifications: channel senders, the SSRF guard for customer addresses, on-call schedules, escalation.

Layout: ``model.py`` (the channel-neutral Notification and the typed outcome of one attempt),
``senders/`` (one module per channel, registered in ``senders.CHANNELS``), ``ssrf.py`` (every customer
URL or host is resolved, checked and connected to by address), ``oncall.py`` and ``escalation.py``
(pure decisions over schedules and policies, driven later by the delivery and escalation workers).
"""
