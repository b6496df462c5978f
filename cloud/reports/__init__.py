"""Reports and exports: the SLA summary of a tenant's period, its renderings (JSON, CSV, printable
HTML), the report history, and the daily scheduled SLA report delivered through notifications."""
