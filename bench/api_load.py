"""Submit latency of the HTTP API under load: many concurrent clients against a real server.

Starts `assetbox serve` on a free loopback port with a fresh data directory, then N clients each
submit one small upscale job at the same moment (POST /v1/upscale, base64 JSON, no waiting).
Prints one JSON line: {"clients", "status_counts": {code: n}, "p50_ms", "p99_ms", "server_errors"}
with the same figures for GET /health as the baseline in the same run (a request that does no work),
and the ratio of the two p50s.

    python bench/api_load.py --clients 200
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


async def burst(base: str, clients: int, method: str, path: str, bodies: list | None):
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(n: int) -> tuple[int, float]:
            start = time.perf_counter()
            if method == "POST":
                response = await client.post(path, json=bodies[n] if bodies else None)
            else:
                response = await client.get(path)
            return response.status_code, (time.perf_counter() - start) * 1000

        return await asyncio.gather(*(one(n) for n in range(clients)))


def summary(results: list[tuple[int, float]]) -> dict:
    latencies = sorted(ms for _, ms in results)
    counts = Counter(str(code) for code, _ in results)
    return {
        "status_counts": dict(sorted(counts.items())),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "server_errors": sum(n for code, n in counts.items() if code.startswith("5")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args(argv)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "ASSETBOX_DATA_DIR": data_dir}
        server = subprocess.Popen(
            [sys.executable, "-m", "assetbox.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
            bodies = [
                {"image": small_png(n), "model": "realesr-animevideov3-x2"}
                for n in range(args.clients)
            ]
            health = summary(asyncio.run(burst(base, args.clients, "GET", "/health", None)))
            submit = summary(asyncio.run(burst(base, args.clients, "POST", "/v1/upscale", bodies)))
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(
        json.dumps(
            {
                "clients": args.clients,
                **submit,
                "baseline_health": health,
                "p50_vs_health": round(submit["p50_ms"] / max(health["p50_ms"], 1e-9), 2),
            }
        )
    )
    return 1 if submit["server_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
