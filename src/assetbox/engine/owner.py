"""One running engine per data directory.

An engine that starts puts the jobs it finds `running` back in the queue: they were left so by a
crash. A second engine on the same directory (the CLI next to a running service, a second
`assetbox serve` that then fails to bind its port) would take the first one's live jobs that way
and run them twice. So a starting engine holds an exclusive `flock` on ``<data_dir>/engine.lock``
for its life; the kernel drops it when the process dies (SIGKILL too), so crash recovery needs
no clean-up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from assetbox.errors import Conflict

LOCK_NAME = "engine.lock"


def _describe(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid}: {command.strip()}"


class DataDirOwner:
    """Holds ``<data_dir>/engine.lock`` until `release` (or the process's end).

    Raises:
        Conflict: another live process holds it (its pid and command line are named).
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            who = _describe(int(holder)) if holder.isdigit() else "another process"
            raise Conflict(
                f"the data directory {data_dir} is in use by a running assetbox ({who}): "
                "send jobs to that service (the CLI's --server http://HOST:PORT) or use "
                "another ASSETBOX_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
