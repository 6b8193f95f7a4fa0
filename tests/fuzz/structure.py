"""The harness's own oracle: is a data set whole? (PS3.5 7.1-7.5, A.4)

Independent of the appliance's readers on purpose: the fuzz harness judges
every object the daemon acknowledged with this walk of the bytes it sent.

:func:`judge` walks a data set's bytes in its transfer syntax and gives one of

* ``WHOLE``: every element complete, sequences and items closed, nothing
  left over, tags ascending, and (for an image storage SOP class) Pixel Data
  whose length fits Rows x Columns x Samples per Pixel x Bits Allocated x
  Number of Frames, or a well-formed encapsulated sequence with a fragment;
* ``BROKEN``: no reading makes it whole: cut inside an element, a value or
  item that overruns its container, an unknown VR, an undefined length on an
  element that is not a sequence (nor encapsulated Pixel Data, nor UN), an
  unclosed sequence or item, an image without Pixel Data or with fewer pixel
  bytes than its attributes say. Acknowledging one is a bug;
* ``DUBIOUS``: complete but not as PS3.5 says (tags out of order or
  duplicated, odd lengths, implicit VR elements amid explicit ones, pixel
  attributes that cannot be worked out or more pixel bytes than needed):
  storing or refusing it are both fine.

The walk is iterative (a stack, not recursion), so thousands of nested
sequences are judged like anything else.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

WHOLE, DUBIOUS, BROKEN = "whole", "dubious", "broken"

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00008, 0x7FE00009
TRAILING_PADDING = 0xFFFCFFFC

# PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED, EXPLICIT_BE})


@dataclass
class Element:
    """A top-level element: where its header and value are in the bytes."""

    tag: int
    vr: str            # "" when implicit and unknown to the dictionary
    start: int         # first byte of the tag
    value: int         # first byte of the value
    length: int        # as encoded (UNDEFINED for undefined length)
    end: int           # one past its last byte (delimiters included)


@dataclass
class Verdict:
    kind: str
    reasons: list[str] = field(default_factory=list)
    elements: list[Element] = field(default_factory=list)   # top level, in order
    depth: int = 0                                          # deepest nesting seen

    def __str__(self) -> str:
        return self.kind + (f" ({'; '.join(self.reasons[:3])})" if self.reasons else "")


class _Broken(Exception):
    pass


class _Frame:
    """One open container: a data set (top level or an item) or a sequence."""

    __slots__ = ("kind", "end", "implicit", "little", "last_tag", "item")

    def __init__(self, kind: str, end: int | None, implicit: bool, little: bool,
                 item: bool = False) -> None:
        self.kind = kind          # "dataset" | "sequence"
        self.end = end            # None: undefined length (ends with a delimiter)
        self.implicit = implicit
        self.little = little
        self.last_tag = -1
        self.item = item          # a data set that is an item (may end with ITEM_END)


def _implicit_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def is_image_storage(sop_class: str) -> bool:
    """An image storage SOP class (by its registered name), which must carry Pixel Data."""
    name = UID(sop_class).name if sop_class else ""
    return "Image Storage" in name and "Storage Commitment" not in name


def walk(data: bytes | memoryview, *, implicit: bool, little: bool, top: list[Element],
         dubious: list[str]) -> int:
    """Walk a whole data set; fill ``top`` with its top-level elements and
    ``dubious`` with what is complete but irregular; return the deepest
    nesting. Raises _Broken with the reason."""
    end_all = len(data)
    stack = [_Frame("dataset", end_all, implicit, little)]
    pos = 0
    deepest = 0
    while True:
        frame = stack[-1]
        limit = frame.end if frame.end is not None else end_all
        if frame.end is not None and pos == frame.end:
            stack.pop()
            if not stack:
                return deepest
            continue
        if pos == end_all:
            raise _Broken(f"{'sequence' if frame.kind == 'sequence' else 'item'} not closed "
                          f"at the end of the data (depth {len(stack) - 1})")
        if limit - pos < 8:
            raise _Broken(f"cut inside an element header at offset {pos}")
        e = "<" if frame.little else ">"
        group, elem = struct.unpack_from(e + "HH", data, pos)
        tag = group << 16 | elem
        if tag in (ITEM, ITEM_END, SEQ_END):
            (length,) = struct.unpack_from(e + "L", data, pos + 4)
            if frame.kind == "sequence":
                if tag == SEQ_END:
                    if frame.end is not None:
                        raise _Broken(f"sequence delimiter in a defined-length sequence at {pos}")
                    if length != 0:  # PS3.5 7.5.2 says 0; readers ignore it (no value follows)
                        dubious.append(f"sequence delimiter of length {length} at {pos}")
                    pos += 8
                    stack.pop()
                    continue
                if tag == ITEM_END:
                    raise _Broken(f"item delimiter outside an item at {pos}")
                # An item: a nested data set.
                pos += 8
                if length == UNDEFINED:
                    stack.append(_Frame("dataset", None, frame.implicit, frame.little, item=True))
                else:
                    if pos + length > limit:
                        raise _Broken(f"item of {length} bytes overruns its sequence at {pos - 8}")
                    stack.append(_Frame("dataset", pos + length, frame.implicit, frame.little,
                                        item=True))
                deepest = max(deepest, len(stack) // 2)
                continue
            if tag == ITEM_END and frame.item and frame.end is None:
                if length != 0:  # as above
                    dubious.append(f"item delimiter of length {length} at {pos}")
                pos += 8
                stack.pop()
                continue
            raise _Broken(f"item tag ({group:04X},{elem:04X}) where an element belongs, at {pos}")
        if frame.kind == "sequence":
            raise _Broken(f"element ({group:04X},{elem:04X}) inside a sequence, not in an item, "
                          f"at {pos}")
        if tag < frame.last_tag:
            dubious.append(f"({group:04X},{elem:04X}) out of order at {pos}")
        elif tag == frame.last_tag:
            dubious.append(f"({group:04X},{elem:04X}) duplicated at {pos}")
        frame.last_tag = max(frame.last_tag, tag)
        start = pos
        if frame.implicit:
            (length,) = struct.unpack_from(e + "L", data, pos + 4)
            vr = _implicit_vr(tag)
            pos += 8
        else:
            vr_bytes = bytes(data[pos + 4:pos + 6])
            if vr_bytes in SHORT_VRS:
                (length,) = struct.unpack_from(e + "H", data, pos + 6)
                pos += 8
            elif vr_bytes in LONG_VRS:
                if limit - pos < 12:
                    raise _Broken(f"cut inside an element header at offset {pos}")
                (length,) = struct.unpack_from(e + "L", data, pos + 8)
                pos += 12
            elif vr_bytes.isalpha():
                raise _Broken(f"unknown VR {vr_bytes!r} of ({group:04X},{elem:04X}) at {pos}")
            else:
                # Not letters: an implicit VR element amid explicit ones. Some writers
                # emit them and pydicom reads them; the appliance takes them (a choice
                # made in appliance.dicomfile.structure), so complete ones are dubious.
                (length,) = struct.unpack_from(e + "L", data, pos + 4)
                dubious.append(f"implicit VR element ({group:04X},{elem:04X}) in an explicit "
                               f"syntax at {pos}")
                pos += 8
                vr_bytes = _implicit_vr(tag).encode("ascii")
            vr = vr_bytes.decode("ascii")
        record = len(stack) == 1
        if length == UNDEFINED:
            if tag in (PIXEL_DATA,) and vr in ("OB", "OW", "UN", "", "OB or OW"):
                pos = _fragments(data, pos, limit, frame.little, top if record else None, start,
                                 dubious)
                continue
            if vr == "SQ" or (frame.implicit and (vr == "" or (group & 1))):
                if record:
                    top.append(Element(tag, vr or "SQ", start, pos, length, -1))
                stack.append(_Frame("sequence", None, frame.implicit, frame.little))
                continue
            if vr == "UN":  # PS3.5 6.2.2: a sequence of unknown VR, encoded implicit LE
                if record:
                    top.append(Element(tag, vr, start, pos, length, -1))
                stack.append(_Frame("sequence", None, True, True))
                continue
            raise _Broken(f"undefined length on ({group:04X},{elem:04X}) {vr or 'implicit'}, "
                          f"not a sequence, at {start}")
        if pos + length > limit:
            raise _Broken(f"value of ({group:04X},{elem:04X}) ({length} bytes) overruns "
                          f"its container at {start}")
        if length % 2:
            dubious.append(f"odd length {length} of ({group:04X},{elem:04X}) at {start}")
        if record:
            top.append(Element(tag, vr, start, pos, length, pos + length))
        if vr == "SQ":
            stack.append(_Frame("sequence", pos + length, frame.implicit, frame.little))
            continue
        pos += length


def _fragments(data, pos: int, limit: int, little: bool, top: list[Element] | None,
               start: int, dubious: list[str]) -> int:
    """Encapsulated Pixel Data (PS3.5 A.4): items of defined length, then the delimiter."""
    e = "<" if little else ">"
    items = 0
    while True:
        if limit - pos < 8:
            raise _Broken(f"encapsulated Pixel Data cut after {items} items")
        group, elem, length = struct.unpack_from(e + "HHL", data, pos)
        tag = group << 16 | elem
        if tag == SEQ_END:
            if length != 0:
                dubious.append(f"Pixel Data delimiter of length {length}")
            pos += 8
            break
        if tag != ITEM:
            raise _Broken(f"({group:04X},{elem:04X}) inside encapsulated Pixel Data at {pos}")
        if length == UNDEFINED or pos + 8 + length > limit:
            raise _Broken(f"Pixel Data fragment of {length:#x} bytes overruns at {pos}")
        pos += 8 + length
        items += 1
    if top is not None:
        top.append(Element(PIXEL_DATA, "OB", start, -1, UNDEFINED, pos))
        top[-1].fragments = items  # type: ignore[attr-defined]
    return pos


def _us(data, el: Element, little: bool) -> int | None:
    if el.length != 2:
        return None
    return struct.unpack_from("<H" if little else ">H", data, el.value)[0]


def _is(data, el: Element) -> int | None:
    try:
        return int(bytes(data[el.value:el.end]).decode("ascii").strip(" \0"))
    except (ValueError, UnicodeDecodeError):
        return None


def _pixels(data, top: list[Element], ts: str, little: bool, image: bool) -> tuple[str, str]:
    """(kind, reason) of the pixel rule."""
    found = {el.tag: el for el in top}
    pixel = found.get(PIXEL_DATA) or found.get(FLOAT_PIXEL_DATA) or found.get(DOUBLE_PIXEL_DATA)
    if pixel is None:
        return (BROKEN, "an image without Pixel Data") if image else (WHOLE, "")
    encapsulated = ts not in NATIVE
    if pixel.length == UNDEFINED:
        if not encapsulated:
            return DUBIOUS, "encapsulated Pixel Data in a native transfer syntax"
        fragments = getattr(pixel, "fragments", 0) - 1  # after the Basic Offset Table
        if fragments < 1:
            return BROKEN, "encapsulated Pixel Data without a fragment"
        frames_el = found.get(0x00280008)
        frames = _is(data, frames_el) if frames_el is not None and frames_el.length else 1
        if frames is not None and frames > fragments:  # PS3.5 A.4: a fragment per frame at least
            return DUBIOUS, f"{frames} frames in {fragments} fragments"
        return WHOLE, ""
    rows, cols = found.get(0x00280010), found.get(0x00280011)
    bits = found.get(0x00280100)
    if rows is None or cols is None or bits is None:
        return DUBIOUS, "Rows, Columns or Bits Allocated missing"
    r, c, b = _us(data, rows, little), _us(data, cols, little), _us(data, bits, little)
    spp_el, frames_el = found.get(0x00280002), found.get(0x00280008)
    spp = _us(data, spp_el, little) if spp_el is not None else 1
    frames = _is(data, frames_el) if frames_el is not None and frames_el.length else 1
    if None in (r, c, b, spp, frames) or 0 in (r, c, b, spp) or frames < 1 \
            or (b != 1 and b % 8):
        return DUBIOUS, f"pixel attributes not usable: {r}x{c}x{spp} {b} bits {frames} frames"
    photometric = found.get(0x00280004)
    pi = bytes(data[photometric.value:photometric.end]).strip(b" \0") if photometric else b""
    per_frame_samples = r * c * (2 if pi in (b"YBR_FULL_422", b"YBR_PARTIAL_422") and spp == 3
                                 else spp)
    expected = (per_frame_samples * frames + 7) // 8 if b == 1 else \
        per_frame_samples * frames * (b // 8)
    if encapsulated:
        if pixel.length < expected:
            return BROKEN, (f"defined-length Pixel Data of {pixel.length} bytes in an "
                            "encapsulated syntax")
        return DUBIOUS, "defined-length Pixel Data in an encapsulated syntax"
    if pixel.length < expected:
        return BROKEN, f"Pixel Data of {pixel.length} bytes, attributes say {expected}"
    if pixel.length > expected + (expected & 1):
        return DUBIOUS, f"Pixel Data of {pixel.length} bytes, attributes say {expected}"
    return WHOLE, ""


def judge(data: bytes, ts: str, sop_class: str = "") -> Verdict:
    """The verdict on a data set (the bytes after the File Meta Information)."""
    little = ts != EXPLICIT_BE
    implicit = ts == IMPLICIT_LE
    if ts == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data)
        except zlib.error as e:
            return Verdict(BROKEN, [f"deflated stream damaged: {e}"])
        if not inflater.eof:
            return Verdict(BROKEN, ["deflated stream cut"])
    top: list[Element] = []
    dubious: list[str] = []
    try:
        depth = walk(memoryview(data), implicit=implicit, little=little, top=top, dubious=dubious)
    except _Broken as e:
        return Verdict(BROKEN, [str(e)], top)
    except struct.error as e:  # a header read past the end: cut
        return Verdict(BROKEN, [f"cut: {e}"], top)
    if not top:
        return Verdict(BROKEN, ["no element"], top)
    kind, reason = _pixels(data, top, ts, little, is_image_storage(sop_class))
    if kind == BROKEN:
        return Verdict(BROKEN, [reason], top, depth)
    reasons = dubious + ([reason] if reason else [])
    return Verdict(DUBIOUS if reasons else WHOLE, reasons, top, depth)


class Encoding(enum.Enum):
    """How a transfer syntax encodes elements (for the corpus's mutations)."""

    IMPLICIT_LE = (True, True)
    EXPLICIT_LE = (False, True)
    EXPLICIT_BE = (False, False)

    @classmethod
    def of(cls, ts: str) -> "Encoding":
        if ts == IMPLICIT_LE:
            return cls.IMPLICIT_LE
        if ts == EXPLICIT_BE:
            return cls.EXPLICIT_BE
        return cls.EXPLICIT_LE
