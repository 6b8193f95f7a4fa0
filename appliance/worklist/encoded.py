"""C-FIND answers of the Modality Worklist as encoded bytes, assembled from value bytes
encoded once per worklist item.

Pure: no I/O, no logging, no module state.

Building a pydicom ``Dataset`` for every answer and having pydicom encode it costs about
0.4 ms per answer, most of a worklist query's time. Here every value of an item is encoded
once, when its file is read (:func:`encode_values`), into the bytes pydicom writes for it
in the item's answer character set: the same bytes in Implicit and Explicit VR Little
Endian, so one copy serves both. An answer is then the requested values with their element
headers, and the headers of sequences and their items, computed per transfer syntax: byte
for byte what :func:`~appliance.worklist.matching.answer` and pynetdicom would have
produced (tests/worklist/test_answers.py compares them).

Text values are encoded here with the answer character set's codec (pydicom's own rule for
a single, stateless character set: the values joined with ``\\``, padded to an even
length); every other value (numbers, DS/IS, names with component groups, anything that does
not encode that way) is encoded by pydicom itself. Only Little Endian transfer syntaxes are
assembled; the rest (Explicit VR Big Endian, Deflated) and the rare item or key with an
ambiguous VR ("US or SS") return ``None``: the caller then answers with the pydicom path.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from pydicom.charset import convert_encodings, custom_encoders, default_encoding
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from appliance.dicomfile.vr import LONG_VRS
from appliance.worklist.matching import SPECIFIC_CHARACTER_SET, Attrs, Query, ReturnKey

__all__ = ["Headers", "Values", "answer_bytes", "encode_values"]

Values = Mapping[int, "bytes | None | tuple"]
"""Per tag of an attribute map: the encoded value (``None``: not assembled here, ask
pydicom); for a sequence, a tuple of the items' ``Values``."""

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_PACK_TAG = struct.Struct("<HH").pack
_PACK_U16 = struct.Struct("<H").pack
_PACK_U32 = struct.Struct("<I").pack
_LATIN1 = frozenset("AE AS CS DA DT TM UI UR".split())  # pydicom's write_string (default encoding)
_TEXT = frozenset("LO LT SH ST UC UT".split())  # pydicom's write_text (the character set)


class NotEncodable(Exception):
    """An element this module does not assemble (the pydicom path answers instead)."""


# --------------------------------------------------------------------------- per item


def encode_values(attrs: Attrs, charset: str | None) -> dict:
    """The encoded values of a worklist item whose answers are written in ``charset``
    (see :func:`~appliance.worklist.matching.answer_charset`)."""
    encodings = convert_encodings(charset or default_encoding)
    codec = encodings[0] if len(encodings) == 1 and encodings[0] not in custom_encoders else None
    return _encode(attrs, encodings, codec)


def _encode(attrs: Attrs, encodings: list[str], codec: str | None) -> dict:
    out: dict = {}
    for tag, attr in attrs.items():
        vr, values = attr[0], attr[1]
        if vr == "SQ":
            out[tag] = tuple(_encode(item, encodings, codec) for item in values)
        else:
            out[tag] = _value(tag, vr, values, encodings, codec)
    return out


def _value(tag: int, vr: str, values: tuple, encodings: list[str], codec: str | None) -> bytes | None:
    if not values:
        return b""
    if type(values[0]) is str:
        try:
            if vr in _LATIN1:
                data = "\\".join(values).encode("latin-1")
                return data + (b"\0" if vr == "UI" else b" ") if len(data) & 1 else data
            if codec is not None and (vr in _TEXT or (vr == "PN" and not any(
                    "=" in v for v in values))):
                data = "\\".join(values).encode(codec)
                return data + b" " if len(data) & 1 else data
        except (UnicodeError, TypeError):
            pass  # pydicom decides (replacement characters, escape sequences, ...)
    if len(vr) != 2:  # ambiguous VR: pydicom resolves it from the rest of the dataset
        return None
    try:
        return _leaf(tag, vr, values, encodings, True)[8:]  # implicit VR: an 8-byte header
    except Exception:  # noqa: BLE001 - a value pydicom cannot write: the pydicom path says so
        return None


def _leaf(tag: int, vr: str, values: tuple, encodings: list[str], implicit: bool) -> bytes:
    """One non-sequence element, encoded by pydicom exactly as in a whole answer."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    value = None if not values else values[0] if len(values) == 1 else list(values)
    write_data_element(fp, DataElement(tag, vr, value), encodings)
    return fp.getvalue()


# --------------------------------------------------------------------------- answers


class Headers(dict):
    """The start of every element header (tag, VR, reserved bytes) in one transfer syntax,
    each made once: a query's answers share one (see :func:`answer_bytes`)."""

    def __init__(self, implicit: bool) -> None:
        super().__init__()
        self.implicit = implicit

    def __missing__(self, key: tuple[int, str]) -> tuple[bytes, bool]:
        tag, vr = key
        if self.implicit:
            made = (_PACK_TAG(tag >> 16, tag & 0xFFFF), True)
        elif vr in LONG_VRS:
            made = (_PACK_TAG(tag >> 16, tag & 0xFFFF) + vr.encode("ascii") + b"\0\0", True)
        else:
            made = (_PACK_TAG(tag >> 16, tag & 0xFFFF) + vr.encode("ascii"), False)
        self[key] = made
        return made

    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        """A data element (PS3.5 7.1.1 explicit, 7.1.2 implicit VR, Little Endian)."""
        start, long_length = self[tag, vr]
        if long_length:
            return start + _PACK_U32(len(value)) + value
        if len(value) > 0xFFFF:
            raise NotEncodable(tag)  # pydicom cannot write it either
        return start + _PACK_U16(len(value)) + value


def _sequence(tag: int, items: list[bytes], headers: Headers) -> bytes:
    """A sequence element of defined length whose items have defined lengths (as pydicom
    writes a new Dataset's sequences)."""
    body = b"".join(_ITEM + _PACK_U32(len(item)) + item for item in items)
    return headers.element(tag, "SQ", body)


def answer_bytes(query: Query, attrs: Attrs, values: Values, charset: str | None,
                 implicit: bool, headers: Headers | None = None) -> bytes | None:
    """The encoded C-FIND response identifier for a matching item: byte for byte what
    :func:`~appliance.worklist.matching.answer` encodes to (every requested key, with the
    item's value or empty; a sequence key with an item keeps only the sequence items that
    match it, each with only the keys asked for; the Specific Character Set ``charset``).
    ``values`` is :func:`encode_values` of the item in that character set; ``headers``, if
    given, those of the query's transfer syntax (``implicit``), shared by its answers. None
    if a value or key is not assembled here (ambiguous VR)."""
    if headers is None:
        headers = Headers(implicit)
    parts: list[tuple[int, bytes]] = []
    if charset:
        value = charset.encode("latin-1")
        parts.append((SPECIFIC_CHARACTER_SET, headers.element(
            SPECIFIC_CHARACTER_SET, "CS", value + b" " if len(value) & 1 else value)))
    try:
        _fill(parts, query.keys, attrs, values, headers)
    except NotEncodable:
        return None
    parts.sort()  # PS3.5 7.1: ascending tag order (tags are unique: bytes never compared)
    return b"".join([data for _, data in parts])


def _fill(parts: list[tuple[int, bytes]], keys: tuple[ReturnKey, ...], attrs: Attrs,
          values: Values, headers: Headers) -> None:
    for key in keys:
        tag = key.tag
        have = attrs.get(tag)
        if key.vr == "SQ":
            if have is None or have[0] != "SQ":
                parts.append((tag, headers.element(tag, "SQ", b"")))
            elif key.sub is None:
                parts.append((tag, _sequence(tag, [_whole(item, item_values, headers)
                                                   for item, item_values
                                                   in zip(have[1], values[tag])], headers)))
            else:
                parts.append((tag, _sequence(tag, _matching_items(key.sub, have[1], values[tag],
                                                                  headers), headers)))
        elif have is None or have[0] == "SQ":
            if len(key.vr) != 2:
                raise NotEncodable(tag)
            parts.append((tag, headers.element(tag, key.vr, b"")))
        else:
            value = values[tag]
            if value is None:
                raise NotEncodable(tag)
            parts.append((tag, headers.element(tag, have[0], value)))


def _whole(attrs: Attrs, values: Values, headers: Headers) -> bytes:
    """Every element of a sequence item (only the top level carries a Specific Character
    Set, as :func:`~appliance.worklist.matching.answer` writes it)."""
    out = []
    for tag in sorted(attrs):
        if tag == SPECIFIC_CHARACTER_SET:
            continue
        attr = attrs[tag]
        if attr[0] == "SQ":
            out.append(_sequence(tag, [_whole(item, item_values, headers)
                                       for item, item_values in zip(attr[1], values[tag])],
                                 headers))
        else:
            value = values[tag]
            if value is None:
                raise NotEncodable(tag)
            out.append(headers.element(tag, attr[0], value))
    return b"".join(out)


def _matching_items(sub: Query, items: tuple, values: tuple, headers: Headers) -> list[bytes]:
    out = []
    for attrs, item_values in zip(items, values):
        if sub.matches(attrs):
            parts: list[tuple[int, bytes]] = []
            _fill(parts, sub.keys, attrs, item_values, headers)
            parts.sort()
            out.append(b"".join([data for _, data in parts]))
    return out
