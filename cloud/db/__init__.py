"""PostgreSQL: the system of record (migrations, pool, tenant scope, embedded server)."""
