"""The audit log's hash chain and signed checkpoints: what ``verify`` catches, and where.

A log of twelve entries is built in memory with checkpoints signed at entries 5
and 10, so entries 11 and 12 are the unsigned tail.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from consent.chain import (
    CANONICAL_HEAD,
    ENTRY_FIELDS,
    GENESIS,
    Checkpoint,
    Entry,
    KeyFormatError,
    Kind,
    StoredEntry,
    Verification,
    Verifier,
    canonical_tail,
    detail,
    key_id,
    link,
    load_public_key,
    public_key_pem,
    sign_checkpoint,
    timestamp,
    verify,
)

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
LENGTH = 12
CHECKPOINT_AT = (5, 10)
KEY = Ed25519PrivateKey.generate()
KID = key_id(KEY.public_key())
KEYS = {KID: KEY.public_key()}


def make_entry(n: int) -> Entry:
    disclosure = n % 3 != 0
    return Entry(
        at=timestamp(T0 + timedelta(seconds=n)),
        kind=Kind.DISCLOSURE if disclosure else Kind.CONSENT_CHANGE,
        action="read" if disclosure else "opt-out",
        request_id=f"req-{n:04d}",
        requester_kind="provider" if disclosure else "operator",
        org_ods="RXX01",
        client_id="community-epr",
        nhs_number="9990000018" if n % 2 else "9990000026",
        purpose="direct-care" if disclosure else None,
        decision="permit" if disclosure else None,
        reason="no-objection" if disclosure else None,
        consent_id=None if disclosure else f"optout-{n}",
        detail=detail(returned=[f"Patient/p{n}"]) if disclosure else detail(kind="local-scr"),
    )


def chain(entries: Sequence[Entry], first_seq: int = 1, previous: bytes = GENESIS) -> list[StoredEntry]:
    """Stored entries with correct hashes, as the gateway (or an attacker rewriting it) computes them."""
    stored = []
    for offset, entry in enumerate(entries):
        seq = first_seq + offset
        digest = link(previous, seq, entry)
        stored.append(StoredEntry(seq, entry, digest.hex()))
        previous = digest
    return stored


def checkpoints(
    log: Sequence[StoredEntry], at: Sequence[int] = CHECKPOINT_AT, keys: Sequence[Ed25519PrivateKey] = (KEY,)
) -> list[Checkpoint]:
    by_seq = {s.seq: s for s in log}
    return [
        sign_checkpoint(keys[i % len(keys)], seq, by_seq[seq].entry_hash, T0 + timedelta(hours=seq))
        for i, seq in enumerate(at)
    ]


ENTRIES = [make_entry(n) for n in range(1, LENGTH + 1)]
LOG = chain(ENTRIES)
CHECKPOINTS = checkpoints(LOG)


def at(seq: int) -> int:
    """The list index of entry ``seq``."""
    return seq - 1


def assert_problem(result: Verification, seq: int, code: str) -> None:
    assert result.problem is not None, "the change went undetected"
    assert (result.problem.seq, result.problem.code) == (seq, code), result.problem
    assert not result.ok


# An intact log -----------------------------------------------------------------------------------


def test_an_intact_log_verifies_and_reports_what_it_checked() -> None:
    result = verify(LOG, CHECKPOINTS, KEYS)
    assert result.ok
    assert result.problem is None
    assert result.entries == LENGTH
    assert result.last_seq == LENGTH
    assert result.last_hash == LOG[-1].entry_hash
    assert result.checkpoints == 2
    assert result.last_checkpoint == CHECKPOINTS[-1]
    assert result.unsigned == LENGTH - 10
    assert result.key_ids == {KID}


def test_checkpoints_may_come_in_any_order() -> None:
    result = verify(LOG, list(reversed(CHECKPOINTS)), KEYS)
    assert result.ok
    assert result.checkpoints == 2


def test_an_empty_log_verifies() -> None:
    result = verify([], [], KEYS)
    assert result.ok
    assert (result.entries, result.last_seq, result.unsigned) == (0, 0, 0)
    assert result.last_hash == GENESIS.hex()


def test_a_log_without_checkpoints_is_all_unsigned() -> None:
    result = verify(LOG, [], {})
    assert result.ok
    assert result.unsigned == LENGTH
    assert result.checkpoints == 0


def test_the_chain_starts_from_thirty_two_zero_bytes() -> None:
    assert LOG[0].entry_hash == hashlib.sha256(bytes(32) + ENTRIES[0].canonical(1)).hexdigest()


def test_the_hash_covers_the_format_the_seq_and_every_field_in_order() -> None:
    """The documented format: hash(n) = SHA-256(hash(n-1) || JSON [format, seq, *fields])."""
    entry = ENTRIES[6]
    canonical = orjson.dumps(
        [
            1,
            7,
            entry.at,
            entry.kind,
            entry.action,
            entry.request_id,
            entry.requester_kind,
            entry.org_ods,
            entry.client_id,
            entry.nhs_number,
            entry.purpose,
            entry.decision,
            entry.reason,
            entry.consent_id,
            entry.detail,
        ]
    )
    assert entry.canonical(7) == canonical
    previous = bytes.fromhex(LOG[at(6)].entry_hash)
    assert LOG[at(7)].entry_hash == hashlib.sha256(previous + canonical).hexdigest()
    # The seq is part of what is hashed: the same entry at another position hashes differently.
    assert link(previous, 7, entry) != link(previous, 8, entry)


@pytest.mark.parametrize("sizes", [(1,) * LENGTH, (3, 4, 5), (5, 5, 2), (0, 12, 0), (11, 1), (12,)])
def test_verifier_fed_in_chunks_gives_the_same_result(sizes: tuple[int, ...]) -> None:
    assert sum(sizes) == LENGTH
    verifier = Verifier(CHECKPOINTS, KEYS)
    start = 0
    for size in sizes:
        assert verifier.feed(iter(LOG[start : start + size])) is True
        start += size
    result = verifier.finish()
    whole = verify(LOG, CHECKPOINTS, KEYS)
    assert result.ok
    assert (result.entries, result.checkpoints, result.unsigned, result.last_hash) == (
        whole.entries,
        whole.checkpoints,
        whole.unsigned,
        whole.last_hash,
    )


@pytest.mark.parametrize("split", [1, 4, 6, 7, 11])
def test_verifier_in_chunks_finds_the_edit_and_stops(split: int) -> None:
    """Entry 7 edited; the chunk boundary falls before, on, or after it."""
    log = list(LOG)
    log[at(7)] = dataclasses.replace(log[at(7)], entry=dataclasses.replace(log[at(7)].entry, org_ods="EVIL1"))
    verifier = Verifier(CHECKPOINTS, KEYS)
    first = verifier.feed(log[:split])
    second = verifier.feed(log[split:])
    assert (first, second) == (split < 7, False)
    assert verifier.feed(LOG) is False  # once a problem is found nothing more is read
    result = verifier.finish()
    assert_problem(result, 7, "altered")
    assert result.entries == 6


# Edits, deletions, insertions, reordering --------------------------------------------------------


def other_value(field: str, value: object) -> str:
    if value is None:
        return "x"
    if field == "detail":
        return detail(returned=["Patient/someone-else"])
    return f"{value}!"


@pytest.mark.parametrize("seq", [1, 5, 7, 10, 11, 12])
@pytest.mark.parametrize("field", ENTRY_FIELDS)
def test_an_edited_field_is_altered_at_that_entry(field: str, seq: int) -> None:
    log = list(LOG)
    entry = log[at(seq)].entry
    changed = dataclasses.replace(entry, **{field: other_value(field, getattr(entry, field))})
    log[at(seq)] = dataclasses.replace(log[at(seq)], entry=changed)
    result = verify(log, CHECKPOINTS, KEYS)
    assert_problem(result, seq, "altered")
    assert result.entries == seq - 1


@pytest.mark.parametrize("seq", [1, 5, 7, 10, 11, 12])
def test_an_edited_hash_is_altered_at_that_entry(seq: int) -> None:
    log = list(LOG)
    log[at(seq)] = dataclasses.replace(
        log[at(seq)], entry_hash=LOG[at(seq) - 1].entry_hash if seq > 1 else "0" * 64
    )
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "altered")


@pytest.mark.parametrize("seq", [1, 4, 5, 6, 10, 11])
def test_a_deleted_entry_is_missing_at_its_seq(seq: int) -> None:
    log = [s for s in LOG if s.seq != seq]
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "missing")


def test_deleting_a_run_of_entries_names_the_first() -> None:
    log = [s for s in LOG if not 3 <= s.seq <= 6]
    assert_problem(verify(log, CHECKPOINTS, KEYS), 3, "missing")


@pytest.mark.parametrize("seq", [1, 4, 7, 11])
def test_an_inserted_entry_renumbering_the_rest_is_caught_where_the_old_entries_start(seq: int) -> None:
    """The insert carries a correctly linked hash; the entries after it were moved up by one."""
    fake = dataclasses.replace(make_entry(seq), request_id="req-forged", org_ods="EVIL1")
    prefix = LOG[: at(seq)]
    previous = bytes.fromhex(prefix[-1].entry_hash) if prefix else GENESIS
    inserted = StoredEntry(seq, fake, link(previous, seq, fake).hex())
    moved = [dataclasses.replace(s, seq=s.seq + 1) for s in LOG[at(seq) :]]
    log = [*prefix, inserted, *moved]
    # Checkpoint 5 would also catch an insert before it; the chain catches it at once.
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq + 1, "altered")


@pytest.mark.parametrize("seq", [1, 4, 7, 11])
def test_an_inserted_entry_with_an_unlinked_hash_is_altered_at_its_seq(seq: int) -> None:
    fake = dataclasses.replace(make_entry(seq), request_id="req-forged")
    inserted = StoredEntry(seq, fake, LOG[at(seq)].entry_hash)  # a hash copied from a real entry
    moved = [dataclasses.replace(s, seq=s.seq + 1) for s in LOG[at(seq) :]]
    log = [*LOG[: at(seq)], inserted, *moved]
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "altered")


@pytest.mark.parametrize("seq", [1, 4, 7, 11])
def test_an_inserted_entry_without_renumbering_is_a_duplicate_seq(seq: int) -> None:
    fake = dataclasses.replace(make_entry(seq), request_id="req-forged")
    prefix = LOG[: at(seq)]
    previous = bytes.fromhex(prefix[-1].entry_hash) if prefix else GENESIS
    inserted = StoredEntry(seq, fake, link(previous, seq, fake).hex())
    log = [*prefix, inserted, *LOG[at(seq) :]]
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "duplicate")


def test_an_entry_inserted_in_place_of_a_checkpointed_one_is_rewritten() -> None:
    fake = dataclasses.replace(make_entry(5), request_id="req-forged")
    inserted = StoredEntry(5, fake, link(bytes.fromhex(LOG[at(4)].entry_hash), 5, fake).hex())
    log = [*LOG[:4], inserted, *LOG[4:]]
    assert_problem(verify(log, CHECKPOINTS, KEYS), 1, "rewritten")


@pytest.mark.parametrize("seq", [1, 4, 5, 9, 11])
def test_two_entries_swapped_are_caught_at_the_first(seq: int) -> None:
    """Entries seq and seq+1 exchange places, each keeping its stored seq and hash."""
    log = list(LOG)
    log[at(seq)], log[at(seq) + 1] = log[at(seq) + 1], log[at(seq)]
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "missing")


@pytest.mark.parametrize("seq", [1, 4, 5, 9, 11])
def test_two_entries_swapped_and_renumbered_are_caught_at_the_first(seq: int) -> None:
    """Entries seq and seq+1 exchange contents; the seq column is left in order."""
    log = list(LOG)
    a, b = log[at(seq)], log[at(seq) + 1]
    log[at(seq)] = StoredEntry(seq, b.entry, b.entry_hash)
    log[at(seq) + 1] = StoredEntry(seq + 1, a.entry, a.entry_hash)
    assert_problem(verify(log, CHECKPOINTS, KEYS), seq, "altered")


# Truncation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 4, 8, 9])
def test_truncation_past_a_checkpoint_is_caught(keep: int) -> None:
    result = verify(LOG[:keep], CHECKPOINTS, KEYS)
    assert_problem(result, keep + 1, "truncated")
    assert result.entries == keep


@pytest.mark.parametrize("keep", [10, 11])
def test_known_window_truncating_the_unsigned_tail_is_not_detected_by_the_log_alone(keep: int) -> None:
    """KNOWN WINDOW (docs/audit-log.md): entries after the last checkpoint are protected only by the
    chain, and dropping the end of a chain leaves a valid chain. Only a (seq, hash) noted outside
    the store catches it; see the next test."""
    result = verify(LOG[:keep], CHECKPOINTS, KEYS)
    assert result.ok
    assert result.entries == keep


def test_known_window_truncating_entries_and_the_checkpoints_after_them_is_not_detected() -> None:
    """KNOWN WINDOW: whoever can delete rows can delete the checkpoints past the cut as well."""
    result = verify(LOG[:7], CHECKPOINTS[:1], KEYS)
    assert result.ok


@pytest.mark.parametrize(
    ("keep", "checkpoints_kept"),
    [(10, 2), (11, 2), (7, 1), (4, 0)],
    ids=["10", "11", "7-cp-gone", "4-cp-gone"],
)
def test_a_noted_hash_catches_truncation_of_the_unsigned_tail(keep: int, checkpoints_kept: int) -> None:
    noted = [(LENGTH, LOG[-1].entry_hash)]
    result = verify(LOG[:keep], CHECKPOINTS[:checkpoints_kept], KEYS, expect=noted)
    assert_problem(result, keep + 1, "truncated")


def test_a_noted_hash_that_matches_passes() -> None:
    noted = [(3, LOG[at(3)].entry_hash), (LENGTH, LOG[-1].entry_hash)]
    assert verify(LOG, CHECKPOINTS, KEYS, expect=noted).ok


# Rewriting the chain -----------------------------------------------------------------------------


def rewritten_from(seq: int) -> list[StoredEntry]:
    """Entry ``seq`` edited and every hash from it on recomputed, as someone with the database could."""
    edited = dataclasses.replace(ENTRIES[at(seq)], decision="deny", reason="local-opt-out")
    previous = bytes.fromhex(LOG[at(seq) - 1].entry_hash) if seq > 1 else GENESIS
    return [*LOG[: at(seq)], *chain([edited, *ENTRIES[at(seq) + 1 :]], seq, previous)]


@pytest.mark.parametrize(("seq", "since"), [(1, 1), (3, 1), (5, 1), (6, 6), (7, 6), (10, 6)])
def test_a_recomputed_chain_is_caught_at_the_next_checkpoint(seq: int, since: int) -> None:
    log = rewritten_from(seq)
    assert log[at(seq)].entry_hash != LOG[at(seq)].entry_hash
    result = verify(log, CHECKPOINTS, KEYS)
    assert_problem(result, since, "rewritten")


def test_a_recomputed_chain_is_caught_by_the_verifier_in_chunks_too() -> None:
    log = rewritten_from(7)
    verifier = Verifier(CHECKPOINTS, KEYS)
    assert verifier.feed(log[:8]) is True
    assert verifier.feed(log[8:]) is False
    assert_problem(verifier.finish(), 6, "rewritten")


@pytest.mark.parametrize("seq", [11, 12])
def test_known_window_a_recomputed_unsigned_tail_passes_without_a_noted_hash(seq: int) -> None:
    """KNOWN WINDOW: an edit after the last checkpoint, hashes recomputed, passes until signed."""
    log = rewritten_from(seq)
    assert verify(log, CHECKPOINTS, KEYS).ok
    noted = [(LENGTH, LOG[-1].entry_hash)]
    assert_problem(verify(log, CHECKPOINTS, KEYS, expect=noted), LENGTH, "rewritten")


# Checkpoint signatures and keys ------------------------------------------------------------------


def with_checkpoint(index: int, **changes: Any) -> list[Checkpoint]:
    cps = list(CHECKPOINTS)
    cps[index] = dataclasses.replace(cps[index], **changes)
    return cps


def flipped(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda s: flipped(s), id="bit-flipped"),
        pytest.param(lambda s: "not base64 at all!", id="garbled"),
        pytest.param(lambda s: s[:-4], id="cut-short"),
        pytest.param(lambda s: "", id="empty"),
        pytest.param(lambda s: base64.b64encode(bytes(64)).decode(), id="zeros"),
    ],
)
def test_a_garbled_signature_is_a_bad_signature(index: int, signature: Callable[[str], str]) -> None:
    cps = with_checkpoint(index, signature=signature(CHECKPOINTS[index].signature))
    result = verify(LOG, cps, KEYS)
    assert_problem(result, CHECKPOINT_AT[index], "bad-signature")


def test_a_rewritten_chain_with_the_checkpoint_hash_updated_is_a_bad_signature() -> None:
    """The attacker recomputes the chain and copies the new hash into the checkpoint, without the key."""
    log = rewritten_from(7)
    cps = with_checkpoint(1, entry_hash=log[at(10)].entry_hash)
    assert_problem(verify(log, cps, KEYS), 10, "bad-signature")


def test_a_checkpoint_signed_by_another_key_claiming_ours_is_a_bad_signature() -> None:
    forger = Ed25519PrivateKey.generate()
    log = rewritten_from(7)
    forged = sign_checkpoint(forger, 10, log[at(10)].entry_hash, T0)
    cps = [CHECKPOINTS[0], dataclasses.replace(forged, key_id=KID, signature=forged.signature)]
    assert_problem(verify(log, cps, KEYS), 10, "bad-signature")


@pytest.mark.parametrize("field", ["signed_at", "seq"])
def test_a_checkpoint_with_a_changed_signed_field_is_a_bad_signature(field: str) -> None:
    cps = list(CHECKPOINTS)
    if field == "seq":
        # Moved to entry 6 with entry 6's hash: the signature was over seq 5.
        cps[0] = dataclasses.replace(cps[0], seq=6, entry_hash=LOG[at(6)].entry_hash)
        assert_problem(verify(LOG, cps, KEYS), 6, "bad-signature")
    else:
        cps[0] = dataclasses.replace(cps[0], signed_at=timestamp(T0 - timedelta(days=1)))
        assert_problem(verify(LOG, cps, KEYS), 5, "bad-signature")


def test_a_checkpoint_signed_by_an_unknown_key_is_reported() -> None:
    stranger = Ed25519PrivateKey.generate()
    cps = checkpoints(LOG, keys=(KEY, stranger))
    result = verify(LOG, cps, KEYS)
    assert_problem(result, 10, "unknown-key")
    assert result.problem is not None
    assert key_id(stranger.public_key()) in result.problem.message
    assert result.checkpoints == 1  # the first, ours, was checked before it


def test_no_keys_given_is_unknown_key_at_the_first_checkpoint() -> None:
    assert_problem(verify(LOG, CHECKPOINTS, {}), 5, "unknown-key")


def test_rotation_checkpoints_by_two_keys_verify_when_both_are_given() -> None:
    new = Ed25519PrivateKey.generate()
    new_kid = key_id(new.public_key())
    cps = checkpoints(LOG, keys=(KEY, new))
    assert {cp.key_id for cp in cps} == {KID, new_kid}
    result = verify(LOG, cps, {KID: KEY.public_key(), new_kid: new.public_key()})
    assert result.ok
    assert result.key_ids == {KID, new_kid}
    assert result.checkpoints == 2
    assert_problem(verify(LOG, cps, {new_kid: new.public_key()}), 5, "unknown-key")
    assert_problem(verify(LOG, cps, KEYS), 10, "unknown-key")


def test_a_key_given_under_the_wrong_id_does_not_verify() -> None:
    other = Ed25519PrivateKey.generate()
    assert_problem(verify(LOG, CHECKPOINTS, {KID: other.public_key()}), 5, "bad-signature")


# Keys --------------------------------------------------------------------------------------------


def test_public_key_pem_round_trips() -> None:
    pem = public_key_pem(KEY.public_key())
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    loaded = load_public_key(pem.encode())
    assert isinstance(loaded, Ed25519PublicKey)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert loaded.public_bytes(*raw) == KEY.public_key().public_bytes(*raw)
    assert key_id(loaded) == KID
    assert verify(LOG, CHECKPOINTS, {key_id(loaded): loaded}).ok


def test_key_id_is_sixteen_hex_digits_and_differs_between_keys() -> None:
    other = key_id(Ed25519PrivateKey.generate().public_key())
    assert len(KID) == 16
    assert int(KID, 16) >= 0
    assert other != KID


def test_an_ec_public_key_is_rejected() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="Ed25519"):
        load_public_key(pem)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a key",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    ],
    ids=["empty", "text", "bad-body", "private-key"],
)
def test_what_is_not_a_pem_public_key_is_a_key_format_error(pem: bytes) -> None:
    with pytest.raises(KeyFormatError):
        load_public_key(pem)


def test_key_format_error_is_a_value_error() -> None:
    assert issubclass(KeyFormatError, ValueError)


@given(
    seq=st.integers(min_value=0, max_value=10**15),
    text=st.text(max_size=30),
    maybe=st.none() | st.text(max_size=10),
)
def test_the_canonical_bytes_split_around_the_sequence_number(seq: int, text: str, maybe: str | None) -> None:
    """What PostgreSQL's ``audit_append`` hashes (head, the number, the tail) is ``canonical(seq)``."""
    e = Entry(
        at=text, kind="k", action=text, request_id="r", requester_kind="q", org_ods="o", client_id=text,
        nhs_number=maybe, purpose=maybe, decision=None, reason=maybe, consent_id=maybe, detail=text,
    )  # fmt: skip
    assert CANONICAL_HEAD + str(seq).encode() + canonical_tail(e) == e.canonical(seq)
