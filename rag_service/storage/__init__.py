"""The SQLite document store (WAL, the source of truth) and its FTS5 full-text search."""
