"""The log's Ed25519 signing key: generated once in the data dir (embedded default) or read from a file.

In production (any store but the embedded SQLite) the key must come from a file
(``CONCORD_AUDIT_SIGNING_KEY_FILE``) so that every gateway process signs with
the same key and the key is backed up with the deployment's secrets, not left
in a container's scratch space. docs/audit-log.md describes rotation.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.settings import Settings

DEFAULT_NAME = "audit-signing.key"


class SigningKeyError(RuntimeError):
    """The signing key is missing, unreadable or not Ed25519."""


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    if settings.audit_signing_key_file is not None:
        return read_private_key(settings.audit_signing_key_file)
    if not settings.is_sqlite():
        raise SigningKeyError(
            "CONCORD_AUDIT_SIGNING_KEY_FILE must name the log's Ed25519 key outside the embedded default "
            "(create one with `concord audit new-key --out FILE`)"
        )
    path = settings.data_dir / DEFAULT_NAME
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            write_private_key(path, Ed25519PrivateKey.generate())
    return read_private_key(path)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot read the log signing key at {path}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return key


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a PEM (PKCS#8) private key readable by its owner only; refuses to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
