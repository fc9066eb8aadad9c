"""Source adapters: bytes in, SourceRecords or RecordErrors out, streaming. No FHIR, no database."""
