"""Is a Part-10 object whole?  One walk over every element of its data set.

The store contract (docs/DESIGN.md) acknowledges an object only if what was
received is the whole object.  pydicom cannot tell: ``dcmread`` stops quietly
where the bytes end, even inside an element's header, and
``stop_before_pixels`` never looks past Pixel Data.  So before an object is
acknowledged, :func:`check` walks its framing from the file meta to the last
byte, whichever header reader (ours or pydicom) then builds its index record:

- every element is complete: its header and its value lie within the object
  and within the item or sequence that holds it (PS3.5 7.1, 7.5);
- sequences and items of undefined length are closed by their delimiters,
  defined-length ones end exactly where they say, nothing is left over;
- tags ascend within each data set (PS3.5 7.1: "in increasing numeric order"),
  so none is repeated; only SQ, UN and encapsulated Pixel Data have undefined
  length; a binary value is a whole number of its values (PS3.5 6.2);
- encapsulated Pixel Data is a Basic Offset Table item, at least one fragment
  and a sequence delimiter (PS3.5 A.4); native Pixel Data holds at least the
  bytes that Rows x Columns x Samples per Pixel x Bits Allocated x Number of
  Frames need (PS3.5 8.1.1, 8.2);
- an object of an image storage SOP class carries Pixel Data (PS3.3 C.7.6.3,
  Image Pixel Module, required in every image IOD), with non-zero Rows,
  Columns and Samples per Pixel, and Bits Allocated 1 or a multiple of 8
  (PS3.3 C.7.6.3.1): an image that no viewer can show is not acknowledged.

Values are not read but for the few top-level ones these rules need, so a
large object costs the reading of its element headers only: the caller hands
a :class:`Reader` with the object's first bytes in memory and a way to read
the rest.  Deflated data sets (PS3.5 A.5) are inflated as they are walked.

Pure module: no I/O of its own, no logging, no module state.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Callable

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from appliance.dicomfile.syntax import DEFLATED, EXPLICIT_BE, IMPLICIT_LE, is_encapsulated, is_known
from appliance.dicomfile.vr import LONG_VRS, SHORT_VRS, UNIT_SIZES

__all__ = ["Malformed", "NotItsSopClass", "Reader", "Truncated", "Whole", "check", "file_meta", "MAX_DEPTH"]

#: Deepest sequence nesting accepted (real objects nest a handful deep).
MAX_DEPTH = 64
#: A Value Length of 0xFFFFFFFF (PS3.5 7.1.1).
UNDEFINED = 0xFFFFFFFF

_PREAMBLE = 128
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({_PIXEL_DATA, 0x7FE00008, 0x7FE00009})  # also Float/Double Float
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MEDIA_SOP_CLASS, _TRANSFER_SYNTAX = 0x00020002, 0x00020010
_LONG = frozenset(vr.encode() for vr in LONG_VRS)
_SHORT = frozenset(vr.encode() for vr in SHORT_VRS)
_SHORT_NAMES = {vr.encode(): vr for vr in SHORT_VRS}
_SHORT_LE = struct.Struct("<HH2sH")  # tag, VR, 2-byte length (PS3.5 7.1.2)

# The top-level values the rules read: SOP Class UID and the Image Pixel Module.
_SOP_CLASS = 0x00080016
_SAMPLES, _PHOTOMETRIC, _FRAMES = 0x00280002, 0x00280004, 0x00280008
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_WANTED = frozenset({_SOP_CLASS, _SAMPLES, _PHOTOMETRIC, _FRAMES, _ROWS, _COLUMNS, _BITS_ALLOCATED})
_TOP_TAGS = _WANTED | _PIXEL_TAGS
# Values with nothing to check but that they fit (every VR has a defined
# length; binary ones must also be whole numbers of values).
_PLAIN = frozenset(LONG_VRS | SHORT_VRS) - {"SQ", "UN"} - set(UNIT_SIZES)
# Image storage SOP classes whose names do not say "Image Storage".
_MORE_IMAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.6.2"})  # Enhanced US Volume


class Malformed(Exception):
    """The object is not a well-formed DICOM object; ``str(e)`` says where and
    why (offsets and tags, never values: no patient data)."""


class Truncated(Malformed):
    """The object ends before its last element does: cut off in transit."""


class NotItsSopClass(Malformed):
    """Well framed, but the data set lacks what its SOP class requires
    (PS3.4 B.2.3, 0xA900 "Data Set does not match SOP Class")."""


@dataclass(frozen=True)
class Whole:
    """What the walk saw of a whole object."""

    transfer_syntax_uid: str
    dataset_at: int             # offset of the data set's first byte in the file
    elements: int               # elements walked, at every depth
    pixel_tag: int | None       # (7FE0,0010), (7FE0,0008) or (7FE0,0009), if any
    fragments: int              # encapsulated Pixel Data: fragments (offset table excluded)


class Reader:
    """The bytes of one object: its first bytes in memory, the rest on demand.

    ``head`` holds the object's first bytes (often all of it); ``read_at(pos,
    n)`` returns ``n`` bytes at ``pos`` and is only asked for what lies beyond
    ``head``; ``size`` is the object's length.
    """

    __slots__ = ("head", "size", "_read_at")

    def __init__(self, head: bytes, size: int,
                 read_at: Callable[[int, int], bytes] | None = None) -> None:
        if read_at is None and len(head) < size:
            raise ValueError("the head is not the whole object and there is no read_at")
        self.head = head
        self.size = size
        self._read_at = read_at

    def get(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer only at the end of the object)."""
        end = min(pos + n, self.size)
        if end <= len(self.head):
            return self.head[pos:end]
        if pos >= end:
            return b""
        return self._read_at(pos, end - pos)  # type: ignore[misc]


class _Inflated:
    """The inflated data set of a deflated object (PS3.5 A.5), read forwards:
    a window of inflated bytes slides along as the walk asks for them, so
    memory stays bounded whatever the object's size."""

    _CHUNK = 64 << 10

    def __init__(self, reader: Reader, at: int) -> None:
        self._reader = reader
        self._next = at                  # next compressed byte to feed
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._window = b""
        self._window_at = 0              # inflated offset of _window[0]

    def get(self, pos: int, n: int) -> bytes:
        if pos < self._window_at:
            raise AssertionError("the walk went backwards")  # never: it only moves on
        while self._window_at + len(self._window) < pos + n and not self._inflate.eof:
            drop = min(pos - self._window_at, len(self._window))
            self._window, self._window_at = self._window[drop:], self._window_at + drop
            self._more()
        start = pos - self._window_at
        return self._window[start:start + n] if start >= 0 else b""

    def _more(self) -> None:
        if self._inflate.unconsumed_tail:
            data = self._inflate.unconsumed_tail
        else:
            data = self._reader.get(self._next, self._CHUNK)
            self._next += len(data)
            if not data:
                raise Truncated("truncated DICOM object: the deflated data set has no end")
        try:
            self._window += self._inflate.decompress(data, self._CHUNK)
        except zlib.error:
            raise Malformed("the deflated data set does not inflate") from None


def file_meta(reader: Reader) -> tuple[str, int]:
    """(transfer syntax, offset of the data set) of the Part 10 object in
    ``reader`` (PS3.10 7.1), from its File Meta Information alone; raise
    :class:`Malformed` when that is not well formed."""
    return _file_meta(reader)[1:]


def _file_meta(reader: Reader) -> tuple["_Walk", str, int]:
    head = reader.get(0, _PREAMBLE + 4)
    if head[_PREAMBLE:] == b"DICM":
        pos = _PREAMBLE + 4
    elif head[:2] == b"\x02\x00":
        pos = 0  # a file meta without the preamble, as pydicom accepts
    else:
        raise Malformed("not a DICOM object: no DICM prefix or file meta")
    meta = _Walk(reader.get, reader.size, "1.2.840.10008.1.2.1")
    tsuid, at = meta.file_meta(pos)
    return meta, tsuid, at


def check(reader: Reader) -> Whole:
    """Walk the whole object in ``reader``; raise :class:`Malformed` (or one of
    its kinds) if it is not whole and well formed, else say what was seen."""
    meta, tsuid, at = _file_meta(reader)
    if not is_known(tsuid):
        raise Malformed(f"unknown transfer syntax {tsuid[:64]!r} in the file meta")
    if tsuid in DEFLATED:
        inflated = _Inflated(reader, at)
        walk = _Walk(inflated.get, None, tsuid)
        walk.dataset(0, None, 0, top=True)
    else:
        walk = _Walk(reader.get, reader.size, tsuid, reader.head)
        walk.dataset(at, reader.size, 0, top=True)
    _check_pixels(walk, tsuid, meta.text(_SOP_CLASS))
    return Whole(tsuid, at, walk.elements + meta.elements,
                 walk.pixel[0] if walk.pixel else None, walk.fragments)


class _Walk:
    """One walk over a data set's elements, recursing into sequences."""

    def __init__(self, read: Callable[[int, int], bytes], size: int | None, tsuid: str,
                 buf: bytes = b"") -> None:
        self.read = read
        self.buf = buf                   # the object's first bytes, if in memory
        self.size = size                 # None: not known up front (inflated)
        self.endian = ">" if tsuid == EXPLICIT_BE else "<"
        self.implicit = tsuid == IMPLICIT_LE
        self.elements = 0
        self.values: dict[int, tuple[str | None, bytes]] = {}  # top-level _WANTED
        self.pixel: tuple[int, str | None, int] | None = None  # (tag, VR, length)
        self.fragments = 0

    # -- file meta -------------------------------------------------------

    def file_meta(self, pos: int) -> tuple[str, int]:
        """(transfer syntax, end) of the group 0002 elements from ``pos``
        (always explicit VR little endian, PS3.10 7.1)."""
        tsuid, last = None, -1
        while True:
            head = self.read(pos, 12)
            if head[:2] != b"\x02\x00":
                break
            tag, vr, length, at = self._element(head, pos)
            if tag <= last:
                raise Malformed(f"file meta element {_name(tag)} out of order or repeated")
            last = tag
            if length == UNDEFINED:
                raise Malformed(f"file meta element {_name(tag)} of undefined length")
            stop = self._fits(tag, at, length, self.size, True)
            if tag == _TRANSFER_SYNTAX:
                tsuid = self.read(at, length).decode("ascii", "replace").rstrip("\0 ")
            elif tag == _MEDIA_SOP_CLASS and length <= 64:
                self.values[_SOP_CLASS] = ("UI", self.read(at, length))
            self.elements += 1
            pos = stop
        if not tsuid:
            raise Malformed("no Transfer Syntax UID in the file meta")
        return tsuid, pos

    # -- structure -------------------------------------------------------

    def _element(self, head: bytes, pos: int) -> tuple[int, str | None, int, int]:
        """(tag, VR or None when unknown, length, value offset) of the element
        whose first bytes are ``head`` at ``pos``."""
        if len(head) < 8:
            raise Truncated(f"truncated DICOM object: element header cut short at offset {pos}")
        group, element = struct.unpack_from(self.endian + "HH", head)
        tag = group << 16 | element
        if not self.implicit and group != 0xFFFE:
            vr = head[4:6]
            if vr in _SHORT:
                return tag, vr.decode(), struct.unpack_from(self.endian + "H", head, 6)[0], pos + 8
            if vr in _LONG:
                if len(head) < 12:
                    raise Truncated(f"truncated DICOM object: element header cut short at offset {pos}")
                return tag, vr.decode(), struct.unpack_from(self.endian + "L", head, 8)[0], pos + 12
            if b"AA" <= vr <= b"ZZ":
                raise Malformed(f"unknown VR {vr.decode('ascii', 'replace')!r} in {_name(tag)}")
            # Below "AA" or above "ZZ": an implicit-VR element amid explicit ones,
            # which some writers emit; pydicom reads it so by the same rule
            # (filereader: "invalid VR, must be 2 cap chrs, assume implicit"), and
            # only by that rule, so bytes like "D\x01" are an unknown VR to both.
        length = struct.unpack_from(self.endian + "L", head, 4)[0]
        if element == 0 and group != 0xFFFE:
            return tag, "UL", length, pos + 8  # group length
        try:
            vr_name: str | None = dictionary_VR(tag)
        except KeyError:
            vr_name = None  # private or unknown: an opaque value, or a sequence
        return tag, vr_name, length, pos + 8

    def dataset(self, pos: int, end: int | None, depth: int, top: bool = False) -> int:
        """Walk the elements from ``pos`` to ``end`` (None: to the item
        delimiter, or at the top of an inflated data set to its end); return
        where they stop."""
        last = -1
        read, buf = self.read, self.buf
        # The common case, an explicit VR little endian element with a short
        # length and a value within bounds, is walked inline (a typical
        # header is 50-300 of them); everything else by _element and _value.
        fast_limit = len(buf) - 8 if not self.implicit and self.endian == "<" else -1
        bound = end if end is not None and self.size is not None else -1
        while end is None or pos < end:
            if pos <= fast_limit:
                group, element, vr_bytes, length = _SHORT_LE.unpack_from(buf, pos)
                vr = _SHORT_NAMES.get(vr_bytes)
                tag = group << 16 | element
                if vr is not None and group != 0xFFFE:
                    at = pos + 8
                else:
                    tag, vr, length, at = self._element(read(pos, 12), pos)
            else:
                head = read(pos, 12)
                if not head:
                    if top:
                        return pos
                    raise Truncated(f"truncated DICOM object: an item is not closed (offset {pos})")
                tag, vr, length, at = self._element(head, pos)
            if tag >> 16 == 0xFFFE:
                if tag == _ITEM_END and end is None and not top:
                    return at
                raise Malformed(f"unexpected {_name(tag)} at offset {pos}")
            if tag <= last:
                raise Malformed(f"{_name(tag)} at offset {pos} out of order or repeated")
            last = tag
            self.elements += 1
            stop = at + length
            if stop <= bound and vr in _PLAIN and not (top and tag in _TOP_TAGS):
                pos = stop
            else:
                pos = self._value(tag, vr, length, at, end, depth, top)
        return pos

    def _value(self, tag: int, vr: str | None, length: int, at: int, end: int | None,
               depth: int, top: bool) -> int:
        """Walk one element's value; return the offset after it."""
        if vr == "SQ" or (length == UNDEFINED and vr in (None, "UN")):
            if vr == "UN":  # PS3.5 6.2.2: an undefined-length UN is an implicit VR LE sequence
                return self._implicit_sequence(tag, at, end, depth)
            return self._sequence(tag, at, length, end, depth + 1)
        if length == UNDEFINED:
            if top and tag == _PIXEL_DATA:
                self.pixel = (tag, vr, length)
                return self._fragments(at)
            raise Malformed(f"{_name(tag)} {vr} has an undefined length")
        if top and tag in _WANTED and length <= 64:
            # Read before _fits: an inflated data set is only read forwards.
            self.values[tag] = (vr, self.read(at, length))
        stop = self._fits(tag, at, length, end, top)
        unit = UNIT_SIZES.get(vr)  # type: ignore[arg-type]
        if unit and length % unit:
            raise Malformed(f"{_name(tag)} {vr} of {length} bytes is not a whole number of values")
        if top and tag in _PIXEL_TAGS:
            self.pixel = (tag, vr, length)
        return stop

    def _fits(self, tag: int, at: int, length: int, end: int | None, top: bool) -> int:
        """The end of a value of ``length`` at ``at``; Truncated if the object
        ends before it, Malformed if its item or sequence does."""
        stop = at + length
        if self.size is not None and stop > self.size:
            raise Truncated(f"truncated DICOM object: {_name(tag)} needs {length} bytes, "
                            f"{max(self.size - at, 0)} present")
        if end is not None and stop > end:
            raise Malformed(f"{_name(tag)} runs past the end of its item")
        if self.size is None and length and len(self.read(stop - 1, 1)) != 1:
            raise Truncated(f"truncated DICOM object: {_name(tag)} needs {length} bytes")
        return stop

    def _sequence(self, tag: int, at: int, length: int, end: int | None, depth: int) -> int:
        """Walk the items of a sequence whose first item is at ``at``."""
        if depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH}")
        seq_end = None if length == UNDEFINED else self._fits(tag, at, length, end, False)
        pos = at
        while seq_end is None or pos < seq_end:
            head = self.read(pos, 8)
            if len(head) < 8:
                raise Truncated(f"truncated DICOM object: sequence {_name(tag)} is not closed")
            g, e, item_length = struct.unpack_from(self.endian + "HHL", head)
            item = g << 16 | e
            if item == _SEQUENCE_END and seq_end is None:
                return pos + 8
            if item != _ITEM:
                raise Malformed(f"sequence {_name(tag)} holds {_name(item)} where an item belongs")
            if item_length == UNDEFINED:
                pos = self.dataset(pos + 8, None, depth)
            else:
                pos = self.dataset(pos + 8, self._fits(tag, pos + 8, item_length, seq_end, False),
                                   depth)
        return pos

    def _implicit_sequence(self, tag: int, at: int, end: int | None, depth: int) -> int:
        implicit, endian = self.implicit, self.endian
        self.implicit, self.endian = True, "<"
        try:
            return self._sequence(tag, at, UNDEFINED, end, depth + 1)
        finally:
            self.implicit, self.endian = implicit, endian

    def _fragments(self, pos: int) -> int:
        """Walk encapsulated Pixel Data (PS3.5 A.4): items, always little
        endian, skipped over, to the sequence delimiter."""
        items = 0
        while True:
            head = self.read(pos, 8)
            if len(head) < 8:
                raise Truncated("truncated DICOM object: encapsulated Pixel Data has no end")
            g, e, length = struct.unpack_from("<HHL", head)
            tag = g << 16 | e
            if tag == _SEQUENCE_END:
                if length != 0:  # PS3.5 7.5: a delimiter's length is 0
                    raise Malformed("malformed encapsulated Pixel Data: its sequence "
                                    "delimiter has a length")
                self.fragments = max(items - 1, 0)  # the first item is the offset table
                return pos + 8
            if tag != _ITEM or length == UNDEFINED:
                raise Malformed("malformed encapsulated Pixel Data")
            items += 1
            pos = self._fits(_PIXEL_DATA, pos + 8, length, None, True)

    # -- top-level values ------------------------------------------------

    def text(self, tag: int) -> str | None:
        found = self.values.get(tag)
        if found is None:
            return None
        return found[1].decode("ascii", "replace").strip("\0 ") or None

    def number(self, tag: int) -> int | None:
        """A US value (its first), or an IS value; None when absent or empty."""
        found = self.values.get(tag)
        if found is None or not found[1]:
            return None
        vr, raw = found
        if vr in ("US", "SS", "US or SS") or (vr is None and len(raw) == 2):
            return struct.unpack_from(self.endian + "H", raw)[0] if len(raw) >= 2 else None
        text = raw.decode("ascii", "replace").strip("\0 ").split("\\")[0].strip()
        return int(text) if text else None  # ValueError: not a number


def _check_pixels(walk: _Walk, tsuid: str, media_sop_class: str | None) -> None:
    """The Pixel Data rules of the module docstring; the file meta's Media
    Storage SOP Class stands in for a data set that lacks its own."""
    sop_class = walk.text(_SOP_CLASS) or media_sop_class
    image = _is_image_class(sop_class)
    if walk.pixel is None:
        if image:
            raise NotItsSopClass(f"{UID(sop_class).name} without Pixel Data")
        return
    tag, _, length = walk.pixel
    if length == UNDEFINED and walk.fragments < 1:
        raise Malformed("encapsulated Pixel Data without a fragment")
    try:
        rows, columns = walk.number(_ROWS), walk.number(_COLUMNS)
        bits, samples, frames = walk.number(_BITS_ALLOCATED), walk.number(_SAMPLES), walk.number(_FRAMES)
    except ValueError:
        if image:
            raise Malformed("an Image Pixel attribute is not a number") from None
        return  # an odd object of another kind: its pixel data is not counted
    if image:
        _check_image_pixel_module(rows, columns, bits, samples)
    if length == UNDEFINED or is_encapsulated(tsuid):
        return  # fragments, or a defined length under an encapsulated syntax: nothing to count
    if rows is None or columns is None or bits is None:
        return  # not an image: its pixel data is not counted
    samples = samples or 1
    if frames is None:
        frames = 1
    elif frames < 1:
        raise Malformed(f"Number of Frames {frames}")
    per_pixel = samples
    if samples == 3 and (walk.text(_PHOTOMETRIC) or "").startswith(("YBR_FULL_422", "YBR_PARTIAL_422")):
        per_pixel = 2  # PS3.5 8.2.3 / PS3.3 C.7.6.3.1.2: two Y per Cb Cr pair
    needed = (rows * columns * frames * per_pixel * bits + 7) // 8
    if length < needed:
        raise Malformed(
            f"{_name(tag)} has {length} bytes; {rows} rows x {columns} columns x {samples} "
            f"samples x {bits} bits x {frames} frames need {needed}"
        )


def _check_image_pixel_module(rows: int | None, columns: int | None, bits: int | None,
                              samples: int | None) -> None:
    """The Image Pixel Module's values an image cannot be shown without (PS3.3
    C.7.6.3.1): Rows, Columns, Samples per Pixel and Bits Allocated are Type 1
    and non-zero, and Bits Allocated is 1 or a multiple of 8.  A zero would
    also make any Pixel Data "fit", so the size rule alone cannot catch it."""
    if rows is None or columns is None or bits is None or samples is None:
        raise NotItsSopClass("Pixel Data without Rows, Columns, Samples per Pixel and Bits Allocated")
    if not (rows and columns and samples):
        raise NotItsSopClass(f"an image of {rows} rows x {columns} columns x {samples} samples")
    if bits != 1 and (bits == 0 or bits % 8):
        raise NotItsSopClass(f"Bits Allocated {bits}: neither 1 nor a multiple of 8")


def _is_image_class(sop_class: str | None) -> bool:
    """True for the storage SOP classes whose IOD requires Pixel Data."""
    if not sop_class:
        return False
    return sop_class in _MORE_IMAGE_CLASSES or "Image Storage" in UID(sop_class).name


def _name(tag: int) -> str:
    if tag == _PIXEL_DATA:
        return "Pixel Data"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
