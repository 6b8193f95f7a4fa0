"""Logging set-up: the systemd journal with structured fields, or plain stderr.

Under systemd (stderr connected to the journal, as ``$JOURNAL_STREAM`` says)
records go through ``systemd.journal.JournalHandler``, so the ``extra=``
fields our code attaches (PEER, CALLING_AET, CALLED_AET, BYTES, DURATION_MS,
...) become journal fields: ``journalctl -u pacs-appliance CALLING_AET=US01``.
Anywhere else, or without systemd-python, records are plain lines on stderr.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def journal_connected(stream=None) -> bool:
    """True if ``stream`` (default stderr) is the journal (systemd.exec(5) JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="pacs-appliance")


def setup_logging(level: int = logging.INFO) -> str:
    """Route every record at ``level`` and above; return "journal" or "stderr"."""
    handler = _journal_handler() if journal_connected() else None
    where = "journal"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        where = "stderr"
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU and association at INFO/DEBUG; our handlers
    # log one line per association instead.
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
    return where
