"""The HTTP side: the FHIR API, pushed records, the token endpoint and operations, on FastAPI."""
