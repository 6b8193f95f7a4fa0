"""C-FIND answers of the Modality Worklist as encoded bytes, assembled from element bytes
encoded once per worklist item.

Pure: no I/O, no logging, no module state (the caches live on the items they describe).

Building a pydicom ``Dataset`` for every answer and having pydicom encode it costs about
0.4 ms per answer, most of a worklist query's time. Here each element of an item is encoded
once, by pydicom itself (so the bytes are what :func:`~appliance.worklist.matching.answer`
and pynetdicom would have produced), the first time the item is answered in a transfer
syntax; an answer is then the requested elements' bytes joined, with the headers of
sequences and their items computed. A changed ``.wl`` file is a new item object with an
empty cache, so nothing stale is ever answered.

Only Little Endian transfer syntaxes (Implicit and Explicit VR) are assembled; the rest
(Explicit VR Big Endian, Deflated) and the rare item or key with an ambiguous VR
("US or SS") return ``None``: the caller then answers with the pydicom path.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from appliance.worklist.matching import SPECIFIC_CHARACTER_SET, Attrs, Query, ReturnKey

__all__ = ["ItemBytes", "answer_bytes", "encode_item"]

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_LONG_VRS = frozenset(EXPLICIT_VR_LENGTH_32)


class NotEncodable(Exception):
    """An element this module does not assemble (the pydicom path answers instead)."""


@dataclass(frozen=True)
class ItemBytes:
    """The elements of one attribute map, encoded in one transfer syntax.

    ``elements``: tag -> the whole element (tag, VR, length, value) for every attribute,
    sequences included (a whole sequence as :func:`~appliance.worklist.matching.answer`
    returns it for a key without an item). ``items``: sequence tag -> the encoded items of
    that sequence, for keys that restrict a sequence to its matching items.
    """

    elements: Mapping[int, bytes]
    items: Mapping[int, tuple["ItemBytes", ...]]
    charset_element: bytes = b""  # Specific Character Set of the answer (top level only)


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    """A data element header (PS3.5 7.1.1 explicit, 7.1.2 implicit VR, Little Endian)."""
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), length)


def _sequence(tag: int, items: list[bytes], implicit: bool) -> bytes:
    """A sequence element of defined length whose items have defined lengths (as pydicom
    writes a new Dataset's sequences)."""
    body = b"".join(_ITEM + struct.pack("<I", len(item)) + item for item in items)
    return _header(tag, "SQ", len(body), implicit) + body


def _leaf(tag: int, vr: str, values: tuple, encodings: list[str], implicit: bool) -> bytes:
    """One non-sequence element, encoded by pydicom exactly as in a whole answer."""
    if len(vr) != 2:  # ambiguous VR: pydicom resolves it from the rest of the dataset
        raise NotEncodable(tag)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    value = None if not values else values[0] if len(values) == 1 else list(values)
    write_data_element(fp, DataElement(tag, vr, value), encodings)
    return fp.getvalue()


def _encode(attrs: Attrs, encodings: list[str], implicit: bool) -> ItemBytes:
    elements: dict[int, bytes] = {}
    items: dict[int, tuple[ItemBytes, ...]] = {}
    for tag in sorted(attrs):
        vr, values, _ = attrs[tag]
        if vr == "SQ":
            subs = tuple(_encode(sub, encodings, implicit) for sub in values)
            items[tag] = subs
            # Only the top level carries a Specific Character Set (matching._dataset).
            elements[tag] = _sequence(tag, [b"".join(v for t, v in s.elements.items()
                                                     if t != SPECIFIC_CHARACTER_SET)
                                            for s in subs], implicit)
        else:
            elements[tag] = _leaf(tag, vr, values, encodings, implicit)
    return ItemBytes(elements, items)


def encode_item(attrs: Attrs, charset: str | None, implicit: bool) -> ItemBytes | None:
    """The encoded elements of a worklist item whose answers are written in ``charset``
    (see :func:`~appliance.worklist.matching.answer_charset`); None if an element cannot
    be assembled here."""
    encodings = convert_encodings(charset or default_encoding)
    try:
        encoded = _encode(attrs, encodings, implicit)
    except NotEncodable:
        return None
    if not charset:
        return encoded
    element = _leaf(SPECIFIC_CHARACTER_SET, "CS", (charset,), encodings, implicit)
    return ItemBytes(encoded.elements, encoded.items, element)


def answer_bytes(query: Query, attrs: Attrs, encoded: ItemBytes, implicit: bool) -> bytes | None:
    """The encoded C-FIND response identifier for a matching item: byte for byte what
    :func:`~appliance.worklist.matching.answer` encodes to (every requested key, with the
    item's value or empty; a sequence key with an item keeps only the sequence items that
    match it, each with only the keys asked for; the Specific Character Set). ``encoded``
    is :func:`encode_item` of the item in the same transfer syntax. None if a key has an
    ambiguous VR."""
    parts: list[tuple[int, bytes]] = []
    if encoded.charset_element:
        parts.append((SPECIFIC_CHARACTER_SET, encoded.charset_element))
    try:
        _fill(parts, query.keys, attrs, encoded, implicit)
    except NotEncodable:
        return None
    parts.sort(key=lambda part: part[0])  # PS3.5 7.1: ascending tag order
    return b"".join(data for _, data in parts)


def _fill(parts: list[tuple[int, bytes]], keys: tuple[ReturnKey, ...], attrs: Attrs,
          encoded: ItemBytes, implicit: bool) -> None:
    for key in keys:
        tag = key.tag
        have = attrs.get(tag)
        if key.vr == "SQ":
            if have is None or have[0] != "SQ":
                parts.append((tag, _header(tag, "SQ", 0, implicit)))
            elif key.sub is None:
                parts.append((tag, encoded.elements[tag]))
            else:
                parts.append((tag, _sequence(tag, _matching_items(key.sub, have[1],
                                                                  encoded.items[tag], implicit),
                                             implicit)))
        elif have is None or have[0] == "SQ":
            if len(key.vr) != 2:
                raise NotEncodable(tag)
            parts.append((tag, _header(tag, key.vr, 0, implicit)))
        else:
            parts.append((tag, encoded.elements[tag]))


def _matching_items(sub: Query, items: tuple, encoded: tuple[ItemBytes, ...],
                    implicit: bool) -> list[bytes]:
    out = []
    for attrs, item_bytes in zip(items, encoded):
        if sub.matches(attrs):
            parts: list[tuple[int, bytes]] = []
            _fill(parts, sub.keys, attrs, item_bytes, implicit)
            parts.sort(key=lambda part: part[0])
            out.append(b"".join(data for _, data in parts))
    return out
