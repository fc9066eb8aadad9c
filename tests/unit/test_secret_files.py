"""Secrets read from files (CONCORD_ID_KEY_FILE, CONCORD_TOKEN_SECRET_FILE), as compose mounts them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.settings import Settings

PG = "postgresql://concord@db/concord"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_id_key_file_gives_the_same_key_as_the_variable(tmp_path: Path) -> None:
    key = "a1b2c3d4" * 8
    from_file = Settings(data_dir=tmp_path, id_key_file=write(tmp_path / "id_key", key + "\n"))
    assert from_file.resolved_id_key() == Settings(data_dir=tmp_path, id_key=key).resolved_id_key()
    assert not (tmp_path / "id.key").exists()  # nothing generated beside it


def test_token_secret_file_is_enough_outside_the_embedded_default(tmp_path: Path) -> None:
    path = write(tmp_path / "token_secret", "  s3cret-token-value \n")
    settings = Settings(data_dir=tmp_path, database_url=PG, token_secret_file=path)
    assert settings.resolved_token_secret() == b"s3cret-token-value"


def test_token_secret_is_required_outside_the_embedded_default(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CONCORD_TOKEN_SECRET_FILE"):
        Settings(data_dir=tmp_path, database_url=PG).resolved_token_secret()


def test_files_are_read_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORD_ID_KEY_FILE", str(write(tmp_path / "id", "from-a-file")))
    monkeypatch.setenv("CONCORD_TOKEN_SECRET_FILE", str(write(tmp_path / "tok", "token-from-a-file")))
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_id_key() == b"from-a-file"
    assert settings.resolved_token_secret() == b"token-from-a-file"


@pytest.mark.parametrize(
    ("field", "resolve", "name"),
    [
        ("id_key", Settings.resolved_id_key, "CONCORD_ID_KEY"),
        ("token_secret", Settings.resolved_token_secret, "CONCORD_TOKEN_SECRET"),
    ],
)
def test_a_secret_set_twice_missing_or_empty_is_refused_without_its_value(
    tmp_path: Path, field: str, resolve: Callable[[Settings], bytes], name: str
) -> None:
    path = write(tmp_path / "secret", "value-in-the-file")
    both = Settings(data_dir=tmp_path, **{field: "value-in-the-env", f"{field}_file": path})
    with pytest.raises(ValueError, match=f"set {name} or {name}_FILE, not both") as raised:
        resolve(both)
    assert "value-in" not in str(raised.value)
    missing = Settings(data_dir=tmp_path, **{f"{field}_file": tmp_path / "absent"})
    with pytest.raises(ValueError, match=f"cannot read {name}_FILE"):
        resolve(missing)
    empty = Settings(data_dir=tmp_path, **{f"{field}_file": write(tmp_path / "empty", "\n")})
    with pytest.raises(ValueError, match=f"{name}_FILE .* is empty"):
        resolve(empty)
