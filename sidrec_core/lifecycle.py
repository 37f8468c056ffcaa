"""A process's life as runs and trials see it: who owns a run, whether that owner still lives,
and SIGTERM turned into an exception so every open run and trial ends as KILLED.

A run or trial records its owner as ``host``, ``pid`` and the pid's start time
(:func:`process_tags`); the start time tells a reused pid apart. :func:`orphaned` says whether
such a record names a process of this host that is gone, which is how a run left RUNNING by a
killed process is told from one still running.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

PID_TAG, HOST_TAG, START_TAG = "sidrec.pid", "sidrec.host", "sidrec.pid_start"


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like ``sys.exit(143)`` so every open run ends as KILLED."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Raise once; the default action is back in place first, because Python swallows an
    exception raised while it runs a finaliser (a weakref callback during garbage collection),
    and a process must never outlive a second SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated(128 + signum)


def install_sigterm_handler() -> bool:
    """Turn SIGTERM into :class:`Terminated` (only from the main thread, and only where nobody
    installed another handler). Returns whether ours is in place."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (tells a reused pid apart), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return start is None or process_start(pid) in (None, start)


def process_tags() -> dict[str, str]:
    """This process as an owner record: :data:`PID_TAG`, :data:`HOST_TAG`, :data:`START_TAG`."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if (start := process_start(os.getpid())) is not None:
        tags[START_TAG] = start
    return tags


def orphaned(tags: dict[str, str]) -> bool:
    """Whether ``tags`` name an owner process on this host that is gone. A record from another
    host, or one without a pid, is never orphaned here: only its own host can tell."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    return not pid_alive(int(tags[PID_TAG]), tags.get(START_TAG))
