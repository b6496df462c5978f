"""Subscriptions in the cloud: their rows and device limits (``store``), the worker that moves
them on time and sends renewal notices (``worker``), and field activation codes (``activation``).
The lifecycle itself is pure: ``pulse.protocol.subscriptions``."""
