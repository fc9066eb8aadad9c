"""The log's format: entries in a SHA-256 hash chain, checkpoints signed with Ed25519. Pure.

Each entry's hash covers the previous entry's hash and the canonical encoding
of every field of the entry, its sequence number included::

    hash(n) = SHA-256( hash(n-1) || canonical(entry n) )        hash(0) = 32 zero bytes

so editing, deleting, inserting or reordering entries changes every hash that
follows. Someone able to write the database could recompute the chain after an
edit; a *checkpoint* stops that: the gateway signs ``(seq, hash(seq))`` with its
Ed25519 key every so many entries, and a rewritten chain no longer matches a
signed hash. Entries after the last checkpoint are protected by the chain only
until the next checkpoint signs them (docs/audit-log.md sizes that window).

``verify`` walks entries in sequence order and names the first bad one.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT: Final = 1
GENESIS: Final = bytes(32)
CHECKPOINT_CONTEXT: Final = b"concord-audit-checkpoint/v1"


class Kind:
    CONSENT_CHANGE: Final = "consent-change"
    DISCLOSURE: Final = "disclosure"


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: who asked, which organisation, which person, what purpose, the decision, when.

    ``detail`` holds identifiers only (resource references returned or withheld,
    the opt-out's kind and authority), never clinical content.
    """

    at: str
    kind: str
    action: str
    request_id: str
    requester_kind: str
    org_ods: str
    client_id: str
    nhs_number: str | None = None
    purpose: str | None = None
    decision: str | None = None
    reason: str | None = None
    consent_id: str | None = None
    detail: str = "{}"

    def canonical(self, seq: int) -> bytes:
        """The bytes the chain hashes: a JSON array in field order, the format and sequence first."""
        return orjson.dumps(
            [
                FORMAT,
                seq,
                self.at,
                self.kind,
                self.action,
                self.request_id,
                self.requester_kind,
                self.org_ods,
                self.client_id,
                self.nhs_number,
                self.purpose,
                self.decision,
                self.reason,
                self.consent_id,
                self.detail,
            ]
        )


ENTRY_FIELDS: Final = tuple(f.name for f in fields(Entry))


def timestamp(when: datetime) -> str:
    """The log's one time format: UTC, microseconds, ``Z`` (sorts as text)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def detail(**values: object) -> str:
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()


def link(previous: bytes, seq: int, entry: Entry) -> bytes:
    return hashlib.sha256(previous + entry.canonical(seq)).digest()


@dataclass(frozen=True, slots=True)
class StoredEntry:
    seq: int
    entry: Entry
    entry_hash: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signature over the chain up to ``seq``: whoever holds the public key can check it offline."""

    seq: int
    entry_hash: str
    signed_at: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        return signed_message(self.seq, self.entry_hash, self.signed_at, self.key_id)


def signed_message(seq: int, entry_hash: str, signed_at: str, key_id: str) -> bytes:
    return b"|".join(
        [CHECKPOINT_CONTEXT, str(seq).encode(), entry_hash.encode(), signed_at.encode(), key_id.encode()]
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(key: Ed25519PrivateKey, seq: int, entry_hash: str, when: datetime) -> Checkpoint:
    kid = key_id(key.public_key())
    signed_at = timestamp(when)
    signature = key.sign(signed_message(seq, entry_hash, signed_at, kid))
    return Checkpoint(seq, entry_hash, signed_at, kid, base64.b64encode(signature).decode())


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class KeyFormatError(ValueError):
    """A key file that is not an Ed25519 key in PEM."""


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyFormatError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("not an Ed25519 public key")
    return key


@dataclass(slots=True)
class Problem:
    """The first bad entry (or checkpoint) and what is wrong with it."""

    seq: int
    code: str
    message: str


@dataclass(slots=True)
class Verification:
    entries: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS.hex()
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    problem: Problem | None = None
    key_ids: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned(self) -> int:
        """Entries after the last signed checkpoint: protected by the chain alone until the next."""
        return self.last_seq - (self.last_checkpoint.seq if self.last_checkpoint else 0)


def verify(
    entries: Iterable[StoredEntry],
    checkpoints: Iterable[Checkpoint],
    public_keys: Mapping[str, Ed25519PublicKey],
    expect: Iterable[tuple[int, str]] = (),
) -> Verification:
    """Check a whole log held in memory (``Verifier`` does the same a chunk at a time)."""
    verifier = Verifier(checkpoints, public_keys, expect)
    verifier.feed(entries)
    return verifier.finish()


class Verifier:
    """Checks the log in ``seq`` order, a chunk at a time, and stops at the first problem.

    ``checkpoints`` may come in any order. ``public_keys`` maps key id to key
    (several after a rotation). ``expect`` holds (seq, hash) pairs noted outside
    the store, which catch a truncation that also removed the checkpoints after it.
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_keys: Mapping[str, Ed25519PublicKey],
        expect: Iterable[tuple[int, str]] = (),
    ) -> None:
        self.result = Verification()
        self.by_seq = {cp.seq: cp for cp in checkpoints}
        self.public_keys = public_keys
        self.expected = dict(expect)
        self.previous = GENESIS
        self.next_seq = 1

    def feed(self, entries: Iterable[StoredEntry]) -> bool:
        """Check the next entries; False once a problem is found (the rest need not be read)."""
        return self.feed_rows(
            (s.seq, *(getattr(s.entry, name) for name in ENTRY_FIELDS), s.entry_hash) for s in entries
        )

    def feed_rows(self, rows: Iterable[Sequence[Any]]) -> bool:
        """``feed`` for rows as stored: ``(seq, *ENTRY_FIELDS, entry_hash)``, without building objects.

        The row minus its hash is exactly what ``Entry.canonical`` encodes, so it is hashed as it
        comes from the database (the verify path reads hundreds of thousands of entries a second).
        """
        result = self.result
        if result.problem is not None:
            return False
        previous = self.previous
        next_seq = self.next_seq
        signed = bool(self.by_seq or self.expected)
        sha256 = hashlib.sha256
        dumps = orjson.dumps
        try:
            for row in rows:
                seq = row[0]
                if seq != next_seq:
                    if seq > next_seq:
                        message = f"entry {next_seq} is missing (the next stored is {seq})"
                        result.problem = Problem(next_seq, "missing", message)
                    else:
                        message = f"entry {seq} appears again after entry {next_seq - 1}"
                        result.problem = Problem(seq, "duplicate", message)
                    return False
                digest = sha256(previous + dumps([FORMAT, *row[:-1]])).digest()
                hexdigest = digest.hex()
                if hexdigest != row[-1]:
                    result.problem = Problem(
                        seq,
                        "altered",
                        f"entry {seq} does not match its hash: it was edited, inserted or moved",
                    )
                    return False
                if signed:
                    problem = self._signed(seq, hexdigest)
                    if problem is not None:
                        result.problem = problem
                        return False
                previous = digest
                result.entries += 1
                next_seq += 1
            return True
        finally:
            self.previous = previous
            self.next_seq = next_seq
            result.last_seq = next_seq - 1

    def _signed(self, seq: int, hexdigest: str) -> Problem | None:
        signed = self.by_seq.get(seq)
        if signed is not None and (
            problem := _check_checkpoint(signed, hexdigest, self.public_keys, self.result)
        ):
            return problem
        want = self.expected.get(seq)
        if want is not None and want != hexdigest:
            return Problem(
                seq, "rewritten", f"entry {seq} differs from the hash noted for it outside the log"
            )
        return None

    def finish(self) -> Verification:
        """The result; a checkpoint or noted hash beyond the last entry means the log was truncated."""
        result = self.result
        result.last_hash = self.previous.hex()
        if result.problem is not None:
            return result
        beyond = sorted(s for s in [*self.by_seq, *self.expected] if s > result.last_seq)
        if beyond:
            result.problem = Problem(
                result.last_seq + 1,
                "truncated",
                f"the log ends at entry {result.last_seq} but entry {beyond[-1]} was signed or noted: "
                f"entries {result.last_seq + 1} to {beyond[-1]} were removed",
            )
        return result


def _check_checkpoint(
    cp: Checkpoint, digest: str, public_keys: Mapping[str, Ed25519PublicKey], result: Verification
) -> Problem | None:
    key = public_keys.get(cp.key_id)
    if key is None:
        return Problem(
            cp.seq, "unknown-key", f"checkpoint at entry {cp.seq} was signed by key {cp.key_id}, not given"
        )
    try:
        key.verify(base64.b64decode(cp.signature), cp.message())
    except (InvalidSignature, ValueError):
        return Problem(cp.seq, "bad-signature", f"checkpoint at entry {cp.seq} has an invalid signature")
    if cp.entry_hash != digest:
        since = result.last_checkpoint.seq + 1 if result.last_checkpoint else 1
        return Problem(
            since,
            "rewritten",
            f"entries {since} to {cp.seq} were rewritten: the chain no longer matches "
            f"the checkpoint signed at entry {cp.seq}",
        )
    result.checkpoints += 1
    result.last_checkpoint = cp
    result.key_ids.add(cp.key_id)
    return None
