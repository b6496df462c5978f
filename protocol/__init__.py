"""Pulse's contracts, shared by every tier: pure code over data, no I/O (see docs/protocol.md)."""
