"""What every child process of a server does first: die with its parent, and carry a name in ``ps``."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal

__all__ = ["become_child"]

_PR_SET_PDEATHSIG = 1

log = logging.getLogger("adaptformer_server")


def become_child(title: str, parent: int) -> None:
    """Asks the kernel to kill this process when its parent dies (even by SIGKILL: no orphan outlives a killed
    server; Linux only; ``parent``: the pid that started this one) and sets the process title (``ps`` shows e.g. ``adaptformer engine``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop still ends its children
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # the server extra installs it; without it ps shows the Python command line
        pass
