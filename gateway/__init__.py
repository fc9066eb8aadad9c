"""Everything with a socket, a file or a process: settings, the store, ingest runs, the CLI."""
