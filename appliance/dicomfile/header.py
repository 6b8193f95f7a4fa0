"""Read and check the header of a received DICOM Part-10 file.

Only the header is parsed (pydicom stops before Pixel Data and defers large
values), so memory does not grow with object size. The pixel data that
follows is not decoded, but its framing is checked by seeking over it, so a
truncated object is refused rather than archived.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.dicomfile import dicomjson
from appliance.dicomfile.syntax import EXPLICIT_BE, IMPLICIT_LE
from appliance.dicomfile.vr import is_valid_uid

# Values at least this long are not read at ingest (they stay in the file).
DEFER_SIZE = 1024
PIXEL_DATA_TAG = 0x7FE00010
_ITEM = 0xFFFEE000
_SEQ_DELIMITER = 0xFFFEE0DD
#: A Value Length of 0xFFFFFFFF: encapsulated Pixel Data, delimited items (PS3.5 7.1).
UNDEFINED_LENGTH = 0xFFFFFFFF


class InvalidObject(Exception):
    """The object cannot be archived; ``str(e)`` says why (no patient data)."""


@dataclass(frozen=True)
class Header:
    """A parsed header and what the archive needs to know about its file."""

    dataset: Dataset
    transfer_syntax_uid: str
    has_pixel_data: bool
    pixel_data_vr: str | None


@dataclass(frozen=True)
class PixelElement:
    """Where the Pixel Data element of a file starts, and how it is framed."""

    vr: str
    length: int        # UNDEFINED_LENGTH for encapsulated (fragments) data
    value_at: int      # file offset of its value


def read_header(path: str | os.PathLike) -> Header:
    """Parse the header of the Part-10 file at ``path``; raise InvalidObject."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        ds, tsuid = _parse(f)
        pixel = _pixel_element(f, tsuid)
        if pixel is not None:
            _check_extent(f, pixel, size)
    return Header(ds, tsuid, pixel is not None, pixel.vr if pixel else None)


def read_header_start(path: str | os.PathLike) -> tuple[Header, PixelElement] | None:
    """Parse the header of a file still being received, if it is all there.

    It is known to be whole only once the Pixel Data element has begun (what
    follows is pixel data); otherwise, or if the part received does not parse
    (yet), None: the caller parses the finished file with :func:`read_header`.
    """
    try:
        with open(path, "rb") as f:
            ds, tsuid = _parse(f)
            pixel = _pixel_element(f, tsuid)
    except (InvalidObject, OSError):
        return None
    if pixel is None:
        return None
    return Header(ds, tsuid, True, pixel.vr), pixel


def _parse(f) -> tuple[Dataset, str]:
    """The dataset up to Pixel Data, deferred values it needs inline loaded, and
    the transfer syntax; f is left at the first element not parsed."""
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=DEFER_SIZE)
    except InvalidDicomError as e:
        raise InvalidObject(f"not a DICOM object: {e}") from None
    except RecursionError:
        raise InvalidObject("sequences nested too deeply") from None
    except (EOFError, struct.error) as e:
        raise InvalidObject(f"truncated DICOM object: {e}") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on garbage
        raise InvalidObject(f"unreadable DICOM object: {type(e).__name__}: {e}") from None
    at = f.tell()
    try:
        # Sequences and text values longer than DEFER_SIZE were deferred
        # too; they belong in the metadata, so read them while the file is open.
        for tag in dicomjson.deferred_inline_tags(ds):
            ds[tag]
    except Exception as e:  # noqa: BLE001 - a damaged sequence
        raise InvalidObject(f"unreadable DICOM object: {type(e).__name__}: {e}") from None
    f.seek(at)
    meta = getattr(ds, "file_meta", None)
    tsuid = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not is_valid_uid(tsuid):
        raise InvalidObject("missing or invalid TransferSyntaxUID in the file meta")
    return ds, tsuid


def _pixel_element(f, tsuid: str) -> PixelElement | None:
    """The Pixel Data element at f's position (None when the object has none)."""
    start = f.tell()
    head = f.read(12)
    if len(head) < 8:
        if head:
            raise InvalidObject("truncated DICOM object: partial element at the end")
        return None
    endian = ">" if tsuid == EXPLICIT_BE else "<"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA_TAG:
        # The header parse stopped for another reason (end of data): nothing to check.
        return None
    # Decide the encoding from the bytes, as pydicom does: some writers mix
    # implicit elements into an explicit-VR dataset.
    if tsuid == IMPLICIT_LE or not head[4:6].isalpha():
        return PixelElement("OW", struct.unpack(endian + "L", head[4:8])[0], start + 8)
    if len(head) < 12:
        raise InvalidObject("truncated DICOM object: partial Pixel Data header")
    return PixelElement(head[4:6].decode("ascii", "replace"),
                        struct.unpack(endian + "L", head[8:12])[0], start + 12)


def _check_extent(f, pixel: PixelElement, size: int) -> None:
    """Check the framing of the Pixel Data value. Defined length: the value
    must fit in the file. Undefined length (encapsulated, PS3.5 A.4): walk the
    item headers, seeking over each fragment, to the sequence delimiter;
    nothing is read but 8 bytes per fragment."""
    if pixel.length != UNDEFINED_LENGTH:
        if pixel.value_at + pixel.length > size:
            raise InvalidObject(
                f"truncated DICOM object: Pixel Data needs {pixel.length} bytes, "
                f"{size - pixel.value_at} present"
            )
        return
    end_of_fragments(f, pixel.value_at, size)


def end_of_fragments(f, pos: int, size: int) -> int:
    """Offset just after the sequence delimiter of encapsulated pixel data whose
    first item starts at ``pos`` (PS3.5 A.4): item headers are read, fragments
    skipped. Raises InvalidObject if the framing is broken or cut short."""
    while True:
        f.seek(pos)
        item = f.read(8)
        if len(item) < 8:
            raise InvalidObject("truncated DICOM object: encapsulated Pixel Data has no end")
        # Encapsulated items are always little endian (PS3.5 A.4).
        g, e, item_len = struct.unpack("<HHL", item)
        tag = g << 16 | e
        if tag == _SEQ_DELIMITER:
            return pos + 8
        if tag != _ITEM or item_len == UNDEFINED_LENGTH:
            raise InvalidObject("malformed encapsulated Pixel Data")
        pos += 8 + item_len
        if pos > size:
            raise InvalidObject("truncated DICOM object: Pixel Data fragment past the end")
