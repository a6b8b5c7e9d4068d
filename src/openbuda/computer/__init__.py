"""The agent's cloud computer: sandbox backends, the computers of a process, and their tools.

``open_backend(settings)`` picks the backend (``bwrap`` or the development-only ``process``);
``Computers`` keeps the computers of one process and puts idle ones to sleep.
"""

from __future__ import annotations

import logging
import shutil

from openbuda.computer._layout import ComputerLayout
from openbuda.computer._paths import SandboxPath, parse_path
from openbuda.computer.manager import Computers, spec_for
from openbuda.computer.process import WARNING as PROCESS_WARNING
from openbuda.computer.process import ProcessBackend
from openbuda.ports import SandboxBackend
from openbuda.settings import Settings

__all__ = [
    "ComputerLayout",
    "Computers",
    "ProcessBackend",
    "SandboxPath",
    "open_backend",
    "parse_path",
    "spec_for",
]

log = logging.getLogger("openbuda.computer")


def open_backend(settings: Settings) -> SandboxBackend:
    """The configured sandbox backend (``auto``: bubblewrap when it works here)."""
    layout = ComputerLayout(settings.resolved_computer_dir())
    choice = settings.computer_backend
    if choice in ("auto", "bwrap") and shutil.which("bwrap"):
        from openbuda.computer.bwrap import BwrapBackend, BwrapUnavailable

        try:
            return BwrapBackend(layout, settings)
        except BwrapUnavailable as exc:
            if choice == "bwrap":
                raise
            log.warning("bubblewrap cannot run here (%s)", exc)
    elif choice == "bwrap":
        from openbuda.computer.bwrap import BwrapUnavailable

        raise BwrapUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
    log.warning(PROCESS_WARNING)
    return ProcessBackend(layout)
