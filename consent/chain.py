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
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
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

    def row(self, seq: int) -> tuple[Any, ...]:
        """The entry as stored, less its hash: ``(seq, *ENTRY_FIELDS)``."""
        return (
            seq, self.at, self.kind, self.action, self.request_id, self.requester_kind, self.org_ods,
            self.client_id, self.nhs_number, self.purpose, self.decision, self.reason, self.consent_id,
            self.detail,
        )  # fmt: skip

    def canonical(self, seq: int) -> bytes:
        """The bytes the chain hashes: a JSON array in field order, the format and sequence first."""
        return orjson.dumps([FORMAT, *self.row(seq)])


ENTRY_FIELDS: Final = tuple(f.name for f in fields(Entry))

#: What ``Entry.canonical(seq)`` starts with, before the sequence number (``canonical_tail``).
CANONICAL_HEAD: Final = orjson.dumps([FORMAT])[:-1] + b","


def canonical_tail(entry: Entry) -> bytes:
    """What ``entry.canonical(seq)`` holds after the sequence number, whatever ``seq`` is:
    ``canonical(seq) == CANONICAL_HEAD + str(seq).encode() + canonical_tail(entry)``.

    A store that numbers entries itself (PostgreSQL's ``audit_append``) hashes exactly these bytes.
    """
    return b"," + orjson.dumps(entry.row(0)[1:])[1:]


def timestamp(when: datetime) -> str:
    """The log's one time format: UTC, microseconds, ``Z`` (sorts as text)."""
    # isoformat is several times cheaper than strftime; in UTC it always ends "+00:00".
    return when.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def detail(**values: object) -> str:
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()


def link(previous: bytes, seq: int, entry: Entry) -> bytes:
    return hashlib.sha256(previous + entry.canonical(seq)).digest()


def chained_rows(previous: bytes, seq: int, entries: Iterable[Entry]) -> tuple[list[tuple[Any, ...]], bytes]:
    """The rows to store for ``entries`` appended after entry ``seq`` whose hash is ``previous``:
    ``(seq, *ENTRY_FIELDS, entry_hash)`` each; and the last entry's hash."""
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    rows = []
    for entry in entries:
        seq += 1
        row = entry.row(seq)
        previous = sha256(previous + dumps([FORMAT, *row])).digest()
        rows.append((*row, previous.hex()))
    return rows, previous


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

    The log can also be checked in contiguous spans by other processes (``SpanChecker``):
    ``absorb`` then takes their findings in ``seq`` order and reaches the same result.
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_keys: Mapping[str, Ed25519PublicKey],
        expect: Iterable[tuple[int, str]] = (),
        head: tuple[int, str] | None = None,
    ) -> None:
        self.result = Verification()
        self.by_seq = {cp.seq: cp for cp in checkpoints}
        self.public_keys = public_keys
        self.expected = dict(expect)
        #: The stored head (seq, hash) as read before the entries, if checked: appends extend the
        #: log from it, and a checkpoint signs it, so it must name an entry the log holds.
        self.head = head
        self.previous = GENESIS
        self.next_seq = 1
        #: The entries whose hash something else vouches for: a checkpoint, a noted hash, the head.
        heads = frozenset() if head is None else frozenset([head[0]])
        self.watched: frozenset[int] = frozenset(self.by_seq) | frozenset(self.expected) | heads

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
        start = self.next_seq
        self.previous, self.next_seq, problem = _walk(
            rows, self.previous, start, self.watched, self._at_watched
        )
        result.entries += self.next_seq - start
        result.last_seq = self.next_seq - 1
        if problem is not None:
            result.problem = problem
            return False
        return True

    def _at_watched(self, seq: int, hexdigest: str, previous: bytes) -> Problem | None:
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
        if self.head is not None and self.head[0] == seq and self.head[1] != hexdigest:
            return _head_edited(seq)
        return None

    def absorb(self, span: Span) -> bool:
        """Take the findings of the next span in ``seq`` order; False once a problem is found.

        The span's own links were checked where it was read; here its first link is checked (it
        must start from the hash the span before ended on) and the checkpoints and noted hashes
        inside it, in order, exactly as ``feed_rows`` would have met them. Raises
        ``SpanMismatch`` if the spans do not join up (the log changed between their reads).
        """
        result = self.result
        if result.problem is not None:
            return False
        if span.lo != self.next_seq - 1 or span.seed != self.previous.hex():
            raise SpanMismatch(f"the span after entry {span.lo} does not join the one before it")
        for seq in sorted(span.hashes):
            hexdigest, before = span.hashes[seq]
            problem = self._at_watched(seq, hexdigest, bytes.fromhex(before))
            if problem is not None:
                self._advance(seq - 1, before)
                result.problem = problem
                return False
        self._advance(span.last_seq, span.last_hash)
        if span.problem is not None:
            result.problem = span.problem
            return False
        return True

    def _advance(self, last_seq: int, last_hash: str) -> None:
        self.result.entries += last_seq - (self.next_seq - 1)
        self.result.last_seq = last_seq
        self.next_seq = last_seq + 1
        self.previous = bytes.fromhex(last_hash)

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
        elif self.head is not None:
            result.problem = _head_problem(self.head, result.last_seq)
        return result


def _walk(
    rows: Iterable[Sequence[Any]],
    previous: bytes,
    next_seq: int,
    watched: Container[int],
    at_watched: Callable[[int, str, bytes], Problem | None],
) -> tuple[bytes, int, Problem | None]:
    """Check each row's seq and link; returns the last good hash, the next seq and the first problem.

    The one loop every entry of a verify goes through: ``at_watched`` is called only for the
    entries in ``watched`` (checkpoints, noted hashes), with the entry's hash and the one before.
    """
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    for row in rows:
        seq = row[0]
        if seq != next_seq:
            return previous, next_seq, _out_of_order(next_seq, seq)
        digest = sha256(previous + dumps([FORMAT, *row[:-1]])).digest()
        hexdigest = digest.hex()
        if hexdigest != row[-1]:
            message = f"entry {seq} does not match its hash: it was edited, inserted or moved"
            return previous, next_seq, Problem(seq, "altered", message)
        if seq in watched:
            problem = at_watched(seq, hexdigest, previous)
            if problem is not None:
                return previous, next_seq, problem
        previous = digest
        next_seq += 1
    return previous, next_seq, None


def _head_edited(seq: int) -> Problem:
    return Problem(
        seq, "head", f"the log's head names entry {seq} with a hash that entry does not have: it was edited"
    )


def _head_problem(head: tuple[int, str], last_seq: int) -> Problem | None:
    """What is wrong with a head that ``_at_watched`` could not check against an entry, if anything:
    one naming an entry beyond the log's last, or an empty log's head not at the genesis."""
    seq, entry_hash = head
    if seq > last_seq:
        return Problem(
            last_seq + 1,
            "head",
            f"the log's head names entry {seq} but the log ends at entry {last_seq}: "
            "entries were removed or the head was edited",
        )
    if seq == 0 and entry_hash != GENESIS.hex():
        return _head_edited(0)
    return None


def _out_of_order(next_seq: int, seq: int) -> Problem:
    if seq > next_seq:
        return Problem(next_seq, "missing", f"entry {next_seq} is missing (the next stored is {seq})")
    return Problem(seq, "duplicate", f"entry {seq} appears again after entry {next_seq - 1}")


class SpanMismatch(RuntimeError):
    """Spans checked apart do not join up: the log changed while they were read."""


@dataclass(slots=True)
class Span:
    """What one worker found in entries ``lo + 1`` onwards, checked apart from the rest of the log.

    ``seed`` is the *stored* hash of entry ``lo`` the worker started from (``None`` if entry
    ``lo`` is not stored); the span before must end on it. ``hashes`` maps each watched entry
    the worker verified to its hash and the hash before it, for ``Verifier.absorb`` to check
    against checkpoints. ``last_seq``/``last_hash`` are the last entry verified, ``problem`` the
    first bad entry within the span (a gap at its end included), ``ended`` that the log ends in it.
    """

    lo: int
    seed: str | None
    last_seq: int
    last_hash: str
    hashes: dict[int, tuple[str, str]] = field(default_factory=dict)
    problem: Problem | None = None
    ended: bool = False

    def to_json(self) -> dict[str, Any]:
        problem = self.problem
        return {
            "lo": self.lo,
            "seed": self.seed,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "hashes": [[seq, *pair] for seq, pair in self.hashes.items()],
            "problem": None if problem is None else [problem.seq, problem.code, problem.message],
            "ended": self.ended,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Span:
        problem = data["problem"]
        return cls(
            data["lo"],
            data["seed"],
            data["last_seq"],
            data["last_hash"],
            {seq: (digest, before) for seq, digest, before in data["hashes"]},
            None if problem is None else Problem(*problem),
            data["ended"],
        )


class SpanChecker:
    """Checks the entries after ``lo`` (fed in ``seq`` order) starting from ``seed``, the stored hash
    of entry ``lo``: every link inside the span, nothing about checkpoints (``Verifier.absorb``
    does those, in the parent)."""

    def __init__(self, lo: int, seed: str, watched: Container[int]) -> None:
        self.span = Span(lo, seed, lo, seed)
        self.watched = watched
        self._previous = bytes.fromhex(seed)
        self._next_seq = lo + 1

    def feed_rows(self, rows: Iterable[Sequence[Any]]) -> bool:
        span = self.span
        if span.problem is not None:
            return False
        self._previous, self._next_seq, span.problem = _walk(
            rows, self._previous, self._next_seq, self.watched, self._note
        )
        span.last_seq = self._next_seq - 1
        span.last_hash = self._previous.hex()
        return span.problem is None

    def _note(self, seq: int, hexdigest: str, previous: bytes) -> None:
        self.span.hashes[seq] = (hexdigest, previous.hex())

    def finish(self, hi: int | None, next_stored: int | None) -> Span:
        """The span read up to ``hi`` (``None``: to the end of the log); ``next_stored`` is the first
        entry stored after ``hi``, if any: entries missing at the end of the span are a gap before
        it, and with nothing after them the log ends here."""
        span = self.span
        if span.problem is None:
            if hi is not None and span.last_seq < hi and next_stored is not None:
                span.problem = _out_of_order(span.last_seq + 1, next_stored)
            else:
                span.ended = hi is None or span.last_seq < hi
        return span


def plan_spans(last_seq: int, count: int) -> list[tuple[int, int | None]]:
    """Entries 1..``last_seq`` cut into ``count`` contiguous spans ``(lo, hi]``; the last is open-ended
    (it also reads whatever was appended since ``last_seq`` was read)."""
    count = max(1, min(count, last_seq))
    cuts = [last_seq * k // count for k in range(count + 1)]
    return [(cuts[k], cuts[k + 1] if k + 1 < count else None) for k in range(count)]


def join_spans(verifier: Verifier, spans: Sequence[Span]) -> Verification:
    """The findings of consecutive spans (in ``seq`` order, together covering the log) joined into the
    result one pass would give; raises ``SpanMismatch`` if they do not fit (the log changed meanwhile)."""
    for i, span in enumerate(spans):
        if not verifier.absorb(span):
            break
        if span.ended:
            # The log ends in this span: a later span holding entries means it changed meanwhile.
            if any(later.seed is not None for later in spans[i + 1 :]):
                raise SpanMismatch(f"entries after entry {span.last_seq} appeared while verifying")
            break
    return verifier.finish()


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
