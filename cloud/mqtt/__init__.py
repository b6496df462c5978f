"""The cloud's MQTT endpoint for direct devices (`pulse cloud mqtt`): the shared broker
(pulse.broker) with device-token authentication, commit-to-PostgreSQL-before-PUBACK intake through
the telemetry writer (or the local spool while the database is away), and twin deltas and commands
pushed to connected devices as they change (PostgreSQL LISTEN/NOTIFY)."""
