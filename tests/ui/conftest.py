"""The web UI's fixtures: one real service (`assetbox serve`, UI mounted at /ui) with tiny models
for the whole session, and headless Chromium driven by Playwright.

Chromium is Debian's (`chromium-headless-shell`, or `chromium`), installed by `make test`;
Playwright never downloads a browser of its own here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assetbox.client import Client
from tests.server.test_server_process import free_port

# The tiny models the UI tests use, imported into the service's store.
ENTRIES = [
    "tiny-sd15",
    "tiny-sd15-controlnet",
    "sd15-a.safetensors",
    "tiny-sdxl",
    "tiny-sdxl-controlnet",
    "sdxl-a.safetensors",
]
BROWSERS = ("chromium-headless-shell", "chromium")


def chromium_path() -> str:
    """Debian's Chromium; `make test` installs it (`apt-get install chromium-headless-shell`)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium for the browser tests: `make test` installs it "
        "(apt-get install -y chromium-headless-shell)"
    )


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{url} did not come up:\n{log.read_text()[-3000:]}")


# Written for the UI's store alone (the session's `tiny_models` has the UNet families and
# Flux.1 only): a FLUX.2 klein for references, a Qwen-Image-Edit-Plus for instruction edits.
FLOW_FAMILIES = ("flux2_klein", "qwen_image_edit_plus")


@pytest.fixture(scope="session")
def ui_data_dir(tiny_models: Path, tiny_captioners: dict, builtin_store, tmp_path_factory) -> Path:
    """A data directory with the built-in upscalers, tiny SD 1.5/SDXL (+ ControlNet, LoRA, an
    IP-Adapter for SD 1.5), tiny FLUX.2 klein and Qwen-Image-Edit-Plus, and the tiny Qwen2.5-VL
    captioner."""
    from assetbox.models.importer import import_model
    from assetbox.models.store import ModelStore
    from assetbox.testing.tiny_ip_adapter import write_ip_adapter
    from assetbox.testing.tiny_models import write

    data_dir = tmp_path_factory.mktemp("ui-data")
    shutil.copytree(builtin_store.root, data_dir / "models")
    store = ModelStore(data_dir / "models")
    for entry in ENTRIES:
        import_model(store, tiny_models / entry)
    import_model(store, tiny_captioners["qwen2_5_vl"])
    flow = tmp_path_factory.mktemp("ui-flow-models")
    for family in FLOW_FAMILIES:
        for path in write(family, flow):
            import_model(store, path)
    import_model(store, write_ip_adapter("sd15", flow / "ip-adapter-sd15"))
    return data_dir


@contextlib.contextmanager
def serving(args: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[str]:
    """`python -m assetbox.cli ARGS` (a command that listens on `port`) running until the block
    ends, once its /ui/ answers; its URL."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "assetbox.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/ui/", proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def ui_server(ui_data_dir: Path, tmp_path_factory) -> Iterator[str]:
    """`assetbox serve` on a free port with two local workers (two jobs at once); its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui-server") / "serve.log"
    env = {
        **os.environ,
        "ASSETBOX_DATA_DIR": str(ui_data_dir),
        "ASSETBOX_WORKERS": "2",
        "ASSETBOX_WORKER_THREADS": "1",
        "ASSETBOX_REUSE_RESULTS": "false",
    }
    with serving(["serve", "--port", str(port)], port, log, env) as url:
        yield url


@pytest.fixture
def relay_ui(ui_server: str, tmp_path: Path) -> Iterator[str]:
    """`assetbox ui --server <the service>` in a process of its own; its URL."""
    port = free_port()
    args = ["ui", "--server", ui_server, "--port", str(port)]
    with serving(args, port, tmp_path / "ui.log", os.environ.copy()) as url:
        yield url


@pytest.fixture
def api(ui_server: str) -> Iterator[Client]:
    with Client(ui_server) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium, for one test module: Playwright's sync API runs an asyncio loop in this thread
    while it is open, so a browser kept for the session made ``asyncio.run`` fail in whatever
    test file the same worker ran after a UI one ("cannot be called from a running event loop")."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui_server: str) -> Iterator[object]:
    """A fresh browser session on the UI, loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto(f"{ui_server}/ui/")
    page.get_by_role("tab", name="Generate").wait_for()
    yield page
    context.close()


DOCS = Path(__file__).resolve().parents[2] / "docs"


def shoot(page, name: str) -> None:
    """The README's screenshot `name` of this page, written to docs/ only when
    ASSETBOX_SCREENSHOTS is set (`ASSETBOX_SCREENSHOTS=1 .venv/bin/python -m pytest tests/ui`),
    so a test run leaves the checkout as it was."""
    if os.environ.get("ASSETBOX_SCREENSHOTS"):
        page.screenshot(path=str(DOCS / name), full_page=True)


def open_tab(page, name: str) -> None:
    """Click the tab `name` and wait for it to be the selected one."""
    tab = page.get_by_role("tab", name=name)
    tab.click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('[role=tab]')]"
        ".some(t => t.textContent.trim() === name && t.getAttribute('aria-selected') === 'true')",
        arg=name,
    )


def queued_request(data_dir: Path, job_id: str) -> dict:
    """The request job `job_id` was queued with, as the service stored it (defaults and seed
    filled in); the HTTP API does not show it. Read from the job store, read-only."""
    import json
    import sqlite3

    db = sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    assert row is not None, f"no job {job_id} in the store"
    return json.loads(row[0])
