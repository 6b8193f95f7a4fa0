"""Transfer syntaxes (PS3.5 Section 10, Annex A): how a data set is encoded.

One table for the whole package and its users: the byte order and VR
encoding of the data set, whether Pixel Data is native or encapsulated, which
encapsulated syntaxes are lossy or video.
"""

from __future__ import annotations

from pydicom.uid import UID

__all__ = [
    "DEFLATED", "DEFLATED_LE", "EXPLICIT_BE", "EXPLICIT_LE", "IMPLICIT_LE",
    "is_encapsulated", "is_known", "is_lossy", "is_video",
]

IMPLICIT_LE = "1.2.840.10008.1.2"         # PS3.5 A.1
EXPLICIT_LE = "1.2.840.10008.1.2.1"       # PS3.5 A.2
EXPLICIT_BE = "1.2.840.10008.1.2.2"       # PS3.5 A.3 (retired, still received)
DEFLATED_LE = "1.2.840.10008.1.2.1.99"    # PS3.5 A.5
# Syntaxes whose data set is deflated: A.5 and JPIP Referenced Deflate (A.7).
DEFLATED = frozenset({DEFLATED_LE, "1.2.840.10008.1.2.4.95"})
_NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
# MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 (PS3.5 A.4.5-A.4.7).
_VIDEO = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))
# Syntaxes whose pixel data may have been through a lossy compression
# (PS3.18 8.7.3.4 Note 2): JPEG baseline/extended, JPEG-LS near-lossless,
# JPEG 2000 and HTJ2K (lossy or not), and video.
_LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
}) | _VIDEO


def is_known(ts: str) -> bool:
    """True for a transfer syntax of the standard (PS3.6 Annex A, as pydicom
    knows it): a data set in any other cannot be read, so it is refused."""
    return UID(ts).is_transfer_syntax


def is_encapsulated(ts: str) -> bool:
    """True when pixel data is encapsulated (PS3.5 A.4): anything but native."""
    return ts not in _NATIVE


def is_video(ts: str) -> bool:
    """True for MPEG-2, MPEG-4/H.264 and HEVC transfer syntaxes."""
    return ts in _VIDEO


def is_lossy(ts: str) -> bool:
    """True for transfer syntaxes that may carry lossy-compressed pixel data."""
    return ts in _LOSSY
