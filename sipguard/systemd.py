"""systemd's notify protocol (sd_notify(3)), without libsystemd: readiness, stopping, the watchdog.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; sipguard sends ``READY=1`` once it listens,
``STOPPING=1`` when a drain starts, and, when the unit sets ``WatchdogSec``, ``WATCHDOG=1`` at half that
period while its event loop (with ``--workers``: every worker's) answers.  Without ``NOTIFY_SOCKET`` every
call does nothing.  The unit: deploy/sipguard.service; docs/service.md.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_period_s"]


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``...) to systemd; whether there was a socket to send it to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True


def watchdog_period_s() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``), or None when the unit sets no watchdog
    (or set it for another process)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
