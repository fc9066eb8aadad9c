"""UK Core conformance of concord output, checked offline against the published definitions."""
