"""Imported once by the forkserver that local worker processes are forked from
(engine/processes.py; the job kinds' modules are imported next to it), so that every worker
starts with torch, spandrel and the diffusers pipelines already imported: together they take
several seconds, which each worker (and each one started after another was killed) would
otherwise pay on its first unit. Nothing here touches a device."""

import os
import signal

# Ctrl-C reaches the whole process group; the service decides when workers stop.
signal.signal(signal.SIGINT, signal.SIG_IGN)
if os.environ.get("ASSETBOX_WORKER_JSON_LOGS") == "1":  # before the libraries log anything
    from assetbox.logs import configure_json_logs

    configure_json_logs()

from assetbox.models.architectures import import_spandrel  # noqa: E402
from assetbox.pipelines.diffusion import _PIPELINES  # noqa: E402  (HF_HUB_OFFLINE first)


def _preload() -> None:
    import diffusers

    import_spandrel()
    for name in _PIPELINES.values():  # diffusers imports each pipeline class on first access
        getattr(diffusers, name)


_preload()
