"""What each suite needs of the endpoint, checked with one small request per such suite before the run.

A suite declares its needs (``Suite.needs``): ``vision`` a model that takes images, ``tools`` one that takes
tool definitions, ``json`` an endpoint that takes ``response_format`` with a JSON schema. Without them every
request of the suite is refused (a text-only model answers a 400 to an image), so a run would spend its time
producing a column of errors. Before the run, :func:`preflight` sends each suite that needs something its
own first task, exactly as the run will send it (the same image, tools or schema) but with ``max_tokens`` 1
and no reasoning effort, and keeps what the endpoint said.

A refusal (400, 413, 415, 422, 501: the endpoint read the request and does not take it) says the model
cannot run the suite; any other failure (unreachable, 401/403/404, 429 or 5xx after the runner's retries, a
timeout, an error frame) says the check could not be made. Both stop the run up front, with one line
(:meth:`Check.line`); with ``--skip-unsupported`` a refused suite is left out instead, and the report says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from unimodel.evals.runner import DEFAULT_EFFORT, EvalConfig, open_client, request_body, send
from unimodel.evals.tasks.base import Suite

# a need's name -> what the suite needs, as the report and the error line say it
NEEDS = {
    "images": "a model that takes images",
    "tools": "a model that takes tool definitions (tools)",
    "json_schema": "an endpoint that takes response_format json_schema",
}
# a need's name -> what to do about a refusal, where there is one thing to say (left out when the endpoint's own
# answer already names the model it suggests)
HINTS = {"images": ("tiny-random-vision", "on the embedded engine use --model tiny-random-vision")}
REFUSALS = frozenset({400, 413, 415, 422, 501})  # the endpoint understood the request and will not serve it
PREFLIGHT_TIMEOUT_S = 120.0  # one token: a check that takes longer says something is wrong anyway


def describe(needs: Sequence[str]) -> str:
    """``("images",)`` -> "a model that takes images"."""
    return " and ".join(NEEDS[n] for n in needs)


@dataclass(frozen=True)
class Check:
    """One suite's preflight request and what came of it."""

    suite: str
    needs: tuple[str, ...]
    model: str
    ok: bool
    refused: bool  # answered with a status in REFUSALS: the model cannot run the suite
    answer: str  # "accepted", or the failure: "400: the model … does not accept images", "ConnectError: …"

    def line(self, others: int = 0) -> str:
        """The one line that says why the suite cannot run (``others``: how many suites would still run)."""
        if self.ok:
            return f"the {self.suite} suite: {self.model} takes what it needs"
        if not self.refused:
            return (f"could not check that {self.model} can run the {self.suite} suite, which needs "
                    f"{describe(self.needs)}: {self.answer}")
        hints = [HINTS[n][1] for n in self.needs if n in HINTS and HINTS[n][0] not in self.answer]
        if others:
            hints.append(f"or leave {self.suite} out of --suite, or pass --skip-unsupported to run the others")
        return "; ".join([f"the {self.suite} suite needs {describe(self.needs)}",
                          f"{self.model} answered {self.answer}", *hints])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe_body(suite: Suite, config: EvalConfig) -> dict[str, Any]:
    """The suite's first task as the run sends it, with max_tokens 1 and the endpoint's default effort."""
    task = suite.generate(1, 0)[0]
    return {**request_body(task, DEFAULT_EFFORT, config), "max_tokens": 1}


async def preflight(suites: dict[str, Suite], config: EvalConfig,
                    transport: Optional[httpx.AsyncBaseTransport] = None) -> list[Check]:
    """One request for every suite that needs something (none for the others), in the suites' order."""
    needy = [s for s in suites.values() if s.needs]
    if not needy:
        return []
    short = dataclasses.replace(config, timeout_s=min(config.timeout_s, PREFLIGHT_TIMEOUT_S))
    async with open_client(short, transport) as client:
        measured = await asyncio.gather(*(send(client, short, probe_body(s, short)) for s in needy))
    checks = []
    for suite, m in zip(needy, measured):
        answer = "accepted" if m.error is None else (m.error.removeprefix("HTTP ") if m.status else m.error)
        checks.append(Check(suite=suite.name, needs=suite.needs, model=config.model, ok=m.error is None,
                            refused=m.status in REFUSALS, answer=answer))
    return checks
