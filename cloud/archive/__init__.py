"""The telemetry archive: Parquet files (bronze, silver, gold) per tenant and day, written before
PostgreSQL's retention drops the rows, and read back with DuckDB for long ranges and exports."""
