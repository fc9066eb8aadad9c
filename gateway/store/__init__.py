"""The store: the system of record (SQLite by default, PostgreSQL in production, same code)."""
