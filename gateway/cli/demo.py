"""``concord demo``: the whole flow on the embedded default, in one command.

synth → ingest all four sources → the FHIR API (a registered provider gets a
token the SMART Backend Services way and reads a shared care view) → the
publisher → the HIE stub; then it prints where to look. With ``--serve`` the
API, the stub and the publisher keep running until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import click
import uvicorn
from aiohttp import web
from sqlalchemy import select

from adapters.registry import adapter_for
from gateway.api.app import create_app
from gateway.api.principal import Role
from gateway.bootstrap import Services, bootstrap
from gateway.cli.clients import generate_key
from gateway.cli.ingest import print_summary
from gateway.cli.synth import FILES
from gateway.hie_stub.server import make_app
from gateway.publish.client import HieClient
from gateway.publish.oauth import client_assertion, key_id_for
from gateway.publish.publisher import Publisher
from gateway.settings import Settings
from gateway.store import clients as registry
from gateway.store.schema import resources
from gateway.synth.defects import DefectPlan
from gateway.synth.population import population
from gateway.synth.writers import WRITERS

DEMO_CLIENT = "demo-provider"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _port(wanted: int) -> int:
    """``wanted`` if it is free, else any free port (a demo should not fail on a busy 8080)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


@click.command()
@click.option("--people", default=2000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", default=8080, show_default=True, help="The API's port (another if busy).")
@click.option("--hie-port", default=8090, show_default=True, help="The HIE stub's port (another if busy).")
@click.option(
    "--serve", is_flag=True, help="Keep the API, the HIE stub and the publisher running until Ctrl-C."
)
def demo(people: int, seed: int, out_dir: Path, port: int, hie_port: int, serve: bool) -> None:
    """Synthesise four extracts, ingest them, serve the API, publish to an HIE stub, show the result.

    Uses CONCORD_DATA_DIR (default ./.concord) for the SQLite store and keys. Safe to run twice:
    the second run ingests and publishes nothing new.
    """
    extracts = out_dir / "extracts"
    extracts.mkdir(parents=True, exist_ok=True)
    plan = DefectPlan(0.02, seed)
    for source, name in FILES.items():
        with (extracts / name).open("w", encoding="utf-8", newline="") as fh:
            WRITERS[source](population(people, seed), fh, random.Random(f"{seed}:{source}"), plan)  # noqa: S311
    api_port, stub_port = _port(port), _port(hie_port)
    base = f"http://127.0.0.1:{api_port}"
    settings = Settings().model_copy(
        update={"public_url": base, "hie_url": f"http://127.0.0.1:{stub_port}/fhir"}
    )
    asyncio.run(_flow(settings, extracts, base, stub_port, serve))


async def _flow(settings: Settings, extracts: Path, base: str, stub_port: int, serve: bool) -> None:
    services = await bootstrap(settings)
    try:
        for source, name in FILES.items():
            with (extracts / name).open("rb") as fh:
                print_summary(await services.ingestor.run(source, adapter_for(source).read(fh), name))
        client_id, key_pem = await _demo_client(services)
        stub = web.AppRunner(make_app())
        await stub.setup()
        await web.TCPSite(stub, "127.0.0.1", stub_port).start()
        app = create_app(settings, services=services)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=int(base.rsplit(":", 1)[1]), log_level="warning")
        )
        api = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.05)
            async with HieClient(settings) as hie:
                publisher = Publisher(services, hie)
                stats = await publisher.run(until_idle=True)
                shown = await _read_as_provider(services, base, client_id, key_pem)
                held = await _stub_state(stub_port)
                _report(base, settings, stats.as_dict(), shown, held, stub_port)
                if serve:
                    await _serve_until_stopped(publisher)
        finally:
            server.should_exit = True
            await api
            await stub.cleanup()
    finally:
        await services.close()


async def _demo_client(services: Services) -> tuple[str, bytes]:
    """The demo's provider organisation: registered once, its private key kept in the data dir."""
    key_file = services.settings.data_dir / f"{DEMO_CLIENT}.key"
    async with services.engine.begin() as conn:
        existing = await registry.by_name(conn, DEMO_CLIENT)
        if existing is None or not key_file.exists():
            if key_file.exists():
                key_file.unlink()
            jwks = generate_key(key_file)
            name = DEMO_CLIENT if existing is None else f"{DEMO_CLIENT}-{registry.new_client_id()[:6]}"
            existing = await registry.add(
                conn,
                name=name,
                ods_code="RY4",
                role=Role.PROVIDER,
                scopes=["system/Patient.read", "system/CarePlan.read"],
                source=None,
                jwks=jwks,
                when=services.log.clock(),
            )
    return existing.client_id, key_file.read_bytes()


async def _read_as_provider(services: Services, base: str, client_id: str, key_pem: bytes) -> dict[str, Any]:
    """What a community EPR does: sign an assertion, get a token, read one person's shared care view."""
    async with services.engine.connect() as conn:
        number = (
            await conn.execute(
                select(resources.c.nhs_number).where(resources.c.resource_type == "Patient").limit(1)
            )
        ).scalar()
    kid = key_id_for(key_pem)
    assertion = client_assertion(client_id, f"{base}/token", key_pem, kid, "ES384")
    async with aiohttp.ClientSession() as http:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": "system/Patient.read system/CarePlan.read",
        }
        async with http.post(f"{base}/token", data=form) as response:
            token = (await response.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(
            f"{base}/fhir/Patient", params={"identifier": f"{NHS}|{number}"}, headers=headers
        ) as r:
            found = await r.json(content_type=None)
        patient_id = found["entry"][0]["resource"]["id"] if found.get("entry") else None
        everything: dict[str, Any] = {}
        if patient_id:
            async with http.get(f"{base}/fhir/Patient/{patient_id}/$everything", headers=headers) as r:
                everything = await r.json(content_type=None)
    types: dict[str, int] = {}
    for entry in everything.get("entry", []):
        rtype = entry["resource"]["resourceType"]
        types[rtype] = types.get(rtype, 0) + 1
    return {"patient_id": patient_id, "types": types}


async def _stub_state(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/_stub/state") as r:
        state: dict[str, Any] = await r.json()
        return state


def _report(
    base: str,
    settings: Settings,
    published: dict[str, int],
    shown: dict[str, Any],
    held: dict[str, Any],
    port: int,
) -> None:
    counts = ", ".join(f"{t} {n}" for t, n in held.get("counts", {}).items()) or "nothing"
    types = ", ".join(f"{t} {n}" for t, n in shown["types"].items()) or "nothing"
    click.echo(
        f"\nPublished to the HIE stub: {published}\n"
        f"The HIE stub holds: {counts}\n"
        f"A provider signed in with SMART Backend Services and read one shared care view: {types}\n"
        "\nWhere to look:\n"
        f"  API base            {base}/fhir   (CapabilityStatement: {base}/fhir/metadata)\n"
        f"  token               TOKEN=$(concord token --client {DEMO_CLIENT})\n"
        f'  a search            curl -H "Authorization: Bearer $TOKEN" '
        f"'{base}/fhir/Patient?identifier={NHS}|<NHS number>'\n"
        f"  HIE stub contents   http://127.0.0.1:{port}/_stub/state\n"
        f"  the audit log       concord audit verify   (every read and publication above is in it)\n"
        f"  opt someone out     concord consent opt-out <NHS number>, then concord publish --until-idle\n"
        f"                      (CONCORD_HIE_URL={settings.hie_url}) retracts them from the HIE\n"
        f"  data quality        concord quality; concord quarantine list\n"
    )


async def _serve_until_stopped(publisher: Publisher) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo("Serving the API, the HIE stub and the publisher; Ctrl-C stops.")
    await publisher.run(stop=stop)
    with contextlib.suppress(Exception):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
