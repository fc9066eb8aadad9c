"""audit log: on PostgreSQL, appends chained by the server under the head's row lock

``audit_append`` takes a batch of entries (each as its stored columns and the bytes its hash
covers after the sequence number), locks ``audit_head``, numbers and hashes the entries from the
head it finds there, inserts them and moves the head: one statement, which never has to be tried
again because another process appended first (``store.audit.append_postgres``). The hash is the
one ``consent.chain`` defines: SHA-256 of the previous entry's hash followed by
``[1,{seq},...]``, the entry's canonical JSON, whose bytes around ``{seq}`` the caller sends.

``SET search_path FROM CURRENT``: the function works on the tables of the schema it was created
in, whatever a caller's search path is.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 20:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SIGNATURE = "bytea, bytea[]" + ", text[]" * 13

CREATE = """
CREATE OR REPLACE FUNCTION audit_append(
    head_bytes bytea, tails bytea[],
    p_at text[], p_kind text[], p_action text[], p_request_id text[], p_requester_kind text[],
    p_org_ods text[], p_client_id text[], p_nhs_number text[], p_purpose text[], p_decision text[],
    p_reason text[], p_consent_id text[], p_detail text[],
    OUT new_seq bigint, OUT new_hash text, OUT new_checkpoint_seq bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
DECLARE
    first_seq bigint;
    digest bytea;
    hashes text[] := '{}';
    n integer := coalesce(array_length(tails, 1), 0);
BEGIN
    IF coalesce(array_length(p_at, 1), 0) <> n THEN
        RAISE EXCEPTION 'audit_append: % entries but % canonical tails', array_length(p_at, 1), n;
    END IF;
    SELECT h.seq, decode(h.entry_hash, 'hex'), h.checkpoint_seq
        INTO first_seq, digest, new_checkpoint_seq
        FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_append: the audit log has no head';
    END IF;
    new_seq := first_seq;
    FOR i IN 1 .. n LOOP
        new_seq := new_seq + 1;
        digest := sha256(digest || head_bytes || convert_to(new_seq::text, 'UTF8') || tails[i]);
        hashes[i] := encode(digest, 'hex');
    END LOOP;
    new_hash := encode(digest, 'hex');
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO audit_log (seq, at, kind, action, request_id, requester_kind, org_ods, client_id,
                           nhs_number, purpose, decision, reason, consent_id, detail, entry_hash)
    SELECT first_seq + e.ord, e.at, e.kind, e.action, e.request_id, e.requester_kind, e.org_ods,
           e.client_id, e.nhs_number, e.purpose, e.decision, e.reason, e.consent_id, e.detail,
           hashes[e.ord]
    FROM unnest(p_at, p_kind, p_action, p_request_id, p_requester_kind, p_org_ods, p_client_id,
                p_nhs_number, p_purpose, p_decision, p_reason, p_consent_id, p_detail)
         WITH ORDINALITY AS e(at, kind, action, request_id, requester_kind, org_ods, client_id,
                              nhs_number, purpose, decision, reason, consent_id, detail, ord);
    UPDATE audit_head SET seq = new_seq, entry_hash = new_hash WHERE id = 1;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS audit_append({SIGNATURE})")
