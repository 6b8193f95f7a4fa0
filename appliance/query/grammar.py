"""Date and time values in queries (PS3.5 6.2 DA, TM, DT; PS3.4 C.2.2.2.5 ranges).

One grammar for every matcher: QIDO-RS, C-FIND and the worklist.
"""

from __future__ import annotations

import re

__all__ = ["DATE_TIME_VRS", "DT_BODY", "PATTERNS", "UTC_OFFSET", "is_value", "parse_range"]

#: VRs that take range matching (PS3.4 C.2.2.2.5).
DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})

# A DT value is a date and time, then an optional UTC offset.
DT_BODY = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?"
UTC_OFFSET = r"[+-]\d{4}"
# One value of each VR, as a regular expression without anchors or groups.
PATTERNS = {
    "DA": r"\d{8}",
    "TM": r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?",
    "DT": f"{DT_BODY}(?:{UTC_OFFSET})?",
}
_VALUE = {vr: re.compile(f"({p})\\Z", re.ASCII) for vr, p in PATTERNS.items()}
_RANGE = {vr: re.compile(f"({p})?-({p})?\\Z", re.ASCII) for vr, p in PATTERNS.items()}


def is_value(vr: str, text: str) -> bool:
    """True if ``text`` is one value of ``vr`` (DA, TM or DT)."""
    return bool(_VALUE[vr].match(text))


def parse_range(vr: str, text: str) -> tuple[str, str] | None:
    """``(low, high)`` of a range ``A-B``, ``A-`` or ``-B`` ("" for an open
    end), or None if ``text`` is no range of ``vr``."""
    m = _RANGE[vr].match(text)
    if not m or not (m.group(1) or m.group(2)):
        return None
    return m.group(1) or "", m.group(2) or ""
