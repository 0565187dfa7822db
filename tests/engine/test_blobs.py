"""Inputs of refused submits do not pile up: unreferenced, old blobs go at start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from assetbox.config import Settings
from assetbox.engine.blobs import blob_path, collect_blobs, put_blob
from assetbox.engine.engine import BLOB_GRACE_S, Engine
from assetbox.kinds import PLANNERS


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_old_unreferenced_blobs_go_and_the_rest_stays(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    used = put_blob(data_dir, b"an input a job refers to")
    orphan = put_blob(data_dir, b"the input of a refused submit")
    young = put_blob(data_dir, b"a submit in progress")
    for ref in (used, orphan):
        age(blob_path(data_dir, ref), BLOB_GRACE_S + 60)
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir), start=False)
    engine.store.create_job("simulate", {"units": 1, "note": used}, "h1", None, None)
    engine.store.close()
    Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir)).close()  # collects at start
    assert blob_path(data_dir, used).is_file() and blob_path(data_dir, young).is_file()
    assert not (data_dir / "blobs" / orphan.split(":")[1]).exists()


def test_storing_an_existing_blob_makes_it_young_again(tmp_path: Path) -> None:
    ref = put_blob(tmp_path, b"x")
    age(blob_path(tmp_path, ref), BLOB_GRACE_S + 60)
    put_blob(tmp_path, b"x")  # a new submit of the same bytes
    assert collect_blobs(tmp_path, [], older_than_s=BLOB_GRACE_S) == 0
    assert blob_path(tmp_path, ref).is_file()
