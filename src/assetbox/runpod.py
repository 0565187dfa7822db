"""``python -m assetbox.runpod``: the toolbox's RunPod serverless worker (compat/runpod_worker).

runpod reads its own flags from the command line: ``--rp_serve_api --rp_api_port N`` serves a
local copy of RunPod's job API (``/run``, ``/runsync``, ...), ``--test_input JSON`` runs one job.
Needs the `runpod` extra.
"""

from __future__ import annotations


def main() -> None:
    from assetbox.compat.runpod_worker import start

    start()


if __name__ == "__main__":
    main()
