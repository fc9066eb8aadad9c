"""A gateway worker process for the cross-process consent tests: JSON commands on stdin, answers on stdout.

Settings come from CONCORD_* in the environment, as in a real gateway process.
Commands: {"op": "decide", "nhs": N, "purpose": P}, {"op": "opt-out", "nhs": N},
{"op": "withdraw", "nhs": N}, {"op": "store-reads"}.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from consent.model import Authority, OptOutKind, Requester, RequesterKind
from gateway.bootstrap import bootstrap
from gateway.decisions import StoreDecider
from gateway.settings import Settings

PROVIDER = Requester(RequesterKind.PROVIDER, "RY4", "community-epr")


async def main() -> None:
    services = await bootstrap(Settings())
    decider = services.decider
    reads = 0
    if isinstance(decider, StoreDecider):
        plain = decider.facts

        async def counted(nhs_number: str):  # type: ignore[no-untyped-def]
            nonlocal reads
            reads += 1
            return await plain(nhs_number)

        decider.facts = counted  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = orjson.loads(line)
            op = command["op"]
            if op == "decide":
                d = await decider.decide(command["nhs"], command.get("purpose", "direct-care"), PROVIDER)
                answer = {"verdict": d.verdict.value, "reason": d.reason.value}
            elif op == "opt-out":
                change = await services.register.opt_out(
                    command["nhs"], OptOutKind.LOCAL, Authority.LETTER, PROVIDER, "worker"
                )
                answer = {"changed": change.changed}
            elif op == "withdraw":
                changes = await services.register.withdraw(
                    command["nhs"], None, Authority.LETTER, PROVIDER, "worker"
                )
                answer = {"withdrawn": len(changes)}
            elif op == "store-reads":
                answer = {"reads": reads}
            else:
                answer = {"error": "unknown op"}
            sys.stdout.write(orjson.dumps(answer).decode() + "\n")
            sys.stdout.flush()
    finally:
        await services.close()


if __name__ == "__main__":
    asyncio.run(main())
