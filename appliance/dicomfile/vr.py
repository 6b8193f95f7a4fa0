"""Value Representations (PS3.5 6.2) and the UID rule (PS3.5 9.1): one table each.

Every reader and writer of element bytes in the appliance takes its VR
knowledge from here, so the explicit VR header layout is decided once.
"""

from __future__ import annotations

import re

__all__ = ["BINARY_VRS", "LONG_VRS", "SHORT_VRS", "UNIT_SIZES", "is_valid_uid"]

# PS3.5 7.1.2: explicit VRs whose header has a 2-byte reserved field and a
# 4-byte length ...
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# ... and those with a 2-byte length (PS3.5 Table 7.1-2).
SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
                       "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"})
# "Other" VRs: a stream of bytes or words, never text.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# PS3.5 6.2: values of these VRs are a whole number of fixed-size numbers.
UNIT_SIZES = {"US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "OF": 4, "OL": 4,
              "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8}  # fmt: skip

# PS3.5 9.1: digits and dots, components without leading zeros, <= 64 chars.
# Leading zeros are tolerated (many scanners emit them and Orthanc keeps such
# objects); an empty component, other characters or > 64 chars are refused.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*\Z")


def is_valid_uid(value: object) -> bool:
    """True if ``value`` is a usable UID (PS3.5 9.1, leading zeros tolerated)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))
