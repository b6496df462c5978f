"""The optional NATS JetStream between ingest and the telemetry writers (issue 26).

Off unless ``PULSE_STREAM_URL`` is set; without it ingest commits to PostgreSQL itself
(``ingest/writer.py``) and nothing here runs.

- ``client.py``: one NATS connection per process (reconnecting on its own), the stream's creation.
- ``publisher.py``: ingest's side. ``StreamPublisher.write(rows)`` publishes a request's rows to its
  partition's subject and returns only once JetStream acknowledged them (stored, replicated as
  configured); when it cannot, ``StreamUnavailableError`` (503 ``ingest.stream_unavailable``) and
  the device is not acknowledged.
- ``consumer.py``: the writers' side. One durable pull consumer per partition, run as a
  once-per-cluster job shared out between the replicas alive (``cluster/leader.py``): one writer
  per partition at a time, handed over cleanly when a replica joins or stops, taken over by
  another replica when its holder dies. Each batch commits with the partition's mark (migration
  0023), so a redelivered batch writes nothing twice.
- ``codec.py``: the stream message body.
"""
