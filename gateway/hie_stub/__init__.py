"""A stand-in for the regional Health Information Exchange: a small FHIR R4 server with injected faults.

For the demo and for tests of the HIE publisher, never for production data. Stages: ``search``
(query parsing and matching), ``store`` (versions, atomic overlay), ``transaction`` (Bundle
validation and FHIR transaction semantics), ``faults`` (the seeded fault plan), ``wire`` (faults
acted out on the connection), ``server`` (the aiohttp app). ``docs/hie-stub.md`` describes the
endpoints and faults.
"""

from gateway.hie_stub.faults import FaultPlanError, Faults
from gateway.hie_stub.server import make_app
from gateway.hie_stub.store import Store

__all__ = ["FaultPlanError", "Faults", "Store", "make_app"]
