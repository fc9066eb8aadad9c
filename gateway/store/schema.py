"""Tables of the store. Alembic migrations in ``migrations/`` create them; this is their one definition.

- ``resources``: the current version of every resource, with the columns searches need.
- ``resource_history``: every version ever stored (``_history``).
- ``contributions``: each source's demographics for a person, merged into the shared Patient.
- ``outbox``: one row per resource change, written in the same transaction (the publisher reads it).
- ``quarantine``: records that could not be read or mapped, with why, replayable.
- ``ingest_runs``: one row per ingest, with its report.
- ``conflicts`` and ``unknown_codes``: the data-quality report.
- ``consents``: the opt-out register, one row per opt-out (withdrawal keeps the row), as FHIR Consent.
- ``audit_log``, ``audit_checkpoints``, ``audit_head``: the tamper-evident log (consent/chain.py
  defines its format); ``audit_head`` is the one row appenders lock to extend the chain in order.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# BigInteger ids that are still AUTOINCREMENT-friendly on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(40), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("nhs_number", String(10), nullable=True),
    Column("source", String(20), nullable=True),
    Column("status", String(20), nullable=True),
    Column("subject_id", String(64), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("content", Text, nullable=False),
    Index("ix_resources_nhs_number", "nhs_number"),
    Index("ix_resources_subject", "resource_type", "subject_id"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("resource_type", String(40), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("content", Text, nullable=False),
)

contributions = Table(
    "contributions",
    metadata,
    Column("source", String(20), primary_key=True),
    Column("local_id", String(128), primary_key=True),
    Column("nhs_number", String(10), primary_key=True),
    Column("source_ods", String(20), nullable=True),
    Column("opt_out_code", String(40), nullable=True),
    Column("recorded", String(40), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("content", Text, nullable=False),
    Index("ix_contributions_nhs_number", "nhs_number"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("nhs_number", String(10), nullable=True),
    Column("resource_type", String(40), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Index("ix_outbox_status_id", "status", "id"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=True),
    Column("source", String(20), nullable=False),
    Column("location", String(64), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("field", String(64), nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
    Column("local_id", String(128), nullable=True),
    Column("raw", Text, nullable=False),
    #: The same bad record read again (a re-run of an extract) updates its row instead of adding one.
    Column("raw_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Index("ix_quarantine_status_source", "status", "source"),
    Index("ux_quarantine_source_raw", "source", "raw_hash", unique=True),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("source", String(20), nullable=False),
    Column("input_name", String(255), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("report", Text, nullable=True),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("nhs_number", String(10), primary_key=True),
    Column("element", String(40), primary_key=True),
    Column("sources", String(120), nullable=False),
    Column("distinct_values", Integer, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
)

unknown_codes = Table(
    "unknown_codes",
    metadata,
    Column("source", String(20), primary_key=True),
    Column("field", String(64), primary_key=True),
    Column("detail", String(255), primary_key=True),
    Column("occurrences", BigInteger, nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("nhs_number", String(10), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("authority", String(40), nullable=False),
    Column("source", String(20), nullable=False),
    #: Where a GP-extract opt-out came from (practice and patient id), so a re-read finds it again.
    Column("source_ref", String(160), nullable=True),
    Column("recorded_by", String(128), nullable=False),
    Column("recorded_by_ods", String(20), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("withdrawn_at", DateTime(timezone=True), nullable=True),
    Column("withdrawn_by", String(128), nullable=True),
    Column("withdrawal_authority", String(40), nullable=True),
    #: The log entry of the last change: the person's consent epoch is the highest of these.
    Column("change_seq", BigInteger, nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Index("ix_consents_nhs_number", "nhs_number"),
    Index("ix_consents_source_ref", "source_ref"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("action", String(20), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("requester_kind", String(20), nullable=False),
    Column("org_ods", String(20), nullable=False),
    Column("client_id", String(128), nullable=False),
    Column("nhs_number", String(10), nullable=True),
    Column("purpose", String(20), nullable=True),
    Column("decision", String(8), nullable=True),
    Column("reason", String(48), nullable=True),
    Column("consent_id", String(64), nullable=True),
    Column("detail", Text, nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Index("ix_audit_log_nhs_number", "nhs_number", "seq"),
    Index("ix_audit_log_org", "org_ods", "seq"),
    Index("ix_audit_log_at", "at"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("entry_hash", String(64), nullable=False),
    Column("signed_at", String(32), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", Text, nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("checkpoint_seq", BigInteger, nullable=False),
)
