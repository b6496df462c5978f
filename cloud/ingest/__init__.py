"""Ingest: the one batched COPY writer (shared by HTTP ingest and gateway sync) and HTTP ingest."""
