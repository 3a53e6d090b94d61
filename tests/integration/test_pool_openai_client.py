"""A pool of simulated vLLM replicas (separate processes) behind the real server, driven by the official
``openai`` client: requests spread over the replicas, a conversation stays on one, the admin API drains a
replica (with the admin key only), ``/metrics`` and ``/ready`` show the pool, and a replica killed with
SIGKILL costs no request that had not started on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from unimodel.compose import build_engine
from unimodel.config import Settings
from tests.support.live_server import LiveServer

pytestmark = pytest.mark.timeout(120)

SIM = Path(__file__).resolve().parents[1] / "support" / "sim_vllm.py"
ADMIN, USER = "admin-secret-key-0123456789", "sk-pool-user"


class Replica:
    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, str(SIM), "--port", "0", "--decode-ms", "2"], cwd=root,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONPATH": str(root)})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while "ready" not in line:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the simulated replica did not start")
            line = self.proc.stdout.readline()
        self.url = line.split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture()
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(2):
            started.append(Replica())
        yield started
    finally:
        for replica in started:
            replica.stop()


def wait_for(check, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_pool_behind_the_server(replicas: list[Replica]) -> None:
    settings = Settings(engine="upstream", upstream=[r.url for r in replicas], model="sim-model",
                        api_keys=[USER], admin_key=ADMIN, pool_scrape_interval_s=0.2, upstream_connect_timeout_s=1.0)
    with LiveServer(settings, build_engine(settings)) as server, \
            openai.OpenAI(base_url=server.base_url, api_key=USER, max_retries=0, timeout=30) as client, \
            httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN}"}) as admin, \
            httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=10,
                         headers={"Authorization": f"Bearer {USER}"}) as user:
        for i in range(12):
            out = client.chat.completions.create(model="sim-model", max_tokens=4,
                                                 messages=[{"role": "user", "content": f"question {i} " * 20}])
            assert out.choices[0].message.content
        status = admin.get("/admin/pool").json()
        names = list(status["replicas"])
        assert len(names) == 2 and all(r["served"] > 0 for r in status["replicas"].values()), status

        # a streamed conversation stays where its prefix is
        doc = "the whole shared document " * 80
        before = {n: r["served"] for n, r in admin.get("/admin/pool").json()["replicas"].items()}
        history = [{"role": "user", "content": doc}]
        for turn in range(4):
            stream = client.chat.completions.create(model="sim-model", max_tokens=4, messages=history, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            history += [{"role": "assistant", "content": text}, {"role": "user", "content": f"and {turn}?"}]
        after = admin.get("/admin/pool").json()["replicas"]
        assert sorted(after[n]["served"] - before[n] for n in names) == [0, 4]

        # the metrics and /ready show the pool
        metrics = admin.get("/metrics").text
        assert "unimodel_pool_saturation " in metrics and 'unimodel_pool_replica_up{replica="' in metrics
        assert set(admin.get("/ready").json()["pool"]["replicas"]) == set(names)

        # draining takes the admin key, names a replica, and sends nothing new there
        refused = user.post(f"/admin/pool/replicas/{names[0]}/drain")
        assert refused.status_code == 401 and refused.json()["error"]["type"]
        missing = admin.post("/admin/pool/replicas/nobody:1/drain")
        assert missing.status_code == 404 and "nobody:1" in missing.json()["error"]["message"]
        drained = admin.post(f"/admin/pool/replicas/{names[0]}/drain")
        assert drained.status_code == 200 and drained.json()["state"] == "draining"
        before = admin.get("/admin/pool").json()["replicas"]
        for i in range(6):
            client.chat.completions.create(model="sim-model", max_tokens=2,
                                           messages=[{"role": "user", "content": f"drained {i}"}])
        after = admin.get("/admin/pool").json()["replicas"]
        assert after[names[0]]["served"] == before[names[0]]["served"]
        assert after[names[1]]["served"] == before[names[1]]["served"] + 6
        assert admin.post(f"/admin/pool/replicas/{names[0]}/undrain").json()["state"] == "active"

        # one replica killed: every request still answered (a try that meets the dead one goes on to the other)
        replicas[1].stop()
        for i in range(8):
            out = client.chat.completions.create(model="sim-model", max_tokens=2,
                                                 messages=[{"role": "user", "content": f"after the crash {i}"}])
            assert out.choices[0].message.content
        dead = next(n for n, r in after.items() if r["url"] == replicas[1].url)
        wait_for(lambda: admin.get("/admin/pool").json()["replicas"][dead]["metrics"] == "stale")
        assert 'unimodel_pool_replica_saturation{replica="%s"} 1.0' % dead in admin.get("/metrics").text
