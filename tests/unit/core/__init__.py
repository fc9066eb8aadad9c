"""Unit tests of the core ingest pieces: NHS number, mapping engine, shared view, ids, GP adapter."""
