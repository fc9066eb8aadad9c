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
  defines its format); ``audit_head`` is the one row appenders lock to extend the chain in order;
  ``audit_flushes``: on PostgreSQL, the synchronous commit that puts each append on disk
  (``store.audit.append_postgres``).
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
    text,
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
    # When the source recorded the current version, as sent (None: not known); migration 0010.
    Column("recorded", String(40), nullable=True),
    # A person's resources of one type in id order: the API's searches and pages (migration 0005).
    Index("ix_resources_person", "nhs_number", "resource_type", "id"),
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
    #: Not before this time (a retry's backoff); NULL: at once.
    Column("available_at", DateTime(timezone=True), nullable=True),
    #: The publisher holding the row and until when (a crashed publisher's rows come back after it).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_status_id", "status", "id"),
    #: A leased person's other due rows (``outbox.claim_rest``).
    Index("ix_outbox_nhs_number", "nhs_number"),
    #: Unsent rows in id order: a claim reads these alone, never walking the delivered ones before
    #: them (migration 0007; measured at 100,000 people, that walk was most of PostgreSQL's CPU).
    Index(
        "ix_outbox_unsent",
        "id",
        postgresql_where=text("status IN ('pending', 'claimed')"),
        sqlite_where=text("status IN ('pending', 'claimed')"),
    ),
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

# One row per appending PostgreSQL connection (its backend pid): an append commits without waiting
# for the disk, so as not to hold the head's lock meanwhile; updating this row then commits
# synchronously, which flushes the append's commit with it (WAL is flushed in order).
audit_flushes = Table(
    "audit_flushes",
    metadata,
    Column("backend_pid", Integer, primary_key=True, autoincrement=False),
    Column("flushes", BigInteger, nullable=False, server_default="0"),
)

# API clients (SMART Backend Services): one row per client organisation, with its public JWK Set.
# A client is never deleted (the log names it); ``disabled_at`` refuses it tokens from that moment.
api_clients = Table(
    "api_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("ods_code", String(20), nullable=False),
    #: provider | source | ig-auditor | admin (gateway.api.principal.Role).
    Column("role", String(20), nullable=False),
    #: Registered SMART system scopes, space-separated.
    Column("scopes", Text, nullable=False),
    #: For role ``source``: the one source whose records it may write (e.g. ``social-care``).
    Column("source", String(20), nullable=True),
    #: The client's public JWK Set (JSON), or its JWK Set URL as ``{"jwks_uri": ...}``
    #: (``gateway.api.client_keys``); private keys are refused at registration.
    Column("jwks", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
    Index("ux_api_clients_name", "name", unique=True),
)

# Client-assertion ids already used, kept until the assertion's own ``exp`` (replay protection that
# needs no Redis; with Redis it is still written: Redis is never the only copy).
used_jtis = Table(
    "used_jtis",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_used_jtis_expires_at", "expires_at"),
)

# Idempotency keys of the push endpoints: a repeated request with the same key gets the first answer.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=True),
    Column("response", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# What the HIE holds per person, and the per-person lease that keeps one publisher per person at a time
# (so an older view can never overtake a newer one on the wire).
hie_people = Table(
    "hie_people",
    metadata,
    Column("nhs_number", String(10), primary_key=True),
    #: none | published | retracted
    Column("state", String(16), nullable=False),
    #: JSON list of ``Type/id/_history/version`` the HIE was last sent for this person.
    Column("published", Text, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    #: X-Request-ID of the delivery in progress: reused by every retry of the same delivery.
    Column("delivery_id", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", String(255), nullable=True),
    Column("changed_at", DateTime(timezone=True), nullable=True),
)

# Deliveries the HIE refused for good (4xx other than 408/409/429), with its OperationOutcome.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("nhs_number", String(10), nullable=False),
    Column("delivery_id", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Index("ix_dead_letters_open", "resolved_at", "id"),
)
