"""Ray's autoscaler grows the workers from zero for a queue of units and removes them when idle
(issue 16, point 3).

The cluster is Ray's own fake multi-node autoscaling setup (the `fake_multinode` node provider
that `ray.cluster_utils.AutoscalingCluster` drives): a head without CPUs whose autoscaler
starts worker nodes of one CPU as processes on this machine, at most two, and removes them after
`IDLE_TIMEOUT_MINUTES` idle. `AutoscalingCluster` itself is not used: its `start` and `shutdown`
run `ray stop --force`, which kills every Ray on the machine (other tests' clusters included),
and the config it reads (`fake_multi_node/example.yaml`) is not in Ray's wheel. Here the head is
a `Cluster` node given the autoscaling config; what it starts dies with it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus
from assetbox.kinds import PLANNERS

ray = pytest.importorskip("ray")

MAX_NODES = 2
IDLE_TIMEOUT_MINUTES = 0.05  # 3 s; the autoscaler compares in seconds, a fraction is fine
EXECUTOR_IDLE_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(gcs_address: str) -> dict:
    """An autoscaling config for the fake multi-node provider (the fields of Ray's example)."""
    return {
        "cluster_name": "assetbox-autoscale-test",
        "max_workers": MAX_NODES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # its default, port 6379, may be another cluster's
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu.node": {
                "resources": {"CPU": 1, "object_store_memory": 100 * 2**20},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_NODES,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def worker_nodes() -> list[dict]:
    """Alive nodes with CPUs: the autoscaler's (the head has none)."""
    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def _kill_leftovers(session_dir: str) -> None:
    """Kill processes of this cluster's session that outlived it (a worker node whose autoscaler
    died first); only processes whose command line names this session's directory."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(session_dir in part for part in proc.info["cmdline"] or ()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a fake autoscaling cluster that this test process is connected to."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this test process (another file's instance)")
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("autoscale")
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config = tmp / "autoscaling.json"
    config.write_text(json.dumps(_config(address)))
    with pytest.MonkeyPatch.context() as mp:
        # What the autoscaler and the worker nodes it starts inherit (AutoscalingCluster's env).
        mp.setenv("RAY_FAKE_CLUSTER", "1")
        mp.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
        mp.setenv("ASSETBOX_WORKER_DIR", str(tmp / "worker"))
        # Not /tmp/ray/ray_current_cluster: `address="auto"` elsewhere must not find this one.
        mp.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "gcs_server_port": port,
                "autoscaling_config": str(config),
                "include_dashboard": False,
                "object_store_memory": 100 * 2**20,
            },
        )
    session_dir = cluster.head_node.get_session_dir_path()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster.address
    finally:
        try:
            if ray.is_initialized():
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])
                deadline = time.monotonic() + 30
                while worker_nodes() and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            ray.shutdown()
            cluster.shutdown()
            _kill_leftovers(session_dir)


def test_a_queue_scales_workers_up_from_zero_and_down_when_idle(
    autoscaling_cluster: str, tmp_path: Path
) -> None:
    from assetbox.engine.ray_executor import RayExecutor

    executor = RayExecutor(
        workers=1,
        address=autoscaling_cluster,
        autoscale=True,
        idle_s=EXECUTOR_IDLE_S,
        poll_s=0.2,
    )
    engine = Engine(
        planners=PLANNERS,
        settings=Settings(data_dir=tmp_path / "data", executor="ray"),
        executor=executor,
    )
    asked: list[int] = []  # what the executor asked of the autoscaler, in order
    request = executor._request

    def spy(workers: int, per=None) -> None:
        asked.append(workers)
        request(workers, per)

    executor._request = spy
    try:
        assert executor.workers == 0
        assert worker_nodes() == []

        started: set[str] = set()  # worker nodes seen while the job ran
        peak = {"workers": 0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                started.update(n["NodeID"] for n in worker_nodes())
                peak["workers"] = max(peak["workers"], executor.workers)
                stop.wait(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            job = engine.submit("simulate", {"units": 6, "unit_seconds": 1.0})
            done = engine.wait(job.id, timeout=120)
        finally:
            stop.set()
            watcher.join()
        assert done.status == JobStatus.SUCCEEDED, done.error
        # The head has no CPUs: every unit ran on a node the autoscaler started for the queue.
        assert len(engine.output_path(done, 0).read_bytes()) == 6 * 32
        # The units ran on nodes the autoscaler started for them.
        assert set(executor.units_by_node) and set(executor.units_by_node) <= started
        assert peak["workers"] >= 1

        # Idle: the executor stops its actors and withdraws its request, then the autoscaler
        # removes the nodes it no longer needs.
        deadline = time.monotonic() + 60
        while (executor.workers or worker_nodes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert executor.workers == 0
        assert worker_nodes() == []
        assert not started & {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # they went
        # It asked request_resources for workers while units waited (up to the job's 6 units,
        # fewer as they finished) and let the request go once idle.
        assert asked and 1 <= max(asked) <= 6 and asked[-1] == 0
    finally:
        engine.close()
