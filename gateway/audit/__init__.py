"""The tamper-evident log's I/O: signing keys, appending under the head lock, verifying, exporting."""
