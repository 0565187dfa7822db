"""JSON logs: with them on (`assetbox serve`), stdout carries JSON lines only."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.utils.images import encode_pil, photo


def json_lines(stdout: str) -> list[dict]:
    """Every non-empty line of `stdout` as JSON with a message (fails on any other line)."""
    records = []
    for line in stdout.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON line on stdout: {line!r}")
            assert isinstance(record.get("message"), str), line
            records.append(record)
    return records


def test_warnings_and_library_logs_become_json_lines_on_stdout() -> None:
    # In a process of its own: it changes the root logger and the libraries' loggers.
    script = textwrap.dedent(
        """
        import logging, warnings
        from assetbox.logs import configure_json_logs, json_logs_configured

        assert not json_logs_configured()
        configure_json_logs()
        configure_json_logs()  # idempotent: one handler, one line per record
        assert json_logs_configured()
        warnings.warn("a python warning")
        logging.getLogger("assetbox.test").info("ours")
        logging.getLogger("uvicorn.error").warning("uvicorn's")
        import torch  # imported after: its loggers are routed as it is imported
        logging.getLogger("torch._dynamo").warning("torch's")
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.get_logger("diffusers.pipelines").warning("diffusers'")
        from transformers.utils import logging as transformers_logging
        transformers_logging.get_logger("transformers.models").warning("transformers'")
        import huggingface_hub
        logging.getLogger("huggingface_hub.file_download").warning("the hub's")
        from tqdm.auto import tqdm
        for _ in tqdm(range(3), desc="a bar"):
            pass
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stdout)
    by_message = {r["message"].strip(): r for r in records}
    assert "a python warning" in next(m for m in by_message if "UserWarning" in m)
    assert by_message["ours"]["logger"] == "assetbox.test" and by_message["ours"]["level"] == "INFO"
    for message, logger in [
        ("uvicorn's", "uvicorn.error"),
        ("torch's", "torch._dynamo"),
        ("diffusers'", "diffusers.pipelines"),
        ("transformers'", "transformers.models"),
        ("the hub's", "huggingface_hub.file_download"),
    ]:
        assert by_message[message]["logger"] == logger
    assert len(records) == len(by_message)  # nothing twice
    # Nothing of theirs on stderr either: no plain-text copies, no progress bar.
    for text in ("warning", "torch's", "diffusers'", "transformers'", "hub's", "a bar"):
        assert text not in done.stderr


def test_derived_img2img_pipelines_draw_no_progress_bar(tmp_path: Path) -> None:
    from assetbox.pipelines.diffusion import load_checkpoint
    from assetbox.testing.tiny_models import write

    write("sd15", tmp_path)
    model = load_checkpoint("sd15", folder=tmp_path / "tiny-sd15")
    for task in ("text2img", "img2img"):
        assert model.pipeline(task)._progress_bar_config == {"disable": True}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_writes_only_json_lines_on_stdout(
    builtin_store, tmp_path: Path, stop: signal.Signals
) -> None:
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "assetbox.cli", "serve", "--port", str(port)],
        env={**os.environ, "ASSETBOX_DATA_DIR": str(data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        small = encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56]))
        body = {"image": base64.b64encode(small).decode(), "model": "realesr-animevideov3-x2"}
        job = httpx.post(
            f"{base}/v1/upscale", json=body, headers={"Prefer": "wait=120"}, timeout=150
        ).json()
        assert job["status"] == "succeeded", job
        # The scheduler logs a finished job just after its status turns final.
        time.sleep(0.5)
    finally:
        server.send_signal(stop)
        try:
            stdout, stderr = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            stdout, stderr = server.communicate()
    records = json_lines(stdout)
    messages = [r["message"] for r in records]
    assert any(m.startswith("Started server process") for m in messages), (messages, stderr)
    assert any(m.startswith("Uvicorn running on") for m in messages)
    assert "request" in messages and "job finished" in messages
    assert all("color_message" not in r for r in records)
