"""What lets several ``pulse cloud serve`` processes, on one machine or several, act as one service
while sharing nothing but PostgreSQL:

- ``bus.py``: LISTEN/NOTIFY between the replicas (live events, cache invalidations), on a
  dedicated listening connection that reconnects, and tells its users when it may have missed
  something so they flush what they cache.
- ``leader.py``: background jobs that must run once per cluster (sweeps, maintenance, the
  subscriptions worker) run on the replica holding a PostgreSQL advisory lock; another replica
  takes over when the holder dies. Shared groups of jobs (the ingest stream's partition writers)
  are divided fairly between the replicas alive, handed over at a clean point.
- ``ratelimit.py``: per-device and per-tenant token buckets kept in PostgreSQL, spent locally in
  small leases so ingest does not ask the database for every message.
"""
