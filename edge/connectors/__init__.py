"""Connectors: the site's equipment that does not speak MQTT, polled by the gateway.

``modbus`` (pymodbus clients, TCP and RTU), ``snmp`` (pysnmp v2c/v3) and ``poller`` (the schedule,
failures and back-off, writes; readings into the buffer like MQTT messages). The definitions and
the decoding are pure and live in ``pulse.protocol.connectors``.
"""
