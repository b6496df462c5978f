"""Pulse cloud tier: ingest, storage, rules, alerts, notifications, twin, console and APIs."""
