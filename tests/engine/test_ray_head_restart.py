"""The head SIGKILLed with two jobs running on a Ray cluster, restarted against the same cluster:
both jobs finish, and no unit finished before the kill runs again (issue 16, point 3).

The cluster (a head node without CPUs, one worker node of two) lives in the test process, which
never joins it as a driver: the head is a subprocess that drives it, as `assetbox serve` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.engine.store import JobStore

ray = pytest.importorskip("ray")

UNIT_SECONDS = 0.4
UNITS = {"a": 12, "b": 10}  # different requests: two jobs, not one result shared

HEAD = """
import json
import sys
from pathlib import Path

import assetbox.engine.engine as engine_module
from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS

written = []  # every file this head writes through the engine, in order
real_write = engine_module.write_atomically


def recording(path, data):
    written.append(str(path))
    real_write(path, data)


engine_module.write_atomically = recording

data_dir, address, spec = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
settings = Settings(data_dir=data_dir, executor="ray", ray_address=address, workers=2)
engine = Engine(planners=PLANNERS, settings=settings)
if spec["mode"] == "submit":
    ids = [
        engine.submit(
            "simulate",
            {"units": units, "unit_seconds": spec["unit_seconds"]},
            idempotency_key=f"restart-{name}",
        ).id
        for name, units in spec["units"].items()
    ]
else:
    ids = spec["ids"]
print(json.dumps({"ids": ids}), flush=True)
jobs = [engine.wait(job_id, timeout=120) for job_id in ids]
print(json.dumps({"statuses": [j.status.value for j in jobs], "written": written}), flush=True)
engine.close()
"""


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    """A Ray cluster that outlives the head processes: the test process starts it, never
    connects to it (ray.init), and removes its nodes at the end.

    Its files go to a Ray temp folder of its own (short: Ray's socket paths are limited), so
    that its address file (`<temp>/ray/ray_current_cluster`) never leads a `ray.init()` without
    an address elsewhere on this machine (another test, another session) to this cluster.
    """
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="assetbox-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(temp))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=2)
        yield cluster
    finally:
        # Not cluster.shutdown(): it also resets this process's Ray KV client, which would break
        # a Ray instance another test of this process started (test_ray_executor.py).
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)
        if cluster.head_node is not None:
            cluster.remove_node(cluster.head_node)
        shutil.rmtree(temp, ignore_errors=True)


def expected_output(units: int) -> bytes:
    return b"".join(hashlib.sha256(f"unit {i}".encode()).digest() for i in range(units))


def start_head(script: Path, data: Path, address: str, spec: dict, log: Path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, str(script), str(data), address, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            start_new_session=True,  # its own process group, killed whole
        )


def test_a_killed_head_restarts_on_the_same_cluster_without_redoing_units(
    cluster, tmp_path: Path
) -> None:
    script = tmp_path / "head.py"
    script.write_text(HEAD)
    data = tmp_path / "data"
    log = tmp_path / "head.log"
    spec = {"mode": "submit", "units": UNITS, "unit_seconds": UNIT_SECONDS}
    head = start_head(script, data, cluster.address, spec, log)
    try:
        line = head.stdout.readline()
        assert line, f"the head ended early:\n{log.read_text()[-3000:]}"
        ids = json.loads(line)["ids"]
        store = JobStore(data / "jobs.sqlite3")
        deadline = time.monotonic() + 60
        while not all(
            sum(u.status == UnitStatus.DONE for u in store.units(job_id)) >= 3 for job_id in ids
        ):
            assert time.monotonic() < deadline, f"no units done:\n{log.read_text()[-3000:]}"
            assert head.poll() is None, f"the head ended early:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()

    # What the kill left: some units done (their results on disk), the jobs running.
    before: dict[str, dict[int, bytes]] = {}
    for job_id, units in zip(ids, UNITS.values(), strict=True):
        assert store.get(job_id).status == JobStatus.RUNNING
        done = [u for u in store.units(job_id) if u.status == UnitStatus.DONE]
        assert 3 <= len(done) < units
        before[job_id] = {u.index: (data / u.result_path).read_bytes() for u in done}

    spec = {"mode": "resume", "ids": ids}
    head = start_head(script, data, cluster.address, spec, log)
    try:
        out, _ = head.communicate(timeout=120)
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    lines = out.splitlines()
    assert head.returncode == 0 and len(lines) == 2, f"{out}\n{log.read_text()[-3000:]}"
    assert json.loads(lines[0])["ids"] == ids
    result = json.loads(lines[1])
    assert result["statuses"] == ["succeeded", "succeeded"], log.read_text()[-3000:]

    rewritten = set(result["written"])
    for job_id, units in zip(ids, UNITS.values(), strict=True):
        job = store.get(job_id)
        rows = store.units(job_id)
        assert all(u.status == UnitStatus.DONE for u in rows)
        # Finished before the kill: never sent again, and their results never rewritten.
        assert all(rows[i].attempts == 1 for i in before[job_id])
        assert not any(f"/{job_id}/units/{i}.bin" in p for i in before[job_id] for p in rewritten)
        assert job.progress.resumed == len(before[job_id])
        # Every unit finished exactly once over both heads.
        finished = [
            e.data["index"]
            for e in store.events(job_id)
            if e.type == "unit" and e.data.get("status") == UnitStatus.DONE.value
        ]
        assert sorted(finished) == list(range(units))
        output = (data / job.outputs[0].path).read_bytes()
        assert output == expected_output(units)
        for i, kept in before[job_id].items():  # the kept results are the ones assembled
            assert output[32 * i : 32 * (i + 1)] == kept
    store.close()
