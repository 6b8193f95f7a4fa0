"""What a compressed frame says about itself, checked against the object's attributes
before any native decoder sees it.

GDCM, one of pydicom's decoders here (the only one for JPEG Lossless and JPEG-LS),
does not raise on input it finds inconsistent: it aborts the process. An object the
archive stored (the sizes of compressed pixel data cannot be counted at ingest)
whose Image Pixel attributes disagree with its codestream took the whole daemon
down at its first thumbnail: JPEG Baseline with Bits Allocated 32 or Bits Stored 7,
JPEG-LS with more Rows than the codestream, JPEG 2000 with one component under a
three-sample Photometric Interpretation (found by tests/fuzz). So the frame's own
header - the JPEG SOF segment (ISO 10918-1 B.2.2, JPEG-LS SOF55 ISO 14495-1 C.2.2),
the JPEG 2000 SIZ segment (ISO 15444-1 A.5.1) - must agree with Rows, Columns,
Samples per Pixel and Bits, as PS3.5 8.2 requires, and the attributes must make
sense together (PS3.3 C.7.6.3.1), or the frame is not decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["FrameHeader", "frame_header", "problem"]

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG = frozenset({JPEG_BASELINE, "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                   "1.2.840.10008.1.2.4.81"})
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                  "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"})
# Start of Frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) is JPEG-LS.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF, 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length
# Samples a Photometric Interpretation implies (PS3.3 C.7.6.3.1.2).
_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
            "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}


@dataclass(frozen=True)
class FrameHeader:
    """Dimensions a codestream declares."""

    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest, for JPEG 2000)


def frame_header(frame: bytes, transfer_syntax: str) -> FrameHeader | None:
    """The header of a JPEG family or JPEG 2000 frame; None for other syntaxes.
    Raises ValueError when the codestream has no readable header."""
    if transfer_syntax in _JPEG:
        return _jpeg(frame)
    if transfer_syntax in _J2K:
        return _j2k(frame)
    return None


def _jpeg(frame: bytes) -> FrameHeader:
    if frame[:2] != b"\xff\xd8":
        raise ValueError("the frame does not start with a JPEG SOI marker")
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack_from(">H", frame, pos + 2)[0]
        if marker in _SOF:
            if length < 8 or pos + 10 > len(frame):
                raise ValueError("a JPEG SOF segment cut short")
            precision, rows, columns, components = struct.unpack_from(">BHHB", frame, pos + 4)
            return FrameHeader(rows, columns, components, precision)
        if marker in (0xDA, 0xD9):  # scan or end of image before any frame header
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header (SOF) before the scan")


def _j2k(frame: bytes) -> FrameHeader:
    # A JPEG 2000 codestream (PS3.5 8.2.4); some writers wrap it in JP2 boxes.
    pos = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if pos < 0:
        raise ValueError("no JPEG 2000 SIZ segment at the start of the frame")
    siz = pos + 4
    if siz + 38 > len(frame):
        raise ValueError("a JPEG 2000 SIZ segment cut short")
    (_lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto,
     components) = struct.unpack_from(">HHLLLLLLLLH", frame, siz)
    if siz + 38 + 3 * components > len(frame) or components == 0:
        raise ValueError("a JPEG 2000 SIZ segment cut short")
    precision = max((frame[siz + 38 + 3 * k] & 0x7F) + 1 for k in range(components))
    return FrameHeader(ysiz - yosiz, xsiz - xosiz, components, precision)


def problem(attrs: dict[str, object], transfer_syntax: str, frame: bytes) -> str | None:
    """Why a compressed frame must not be decoded, or None. ``attrs``: Rows, Columns,
    SamplesPerPixel, BitsAllocated, BitsStored, PhotometricInterpretation as ints/str
    (None when absent)."""
    rows, columns = attrs.get("Rows"), attrs.get("Columns")
    samples, allocated = attrs.get("SamplesPerPixel") or 1, attrs.get("BitsAllocated")
    stored, photometric = attrs.get("BitsStored"), attrs.get("PhotometricInterpretation")
    if allocated not in (1, 8, 16, 32, 64):
        return f"Bits Allocated {allocated} is not 1, 8, 16, 32 or 64"
    if not isinstance(stored, int) or not 1 <= stored <= allocated:
        return f"Bits Stored {stored} does not fit Bits Allocated {allocated}"
    if samples not in (1, 3):
        return f"Samples per Pixel {samples} is neither 1 nor 3"
    implied = _SAMPLES.get(str(photometric or ""))
    if implied is not None and implied != samples:
        return f"Photometric Interpretation {photometric} with {samples} samples per pixel"
    try:
        header = frame_header(frame, transfer_syntax)
    except (ValueError, struct.error) as e:
        return str(e)
    if header is None:
        return None
    if (header.rows, header.columns) != (rows, columns):
        return (f"the codestream is {header.columns} x {header.rows}, the attributes say "
                f"{columns} x {rows}")
    if header.components != samples:
        return f"the codestream has {header.components} components, Samples per Pixel {samples}"
    if header.precision > allocated:
        return f"the codestream has {header.precision}-bit samples, Bits Allocated {allocated}"
    if transfer_syntax == JPEG_BASELINE and (allocated, stored) != (8, 8):
        # PS3.5 8.2.1: 8-bit samples only; GDCM aborts on anything else.
        return f"JPEG Baseline with Bits Allocated {allocated} and Bits Stored {stored}"
    if transfer_syntax in _JPEG and allocated not in (8, 16):
        return f"a JPEG codestream with Bits Allocated {allocated}"
    return None
