"""A Ray cluster of several nodes on this machine whose workers share no disk with the head.

Each worker node has its own empty directories (ASSETBOX_WORKER_DIR, ASSETBOX_DATA_DIR) and its
worker processes cannot open anything under the head's data directory: a `sitecustomize` put on
their PYTHONPATH installs an audit hook that refuses every open, listing, rename or removal
there (the tests run as root here, so file permissions could not keep them out).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus, UnitStatus
from assetbox.kinds import PLANNERS

ray = pytest.importorskip("ray")

GUARD = """
import os, sys
_root = os.environ.get("ASSETBOX_TEST_FORBIDDEN_DIR")
if _root:
    _root = os.path.realpath(_root)
    _events = {"open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.mkdir",
               "os.rmdir", "os.symlink", "shutil.copyfile", "shutil.rmtree"}
    _inside = [False]

    def _guard(event, args):
        if event not in _events or _inside[0] or not args:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        _inside[0] = True
        try:
            real = os.path.realpath(os.fsdecode(os.fspath(path)))
        finally:
            _inside[0] = False
        if real == _root or real.startswith(_root + os.sep):
            raise PermissionError(f"{event} of {real}: the head's data directory")

    sys.addaudithook(_guard)
"""


class Fleet:
    def __init__(self, root: Path) -> None:
        from ray.cluster_utils import Cluster

        self.root = root
        self.head_dir = root / "head"  # the head's data directory
        self.head_dir.mkdir()
        guard = root / "guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(GUARD)
        self.guard = guard
        self.cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
        self.nodes: dict[str, Path] = {}  # node id -> its own directory
        # The head's settings, which the workers take, but for where they keep their files.
        self.settings = Settings(data_dir=self.head_dir, executor="ray", unit_max_attempts=3)

    def add_node(self, name: str, cpus: int = 1):
        own = self.root / name
        env = {
            "ASSETBOX_WORKER_DIR": str(own / "worker"),
            "ASSETBOX_DATA_DIR": str(own / "data"),
            "ASSETBOX_TEST_FORBIDDEN_DIR": str(self.head_dir),
            "PYTHONPATH": os.pathsep.join([str(self.guard), *sys.path[1:]]),
        }
        node = self.cluster.add_node(num_cpus=cpus, env_vars=env)
        self.nodes[node.node_id] = own
        return node

    def executor(self, **options):
        from assetbox.engine.ray_executor import RayExecutor

        return RayExecutor(
            address=self.cluster.address, poll_s=0.2, settings=self.settings, **options
        )

    def engine(self, executor) -> Engine:
        return Engine(settings=self.settings, planners=PLANNERS, executor=executor)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if ray.is_initialized():  # another file's Ray in this test process
        ray.shutdown()
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        fleet.add_node("node-a")
        fleet.add_node("node-b")
        fleet.cluster.wait_for_nodes()
        yield fleet
    finally:
        ray.shutdown()
        fleet.cluster.shutdown()


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_worker_processes_cannot_open_the_heads_data_directory(fleet: Fleet) -> None:
    (fleet.head_dir / "probe").write_text("the head's")

    @ray.remote(num_cpus=1)
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except PermissionError as exc:
            return f"refused: {exc}"

    answer = ray.get(read.remote(str(fleet.head_dir / "probe")), timeout=60)
    assert answer.startswith("refused:"), answer  # the guard is live on the worker nodes
    (fleet.head_dir / "probe").unlink()


def _run_both(engine: Engine, image: bytes) -> list[bytes]:
    blob = engine.put_blob(image)
    upscale = engine.submit(
        "upscale",
        {"image": blob, "model": "realesr-animevideov3-x2", "tile": 32, "engine": "torch"},
    )
    generate = engine.submit(
        "generate",
        {
            "model": "tiny-sd15",
            "prompts": ["a red fox", "a lighthouse"],
            "width": 64,
            "height": 64,
            "steps": 3,
            "seed": 11,
            "loras": [{"name": "sd15-a", "weight": 0.7}],
        },
    )
    outputs = []
    for job in (upscale, generate):
        done = engine.wait(job.id, timeout=300)
        assert done.status == JobStatus.SUCCEEDED, done.error
        outputs += [engine.output_path(done, i).read_bytes() for i in range(len(done.outputs))]
    return outputs


def test_gan_upscale_and_generate_give_the_local_executors_bytes(
    fleet: Fleet, builtin_store, tmp_path: Path
) -> None:
    import numpy as np

    from assetbox.imaging import encode_image
    from assetbox.models.importer import import_model
    from assetbox.models.store import ModelStore
    from assetbox.testing.tiny_models import write
    from tests.utils.images import photo

    tiny = tmp_path / "tiny"
    write("sd15", tiny, loras=("sd15-a",))
    local_dir = tmp_path / "local"
    for data_dir in (fleet.head_dir, local_dir):
        shutil.copytree(builtin_store.root, data_dir / "models")
        store = ModelStore(data_dir / "models")
        import_model(store, tiny / "tiny-sd15")
        import_model(store, tiny / "sd15-a.safetensors")
    image = encode_image(np.ascontiguousarray(photo("chelsea")[:48, :64]))

    # One torch thread, as a Ray actor of one CPU has (OMP_NUM_THREADS=1): a float sum split
    # over other thread counts rounds differently.
    settings = Settings(data_dir=local_dir, executor="local", workers=1, worker_threads=1)
    local = Engine(settings=settings, planners=PLANNERS)
    try:
        expected = _run_both(local, image)
    finally:
        local.close()

    executor = fleet.executor()
    engine = fleet.engine(executor)
    try:
        assert executor.workers == 2  # one per node: the head has no CPUs for workers
        assert _run_both(engine, image) == expected
        assert set(executor.units_by_node) == set(fleet.nodes)  # both nodes ran units
    finally:
        engine.close()
    blobs, shipped = set(), set()
    for own in fleet.nodes.values():
        assert not (own / "data").exists()  # nothing looked for a data directory there
        blobs |= {p.name for p in (own / "worker" / "blobs").iterdir()}
        shipped |= {p.parent.name for p in (own / "worker" / "models").glob("*s/*/*")}
    assert hashlib.sha256(image).hexdigest() in blobs  # the input came in a parcel
    assert shipped == {"realesr-animevideov3-x2", "tiny-sd15", "sd15-a"}


def _expected(units: int) -> bytes:
    return b"".join(hashlib.sha256(f"unit {i}".encode()).digest() for i in range(units))


def test_a_node_that_leaves_has_its_units_run_elsewhere_and_one_that_joins_gets_units(
    fleet: Fleet,
) -> None:
    leaving = fleet.add_node("node-leaving")
    executor = fleet.executor()
    engine = fleet.engine(executor)
    try:
        wait_until(lambda: executor.workers == 3, what="an actor on the third node")
        # Units from the 12th on wait for `go`: the job is still mid-way whenever the new node
        # comes up (ten seconds under load), however fast the rest ran.
        go = fleet.root / "go"
        request = {"units": 40, "unit_seconds": 0.3, "wait_for_file": str(go), "wait_from": 12}
        job = engine.submit("simulate", request)
        wait_until(lambda: executor.units_by_node[leaving.node_id] >= 2, what="units on it")
        fleet.cluster.remove_node(leaving)
        joining = fleet.add_node("node-joining")
        wait_until(
            lambda: executor.units_by_node[joining.node_id] > 0, 120, "a unit on the new node"
        )
        assert engine.get(job.id).status == JobStatus.RUNNING
        go.touch()
        done = engine.wait(job.id, timeout=180)
        assert done.status == JobStatus.SUCCEEDED, done.error
        units = engine.store.units(job.id)
        assert all(u.status == UnitStatus.DONE for u in units)
        assert any(u.attempts == 2 for u in units)  # what ran on the lost node ran again
        # Every unit's result is in the output exactly once, in order.
        assert engine.output_path(done, 0).read_bytes() == _expected(40)
        assert executor.units_by_node[joining.node_id] > 0  # the new node got work at once
        # What an operator sees of it in /metrics.
        from assetbox.server.metrics import Metrics

        text = Metrics().render(engine).decode()
        assert f'assetbox_units_started_total{{node="{joining.node_id}"}}' in text
        lost = next(line for line in text.splitlines() if line.startswith("assetbox_workers_lost"))
        assert float(lost.split()[-1]) >= 1
        assert "assetbox_workers 3.0" in text  # two nodes from the start and the new one
    finally:
        engine.close()
