"""sd_notify without dependencies; a silent no-op outside systemd."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends sd_notify(3) messages to ``$NOTIFY_SOCKET`` when it is set."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; False when not delivered."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        """READY=1 (and a STATUS line)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 (with the MONOTONIC_USEC systemd 253+ wants); READY=1 follows."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is healthy."""
        return self.notify("WATCHDOG=1")

    @staticmethod
    def watchdog_period() -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when
        systemd expects none (sd_watchdog_enabled(3))."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=text."""
        return self.notify(f"STATUS={text}")
