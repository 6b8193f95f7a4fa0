"""Pixel data and bulk values of stored Part-10 files, read without loading the object.

Blocking code for worker threads (no aiohttp here): the web handlers call it
through ``asyncio.to_thread``. Only the header is parsed; a frame is read at
its offset (native pixel data) or through the fragment items (encapsulated),
so memory follows the size of one frame, never the size of the object:

* :func:`read_layout` - where the pixel data is and how it is encoded;
* :func:`stored_frame` / :func:`decoded_frame` - one frame as stored or as
  uncompressed little endian bytes (PS3.18 8.7.3.3);
* :func:`transcode_to_explicit_le` - the whole instance in Explicit VR Little
  Endian (PS3.18 8.7.3.4), yielded as chunks, one frame at a time;
* :func:`element_value` - the value bytes of a bulk data element (PS3.18 8.7.3.3.1).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import encaps
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_data_element, write_dataset
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import Tag
from pydicom.uid import UID

from appliance.dicomfile import codestream, isolated, syntax
from appliance.dicomfile.header import InvalidObject, end_of_fragments

__all__ = [
    "PixelError",
    "PixelLayout",
    "can_decode",
    "can_transcode",
    "decoded_frame",
    "element_value",
    "encoded_frames",
    "read_layout",
    "stored_fragments",
    "stored_frame",
    "transcode_to_explicit_le",
]

# Pixel data elements (PS3.6): where pydicom's stop_before_pixels stops.
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
               0x7FE00009: "DoubleFloatPixelData"}
_UNDEFINED = 0xFFFFFFFF
_TRAILING_PADDING = 0xFFFCFFFC
_CHUNK = 1 << 20
# The largest frame decoded here. pydicom's decoders allocate what Rows x Columns x
# Samples x Bits Allocated announce before they look at the data, and the size of
# compressed pixel data says nothing about that: a 2 KB RLE object announcing
# 65535 x 65535 RGB made every thumbnail of it allocate 12 GB. 256 MiB is a
# 9000 x 9000 RGB or 11000 x 11000 16-bit frame; a clinic's largest (mammography,
# panoramic dental) are a tenth of that.
MAX_DECODED_FRAME = 256 << 20


class PixelError(Exception):
    """The pixel data cannot be provided as asked; ``str(e)`` says why (no patient data)."""


@dataclass(frozen=True)
class PixelLayout:
    """Where an instance's pixel data lies in its file and how it is encoded."""

    transfer_syntax: UID
    header: Dataset  # every element before the pixel data
    tag: int
    vr: str
    value_offset: int  # first byte of the value (the Basic Offset Table item if encapsulated)
    length: int | None  # value length; None when encapsulated (undefined length)
    end_offset: int  # first byte after the element
    number_of_frames: int

    @property
    def encapsulated(self) -> bool:
        """True for encapsulated (compressed) pixel data."""
        return self.length is None

    @property
    def keyword(self) -> str:
        """PixelData, FloatPixelData or DoubleFloatPixelData."""
        return _PIXEL_TAGS[self.tag]

    def options(self, **overrides: Any) -> dict[str, Any]:
        """Decoding options for pydicom's pixel decoders."""
        opts = as_pixel_options(self.header, transfer_syntax_uid=self.transfer_syntax,
                                pixel_keyword=self.keyword, pixel_vr=self.vr,
                                number_of_frames=self.number_of_frames)
        opts.update(overrides)
        return opts

    def frame_length(self) -> int | None:
        """Bytes per native frame, or None when frames are not byte aligned (1-bit data)."""
        ds = self.header
        samples = _int(ds, "SamplesPerPixel", 1)
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            samples = 2  # Y Y Cb Cr for each pair of pixels (PS3.3 C.7.6.3.1.2)
        bits = {"OF": 32, "OD": 64}.get(self.vr, _int(ds, "BitsAllocated", 8))
        frame_bits = _int(ds, "Rows", 0) * _int(ds, "Columns", 0) * samples * bits
        if frame_bits == 0 or frame_bits % 8:
            return None
        return frame_bits // 8


    def check_decodable(self) -> None:
        """PixelError if a frame, decoded, would exceed MAX_DECODED_FRAME bytes."""
        ds = self.header
        bits = {"OF": 32, "OD": 64}.get(self.vr, _int(ds, "BitsAllocated", 8))
        size = (_int(ds, "Rows", 0) * _int(ds, "Columns", 0)
                * max(_int(ds, "SamplesPerPixel", 1), 1) * max((bits + 7) // 8, 1))
        if size > MAX_DECODED_FRAME:
            raise PixelError(f"a decoded frame would take {size} bytes (Rows, Columns, Samples "
                             f"per Pixel, Bits Allocated); {MAX_DECODED_FRAME} at most here")


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def can_decode(ts: str) -> bool:
    """True if a decoder for this transfer syntax's pixel data is installed."""
    if not syntax.is_encapsulated(ts):
        return True
    if syntax.is_video(ts):
        return False
    try:
        return get_decoder(UID(ts)).is_available
    except NotImplementedError:
        return False


def can_transcode(ts: str) -> bool:
    """True if an instance stored in ``ts`` can be sent in Explicit VR Little Endian."""
    return ts in (syntax.IMPLICIT_LE, syntax.EXPLICIT_LE, syntax.EXPLICIT_BE,
                  syntax.DEFLATED_LE) or can_decode(ts)


# --------------------------------------------------------------------------- layout


def read_layout(f: BinaryIO) -> PixelLayout:
    """Parse the header of the open Part-10 file ``f`` and locate its pixel data.

    Raises :class:`PixelError` when there is none, or when it is deflated
    (no offsets to seek to).
    """
    layout = _locate(f, _read_header(f))
    if layout is None:
        raise PixelError("the instance has no pixel data")
    return layout


def _read_header(f: BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(f, stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - a file the index points to but pydicom refuses
        raise PixelError(f"unreadable object: {type(e).__name__}") from None


def _locate(f: BinaryIO, ds: Dataset) -> PixelLayout | None:
    """The layout of the pixel data element at ``f``'s position (just after
    ``ds``, the header read with stop_before_pixels), or None if there is none."""
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if ts == syntax.DEFLATED_LE:
        raise PixelError("pixel data of a deflated object cannot be read by offset")
    start = f.tell()
    head = f.read(12)
    endian = ">" if ts == syntax.EXPLICIT_BE else "<"
    if len(head) < 8:
        return None
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        return None
    if ts == syntax.IMPLICIT_LE or not head[4:6].isalpha():
        length = struct.unpack(endian + "L", head[4:8])[0]
        value_at = start + 8
        vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(
            tag, "OW" if _int(ds, "BitsAllocated", 8) > 8 else "OB")
    else:
        vr = head[4:6].decode("ascii")
        length = struct.unpack(endian + "L", head[8:12])[0]
        value_at = start + 12
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    if length != _UNDEFINED:
        return PixelLayout(ts, ds, tag, vr, value_at, length, value_at + length, frames)
    return PixelLayout(ts, ds, tag, vr, value_at, None, _end_of_items(f, value_at), frames)


def _end_of_items(f: BinaryIO, pos: int) -> int:
    """Offset after the sequence delimiter of encapsulated pixel data (PS3.5 A.4)."""
    try:
        return end_of_fragments(f, pos, os.fstat(f.fileno()).st_size)
    except InvalidObject as e:
        raise PixelError(str(e)) from None


def _decoder(layout: PixelLayout):
    try:
        decoder = get_decoder(layout.transfer_syntax)
    except NotImplementedError:
        raise PixelError(f"no decoder for transfer syntax {layout.transfer_syntax}") from None
    if not decoder.is_available:
        raise PixelError(f"no decoder installed for transfer syntax {layout.transfer_syntax}")
    return decoder


# pydicom tries GDCM first when it is installed, and GDCM aborts the process on input
# it finds inconsistent instead of raising (see appliance.dicomfile.codestream). Any other
# installed plugin raises; what only GDCM decodes here (JPEG Lossless, JPEG-LS) is
# decoded in a worker process (appliance.dicomfile.isolated), after the codestream checks.
_PLUGINS = ("pylibjpeg", "pillow", "pydicom")


def _plugin(decoder) -> str:
    """The plugin to decode with; "" when GDCM is the only one."""
    return next((p for p in _PLUGINS if p in decoder.available_plugins), "")


_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


def _beyond_pillow(layout: PixelLayout) -> bool:
    """True for what Pillow and GDCM refuse: JPEG Extended with 12-bit samples
    (PS3.5 A.4.1, Process 4)."""
    return (str(layout.transfer_syntax) == _JPEG_EXTENDED
            and _int(layout.header, "BitsStored", 8) > 8)


def _decode_isolated(f: BinaryIO, layout: PixelLayout, index: int,
                     as_rgb: bool) -> tuple[np.ndarray, dict]:
    try:
        return isolated.decode_frame(f.name, layout.transfer_syntax, layout.value_offset,
                                     index, as_rgb=as_rgb, options=layout.options())
    except isolated.DecodeFailed as e:
        raise PixelError(f"frame {index + 1} cannot be decoded: {e}") from None


def _check_frame(layout: PixelLayout, index: int, frame: bytes) -> None:
    """PixelError if a compressed frame disagrees with the object's attributes."""
    ds = layout.header
    attrs = {k: (_int(ds, k, 0) or None) for k in ("Rows", "Columns", "SamplesPerPixel",
                                                    "BitsAllocated", "BitsStored")}
    attrs["PhotometricInterpretation"] = str(ds.get("PhotometricInterpretation", "")).strip()
    why = codestream.problem(attrs, str(layout.transfer_syntax), frame)
    if why:
        raise PixelError(f"frame {index + 1} is not decoded: {why}")


def _little_endian_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


# --------------------------------------------------------------------------- frames


def stored_frame(f: BinaryIO, layout: PixelLayout, index: int) -> bytes:
    """Frame ``index`` (0-based) as stored: a compressed bitstream without its
    item delimiters (PS3.18 8.7.3.3.2), or the native bytes."""
    if layout.encapsulated:
        f.seek(layout.value_offset)
        try:
            return encaps.get_frame(
                f, index, number_of_frames=layout.number_of_frames,
                extended_offsets=layout.options().get("extended_offsets"))
        except (ValueError, struct.error, EOFError) as e:
            raise PixelError(f"frame {index + 1} cannot be extracted: {e}") from None
    size = layout.frame_length()
    if size is None:
        raise PixelError("frames of bit-packed pixel data are not byte aligned")
    f.seek(layout.value_offset + index * size)
    data = f.read(size)
    if len(data) != size:
        raise PixelError(f"frame {index + 1} is truncated")
    return data


def encoded_frames(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Every compressed frame in order (encapsulated pixel data only)."""
    f.seek(layout.value_offset)
    try:
        yield from encaps.generate_frames(
            f, number_of_frames=layout.number_of_frames,
            extended_offsets=layout.options().get("extended_offsets"))
    except (ValueError, struct.error, EOFError) as e:
        raise PixelError(f"frames cannot be extracted: {e}") from None


def stored_fragments(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Every fragment in order, after the Basic Offset Table (a video's bitstream)."""
    f.seek(layout.value_offset)
    try:
        encaps.parse_basic_offsets(f)
        yield from encaps.generate_fragments(f)
    except (ValueError, struct.error, EOFError) as e:
        raise PixelError(f"fragments cannot be extracted: {e}") from None


def decoded_frame(f: BinaryIO, layout: PixelLayout, index: int, *,
                  as_rgb: bool = True) -> tuple[np.ndarray, dict]:
    """Frame ``index`` decoded to an array, and pydicom's description of it
    (``photometric_interpretation`` after any YBR to RGB conversion...)."""
    layout.check_decodable()
    decoder = _decoder(layout)
    plugin = _plugin(decoder)
    if plugin in ("pillow", "") and _beyond_pillow(layout):
        # Refused before pydicom tries (and logs an ERROR with a traceback per plugin):
        # neither Pillow nor Debian's GDCM decode 12-bit samples; pylibjpeg would.
        raise PixelError("12-bit JPEG Extended (Process 4) is not decoded here: Pillow and "
                         "GDCM decode 8-bit JPEG Extended only")
    if layout.encapsulated:
        _check_frame(layout, index, stored_frame(f, layout, index))
        if not plugin:
            return _decode_isolated(f, layout, index, as_rgb)
    f.seek(layout.value_offset)
    try:
        return decoder.as_array(f, index=index, as_rgb=as_rgb,
                                **layout.options(decoding_plugin=plugin))
    except PixelError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise anything on damaged data
        raise PixelError(f"frame {index + 1} cannot be decoded: {type(e).__name__}: {e}") from None


def uncompressed_frame(f: BinaryIO, layout: PixelLayout, index: int) -> bytes:
    """Frame ``index`` as uncompressed little endian bytes (PS3.18 8.7.3.3.1):
    read at its offset when the stored data already is that, else decoded."""
    if not layout.encapsulated and layout.transfer_syntax != syntax.EXPLICIT_BE \
            and layout.frame_length() is not None:
        return stored_frame(f, layout, index)
    arr, _ = decoded_frame(f, layout, index, as_rgb=layout.encapsulated)
    if _int(layout.header, "BitsAllocated", 8) == 1:
        return np.packbits(arr.ravel(), bitorder="little").tobytes()
    return _little_endian_bytes(arr)


def uncompressed_frames(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Every frame as uncompressed little endian bytes, one at a time."""
    for index in range(layout.number_of_frames):
        yield uncompressed_frame(f, layout, index)


# --------------------------------------------------------------------------- transcoding


def transcode_to_explicit_le(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield the Part-10 encoding of the stored file at ``path`` in Explicit VR
    Little Endian, decompressing pixel data frame by frame (PS3.18 8.7.3.4).

    The SOP Instance UID is kept (Orthanc does the same). Raises
    :class:`PixelError` before yielding anything when it cannot be done.
    """
    with open(path, "rb") as f:
        ds = _read_header(f)
        if ds.file_meta.get("TransferSyntaxUID") == syntax.DEFLATED_LE:
            yield _deflated_to_explicit_le(path)
            return
        layout = _locate(f, ds)
        if layout is None:
            # No pixel data: the header was the whole object.
            yield _encode_header(ds, {})
            return
        if layout.encapsulated:
            yield from _decompressed(f, layout)
        else:
            yield from _native(f, layout)
        yield from _trailing_elements(f, layout)


def _encode_header(ds: Dataset, changes: dict[str, Any]) -> bytes:
    """Preamble, File Meta and every element before the pixel data, in Explicit VR LE."""
    buf = io.BytesIO()
    try:
        # Convert every raw element (nested ones too) while the dataset still knows how
        # it was encoded: implicit VR elements get their VR, big endian values their numbers.
        ds.walk(lambda _ds, _elem: None)
        # File Meta elements found inside the data set (PS3.10 7.1: they belong to the meta
        # only; pydicom refuses to write them there): the new meta is written anyway.
        for tag in [tag for tag in ds.keys() if tag.group == 0x0002]:
            del ds[tag]
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.file_meta.TransferSyntaxUID = syntax.EXPLICIT_LE
        dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for a value it cannot convert
        # A value stored as it came (an IS of "1\xff" that pydicom decodes with a
        # replacement character and cannot encode again, an element of a VR it does
        # not know in an object adopted as it was): the object is served as stored
        # (transfer-syntax=*), not rewritten.
        cause = e.__cause__ or e
        raise PixelError(f"the header cannot be written in Explicit VR Little Endian: "
                         f"{type(cause).__name__}: {str(cause)[:200]}") from None
    return buf.getvalue()


def _element_header(tag: int, vr: str, length: int) -> bytes:
    # Explicit VR LE with a 32-bit length (PS3.5 7.1.2, OB/OW/OF/OD).
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)


def _native(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Native pixel data: copied (little endian) or byte-swapped (big endian)."""
    assert layout.length is not None
    yield _encode_header(layout.header, {}) + _element_header(layout.tag, layout.vr, layout.length)
    swap = 0
    if layout.transfer_syntax == syntax.EXPLICIT_BE and layout.vr != "OB":
        bits = {"OF": 32, "OD": 64}.get(layout.vr, _int(layout.header, "BitsAllocated", 8))
        if bits not in (8, 16, 32, 64):
            raise PixelError(f"big endian pixel data of {bits} bits cannot be byte-swapped")
        # 8-bit samples in OW words are swapped in pairs too (PS3.5 7.3 and 8.1.1).
        swap = bits // 8 if bits > 8 else 2
    f.seek(layout.value_offset)
    remaining = layout.length
    step = _CHUNK - (_CHUNK % swap) if swap else _CHUNK
    while remaining:
        data = f.read(min(step, remaining))
        if not data:
            raise PixelError("pixel data is truncated")
        remaining -= len(data)
        if swap:
            data = np.frombuffer(data, dtype=f">u{swap}").astype(f"<u{swap}").tobytes()
        yield data


def _decompressed(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Encapsulated pixel data decoded frame by frame (what pydicom's
    ``Dataset.decompress`` does, without holding every frame in memory)."""
    layout.check_decodable()
    decoder = _decoder(layout)
    for index, frame in enumerate(encoded_frames(f, layout)):
        _check_frame(layout, index, frame)
    plugin = _plugin(decoder)
    if plugin:
        f.seek(layout.value_offset)
        frames = decoder.iter_array(f, as_rgb=True, **layout.options(decoding_plugin=plugin))
    else:
        frames = (_decode_isolated(f, layout, i, True) for i in range(layout.number_of_frames))
    try:
        first, info = next(frames)
    except PixelError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged data
        raise PixelError(f"pixel data cannot be decoded: {type(e).__name__}: {e}") from None
    frame_bytes = first.nbytes
    total = frame_bytes * layout.number_of_frames
    if total >= _UNDEFINED - 1:
        raise PixelError("uncompressed pixel data would exceed the 4 GiB DICOM limit")
    changes: dict[str, Any] = {"PhotometricInterpretation": info["photometric_interpretation"]}
    if int(info.get("samples_per_pixel", 1)) > 1:
        changes["PlanarConfiguration"] = info.get("planar_configuration", 0)
    vr = "OB" if _int(layout.header, "BitsAllocated", 8) <= 8 else "OW"
    header = _encode_header(layout.header, changes)
    yield header + _element_header(layout.tag, vr, total + total % 2)
    yield _little_endian_bytes(first)
    done = 1
    try:
        for arr, _ in frames:
            yield _little_endian_bytes(arr)
            done += 1
    except Exception as e:  # noqa: BLE001 - after the header: the caller aborts the stream
        raise PixelError(f"frame {done + 1} cannot be decoded: {type(e).__name__}: {e}") from None
    if done != layout.number_of_frames:
        raise PixelError(f"{done} frames decoded, {layout.number_of_frames} announced")
    if total % 2:
        yield b"\x00"


def _trailing_elements(f: BinaryIO, layout: PixelLayout) -> Iterator[bytes]:
    """Elements after the pixel data (rare: signatures, private groups), re-encoded."""
    f.seek(0, os.SEEK_END)
    if f.tell() <= layout.end_offset:
        return
    f.seek(layout.end_offset)
    ts = layout.transfer_syntax
    trailing = read_dataset(f, ts == syntax.IMPLICIT_LE, ts != syntax.EXPLICIT_BE)
    if _TRAILING_PADDING in trailing:
        del trailing[_TRAILING_PADDING]
    if len(trailing):
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, trailing)
        yield buf.getvalue()


def _deflated_to_explicit_le(path: str | os.PathLike) -> bytes:
    """A deflated object (rare, small: SR and the like) inflated in memory."""
    ds = pydicom.dcmread(path)
    return _encode_header(ds, {})


# --------------------------------------------------------------------------- bulk data


def element_value(path: str | os.PathLike, tag_path: tuple[int, ...]) -> bytes | None:
    """The value bytes of the element at ``tag_path`` (tags and 0-based item
    indexes, as in :func:`appliance.dicomfile.dicomjson.parse_bulk_uri`), little endian
    (PS3.18 8.7.3.3.1); None when there is no such element. Pixel data is not
    read here (see :func:`read_layout`)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096)
    little = ds.file_meta.get("TransferSyntaxUID") != syntax.EXPLICIT_BE
    current = ds
    for position in range(0, len(tag_path) - 1, 2):
        tag, index = Tag(tag_path[position]), tag_path[position + 1]
        if tag not in current:
            return None
        items = current[tag].value
        if not isinstance(items, Sequence) or index >= len(items):
            return None
        current = items[index]
    tag = Tag(tag_path[-1])
    if tag not in current:
        return None
    raw = current.get_item(tag)
    if little and getattr(raw, "value", None) is not None and isinstance(raw.value, bytes):
        return raw.value  # RawDataElement: the bytes as encoded
    elem = current[tag]
    if elem.VR == "SQ":
        return None
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_data_element(buf, elem)
    encoded = buf.getvalue()
    return encoded[8:]  # implicit VR LE: tag (4) + length (4), then the value
