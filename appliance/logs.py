"""Logging set-up: plain lines on stderr (journald fields come with packaging)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send every log record at ``level`` and above to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU and association at INFO/DEBUG; our handlers
    # log one line per association instead.
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
