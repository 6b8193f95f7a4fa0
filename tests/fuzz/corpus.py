"""The hostile-input corpus of the fuzz harness: seeded, reproducible, no files needed.

Everything here is a pure function of a seed (an integer) and a count, so a
failure printed as ``seed 15, case cstore-0042`` is rebuilt byte for byte by

    .venv/bin/python -m tests.fuzz.corpus --seed 15 --cases 240 --show cstore-0042
    .venv/bin/python -m tests.fuzz.corpus --seed 15 --cases 240 --dump cstore-0042 case.dcm

(``--dump`` writes a Part-10 file: send it with pynetdicom's chunked send or
``storescu``; STOW bodies are dumped as the raw HTTP body). Families:

* :func:`store_cases`: C-STORE data sets, from pydicom's test files (CT, MR in
  four syntaxes, JPEG, JPEG 2000, JPEG-LS, RLE multi-frame, a JPEG ultrasound
  cine, deflated, SR) and synthetic ultrasound (RGB, multi-frame, monochrome
  implicit): the seeds as they are, and mutated (truncations at many offsets,
  bit flips and byte damage in the header, absurd and odd lengths, undefined
  lengths on elements that are not sequences, deep nesting, huge values,
  contradictory pixel attributes, wrong VRs on UIDs, tags out of order,
  duplicated tags, garbage, the wrong transfer syntax, broken delimiters,
  trailing bytes). Each case carries the oracle's verdict
  (:mod:`tests.fuzz.structure`) on the bytes sent.
* :func:`stow_bodies`: STOW-RS request bodies: the same objects as parts, and
  broken framing, empty parts, nested multipart, huge part headers, damaged
  File Meta Information.
* :func:`qido_queries`: QIDO-RS paths and query strings: SQL-like strings,
  LIKE/GLOB metacharacters, unicode, NUL, invalid percent-encoding, very long
  values, repeated and unknown keys.
* :func:`worklist_identifiers`, :func:`mpps_requests`: MWL C-FIND identifiers
  and MPPS N-CREATE/N-SET attribute lists, valid ones and mutated ones.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import struct
import sys
import urllib.parse
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from tests.fuzz import structure as st
from tests.fuzz.structure import (
    DEFLATED, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, LONG_VRS, Element, Verdict, judge,
)
from tests.support import dataset_bytes, pydicom_file

DEFAULT_SEED = 15
DEFAULT_CASES = 800

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"

SOP_INSTANCE_UID = 0x00080018
SOP_CLASS_UID = 0x00080016
STUDY_UID, SERIES_UID = 0x0020000D, 0x0020000E
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
ROWS, COLUMNS, FRAMES = 0x00280010, 0x00280011, 0x00280008
SAMPLES, BITS_ALLOCATED = 0x00280002, 0x00280100


def fresh_uid(*parts: object) -> str:
    """A deterministic 2.25 UID (PS3.5 B.2) from ``parts``."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


# -- encoding helpers ------------------------------------------------------


@dataclass(frozen=True)
class Enc:
    implicit: bool
    little: bool

    @classmethod
    def of(cls, ts: str) -> "Enc":
        return cls(ts == IMPLICIT_LE, ts != EXPLICIT_BE)

    @property
    def bo(self) -> str:
        return "<" if self.little else ">"

    def element(self, tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
        """One element; ``length`` lies about the value's length when given."""
        n = len(value) if length is None else length
        g, e = tag >> 16, tag & 0xFFFF
        if self.implicit:
            return struct.pack(self.bo + "HHL", g, e, n) + value
        vrb = vr.encode("latin-1")
        if vrb in LONG_VRS:
            return struct.pack(self.bo + "HH2s2xL", g, e, vrb, n) + value
        return struct.pack(self.bo + "HH2sH", g, e, vrb, n & 0xFFFF) + value

    def item(self, length: int = st.UNDEFINED) -> bytes:
        return struct.pack(self.bo + "HHL", 0xFFFE, 0xE000, length)

    def item_end(self) -> bytes:
        return struct.pack(self.bo + "HHL", 0xFFFE, 0xE00D, 0)

    def seq_end(self) -> bytes:
        return struct.pack(self.bo + "HHL", 0xFFFE, 0xE0DD, 0)

    def us(self, n: int) -> bytes:
        return struct.pack(self.bo + "H", n & 0xFFFF)


def pad(value: bytes, with_: bytes = b" ") -> bytes:
    return value + with_ if len(value) % 2 else value


def ui(uid: str) -> bytes:
    return pad(uid.encode("latin-1"), b"\0")


def encode(ds: Dataset, ts: str) -> bytes:
    """A pydicom data set's bytes in ``ts`` (deflated: explicit LE, then deflated)."""
    enc = Enc.of(ts)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = enc.little, enc.implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd values on purpose (wildcards, "-" ranges)
        write_dataset(buf, ds)
    return deflate(buf.getvalue()) if ts == DEFLATED else buf.getvalue()


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)


def file_meta(sop_class: str, sop_uid: str, ts: str) -> bytes:
    """File Meta Information (PS3.10 7.1), with preamble and "DICM"."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + buf.getvalue()


def find(elements: list[Element], tag: int) -> Element | None:
    for el in elements:
        if el.tag == tag:
            return el
    return None


def splice(data: bytes, el: Element, new: bytes) -> bytes:
    return data[:el.start] + new + data[el.end:]


def insert_sorted(data: bytes, elements: list[Element], tag: int, new: bytes) -> bytes:
    """Insert an encoded element where its tag belongs among the top-level ones
    (after an element of the same tag: a duplicate)."""
    for el in elements:
        if el.tag > tag:
            return data[:el.start] + new + data[el.start:]
    return data + new


# -- seeds -------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    sop_class: str
    ts: str
    plain: bytes          # the data set in its encoding (inflated if deflated)
    weight: int = 3       # how often mutations pick it

    def data(self) -> bytes:
        return deflate(self.plain) if self.ts == DEFLATED else self.plain


_PYDICOM_SEEDS = [
    # (name, file, weight)
    ("CT_small", "CT_small.dcm", 4),
    ("MR_small", "MR_small.dcm", 4),
    ("MR_implicit", "MR_small_implicit.dcm", 4),
    ("MR_bigendian", "MR_small_bigendian.dcm", 3),
    ("SC_jpeg", "SC_rgb_jpeg_dcmtk.dcm", 3),
    ("J2K", "JPEG2000.dcm", 2),
    ("MR_jpegls", "MR_small_jpeg_ls_lossless.dcm", 2),
    ("SC_rle_2frame", "SC_rgb_rle_2frame.dcm", 3),
    ("SC_jpeg_lossless", "SC_rgb_jpeg_gdcm.dcm", 2),   # JPEG Lossless SV1: GDCM only here
    ("US_jpeg_cine", "examples_ybr_color.dcm", 1),
    ("SC_odd", "SC_rgb_small_odd.dcm", 2),
    ("SC_deflated", "image_dfl.dcm", 1),
    ("SR", "test-SR.dcm", 2),
]


def _synthetic_us(name: str, frames: int, photometric: str, ts: str) -> Seed:
    """A small ultrasound image as a scanner sends it, with speckle pixels."""
    sop_class = US_MULTIFRAME if frames > 1 else US_IMAGE
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = fresh_uid("seed", name)
    ds.StudyDate, ds.StudyTime = "20240105", "093000"
    ds.AccessionNumber = "FUZZ-A1"
    ds.Modality = "US"
    ds.Manufacturer = "Fuzz"
    ds.PatientName = "FUZZ^ULTRASOUND"
    ds.PatientID = "FUZZ-US"
    ds.PatientBirthDate, ds.PatientSex = "19800101", "F"
    ds.StudyInstanceUID = fresh_uid("study", "synthetic-us")
    ds.SeriesInstanceUID = fresh_uid("series", name)
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    rows, cols = 48, 64
    spp = 3 if photometric == "RGB" else 1
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = str(frames)
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = "33.3"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    rng = np.random.default_rng(int.from_bytes(name.encode(), "big") % (1 << 32))
    pixels = rng.integers(0, 256, size=(frames, rows, cols, spp), dtype=np.uint8)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    return Seed(name, sop_class, ts, encode(ds, ts if ts != DEFLATED else EXPLICIT_LE), 4)


@functools.cache
def seeds() -> tuple[Seed, ...]:
    """Every seed object, in a fixed order."""
    out = []
    for name, filename, weight in _PYDICOM_SEEDS:
        path = pydicom_file(filename)
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        ts = str(meta.TransferSyntaxUID)
        body = dataset_bytes(path)
        out.append(Seed(name, str(meta.MediaStorageSOPClassUID), ts,
                        inflate(body) if ts == DEFLATED else body, weight))
    out.append(_synthetic_us("US_rgb", 1, "RGB", EXPLICIT_LE))
    out.append(_synthetic_us("US_cine_rgb", 5, "RGB", EXPLICIT_LE))
    out.append(_synthetic_us("US_mono_implicit", 1, "MONOCHROME2", IMPLICIT_LE))
    return tuple(out)


# -- C-STORE cases -------------------------------------------------------------


@dataclass
class StoreCase:
    """One data set to send: under ``sop_class``/``sop_uid`` in ``ts``."""

    name: str
    detail: str
    sop_class: str
    sop_uid: str
    ts: str
    data: bytes
    must_store: bool = False      # a valid object: Success is the only right answer
    verdict: Verdict | None = None

    def judge(self) -> Verdict:
        if self.verdict is None:
            self.verdict = judge(self.data, self.ts, self.sop_class)
        return self.verdict

    def part10(self) -> bytes:
        return file_meta(self.sop_class, self.sop_uid, self.ts) + self.data

    def describe(self) -> str:
        return (f"{self.name} [{self.detail}] {pydicom.uid.UID(self.sop_class).name}, "
                f"{pydicom.uid.UID(self.ts).name}, {len(self.data)} bytes, "
                f"oracle: {self.judge()}")


def with_uid(seed: Seed, uid: str) -> tuple[bytes, list[Element]]:
    """The seed's plain data set with a fresh SOP Instance UID, and its elements."""
    enc = Enc.of(seed.ts)
    plain_ts = EXPLICIT_LE if seed.ts == DEFLATED else seed.ts
    verdict = judge(seed.plain, plain_ts, "")
    el = find(verdict.elements, SOP_INSTANCE_UID)
    assert el is not None, seed.name
    data = splice(seed.plain, el, enc.element(SOP_INSTANCE_UID, "UI", ui(uid)))
    return data, judge(data, plain_ts, "").elements


def _header_end(data: bytes, elements: list[Element]) -> int:
    pixel = find(elements, st.PIXEL_DATA)
    return pixel.start if pixel is not None else len(data)


def _nested(enc: Enc, depth: int, defined: bool, tag: int = 0x00400275) -> bytes:
    """A sequence nested ``depth`` deep (each item holds the next sequence)."""
    leaf = enc.element(0x00100020, "LO", b"DEEP")
    inner = leaf
    for _ in range(depth):
        if defined:
            item = enc.item(len(inner)) + inner
            inner = enc.element(tag, "SQ", item)
        else:
            item = enc.item() + inner + enc.item_end()
            inner = enc.element(tag, "SQ", item + enc.seq_end(), st.UNDEFINED)
    return inner


class _Mutator:
    """The mutation operators: each takes (data, elements) and returns (data, detail)."""

    def __init__(self, rng: random.Random, enc: Enc, seed: Seed) -> None:
        self.rng, self.enc, self.seed = rng, enc, seed

    def pick(self, elements: list[Element], *, header: bool = True) -> Element:
        pool = [el for el in elements if el.end > 0 and (not header or el.tag != st.PIXEL_DATA)]
        return self.rng.choice(pool)

    def truncate(self, data, elements):
        rng = self.rng
        how = rng.choice(["anywhere", "header", "boundary", "in-header", "in-value",
                          "end", "pixels"])
        end = _header_end(data, elements)
        if how == "anywhere":
            k = rng.randrange(0, len(data))
        elif how == "header":
            k = rng.randrange(0, max(end, 1))
        elif how == "boundary":
            k = self.pick(elements).start
        elif how == "in-header":
            el = self.pick(elements)
            k = el.start + rng.randrange(1, max(2, el.value - el.start))
        elif how == "in-value":
            el = self.pick(elements)
            k = rng.randrange(el.value, max(el.value + 1, el.end))
        elif how == "end":
            k = len(data) - rng.choice([1, 2, 3, 4, 7, 8, 9])
        else:
            k = rng.randrange(end, len(data)) if end < len(data) else len(data) - 1
        k = max(0, min(k, len(data) - 1))
        return data[:k], f"truncated at {k} of {len(data)} ({how})"

    def bitflip(self, data, elements):
        end = max(_header_end(data, elements), 8)
        out = bytearray(data)
        flips = []
        for _ in range(self.rng.randint(1, 4)):
            pos, bit = self.rng.randrange(0, end), self.rng.randrange(8)
            out[pos] ^= 1 << bit
            flips.append(f"{pos}.{bit}")
        return bytes(out), "bit flips at " + ",".join(flips)

    def bytes_(self, data, elements):
        end = max(_header_end(data, elements), 8)
        out = bytearray(data)
        pos = self.rng.randrange(0, end)
        n = self.rng.randint(1, 8)
        value = self.rng.choice([0x00, 0xFF, 0x20, 0x5C])
        out[pos:pos + n] = bytes([value]) * len(out[pos:pos + n])
        return bytes(out), f"{n} bytes set to {value:#04x} at {pos}"

    def length(self, data, elements):
        el = self.pick(elements)
        enc = self.enc
        long = enc.implicit or el.value - el.start == 12
        choices = [el.length + 1, el.length - 1, el.length + 2, el.length + 7, 0,
                   len(data), len(data) * 3]
        choices += [0xFFFFFFFE, 0x7FFFFFFF, 0x80000000] if long else [0xFFFF, 0xFFFE, 0x8000]
        n = self.rng.choice([c for c in choices if c >= 0])
        out = bytearray(data)
        if long:
            struct.pack_into(enc.bo + "L", out, el.value - 4, n & 0xFFFFFFFF)
        else:
            struct.pack_into(enc.bo + "H", out, el.value - 2, n & 0xFFFF)
        tag = f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})"
        return bytes(out), f"length of {tag} {el.length} -> {n:#x}"

    def undefined(self, data, elements):
        el = self.pick(elements)
        enc = self.enc
        value = data[el.value:el.end]
        if el.vr == "SQ":
            return self.length(data, elements)
        vr = el.vr if el.vr.encode() in LONG_VRS else self.rng.choice(["UT", "OB", "UN"])
        tail = self.rng.choice([b"", enc.seq_end(), enc.item_end()])
        new = enc.element(el.tag, vr, value + tail, st.UNDEFINED)
        return (splice(data, el, new),
                f"undefined length on ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) as {vr}"
                f"{' + delimiter' if tail else ''}")

    def nest(self, data, elements):
        depth = self.rng.choice([3, 16, 64, 200, 1000])
        defined = self.rng.random() < 0.4
        nested = _nested(self.enc, depth, defined)
        broken = self.rng.random() < 0.3 and not defined
        if broken:
            nested = nested[:-8]  # the outermost sequence delimiter is missing
        return (insert_sorted(data, elements, 0x00400275, nested),
                f"{'unclosed ' if broken else ''}sequence nested {depth} deep, "
                f"{'defined' if defined else 'undefined'} lengths")

    def huge(self, data, elements):
        enc, rng = self.enc, self.rng
        kind = rng.choice(["name", "text", "private", "values"])
        if kind == "name":
            el = find(elements, PATIENT_NAME)
            value = b"A" * rng.choice([64, 1000, 65534])
            new = enc.element(PATIENT_NAME, "PN", value)
            out = splice(data, el, new) if el else insert_sorted(data, elements, PATIENT_NAME, new)
            return out, f"PatientName of {len(value)} bytes"
        if kind == "values":
            value = b"\\".join(b"V%d" % i for i in range(rng.choice([100, 5000])))
            new = enc.element(0x00080008, "CS", pad(value)[:65534])
            el = find(elements, 0x00080008)
            out = splice(data, el, new) if el else insert_sorted(data, elements, 0x00080008, new)
            return out, f"ImageType with {len(value.split(bytes([92])))} values"
        if kind == "text":
            n = rng.choice([70_000, 1 << 20])
            # ImageComments (LT) as UT: a 4-byte length in explicit syntaxes.
            new = enc.element(0x00204000, "UT", b"x" * n)
            return insert_sorted(data, elements, 0x00204000, new), f"ImageComments of {n} bytes"
        n = rng.choice([1 << 20, 8 << 20])
        block = enc.element(0x00090010, "LO", b"FUZZ") + enc.element(0x00091010, "OB", bytes(n))
        return insert_sorted(data, elements, 0x00090010, block), f"private OB of {n} bytes"

    def pixels(self, data, elements):
        enc, rng = self.enc, self.rng
        kind = rng.choice(["huge", "huge", "zero", "bits", "stored", "samples", "frames",
                           "photometric", "short", "long", "none"])
        out, detail = data, ""
        pixel = find(elements, st.PIXEL_DATA)

        def set_us(d, els, tag, n):
            el = find(els, tag)
            new = enc.element(tag, "US", enc.us(n))
            return splice(d, el, new) if el else insert_sorted(d, els, tag, new)

        def reparse(d):
            return judge(d, self.seed.ts if self.seed.ts != DEFLATED else EXPLICIT_LE, "").elements

        if kind == "huge":
            out = set_us(out, elements, ROWS, 65535)
            out = set_us(out, reparse(out), COLUMNS, 65535)
            els = reparse(out)
            frames = enc.element(FRAMES, "IS", b"1000")
            el = find(els, FRAMES)
            out = splice(out, el, frames) if el else insert_sorted(out, els, FRAMES, frames)
            els = reparse(out)
            pixel = find(els, st.PIXEL_DATA)
            if pixel is not None and pixel.length != st.UNDEFINED:
                out = splice(out, pixel, enc.element(st.PIXEL_DATA, "OB", b"\x01" * 16))
            detail = "65535 x 65535 x 1000 frames, 16 bytes of pixel data"
        elif kind == "zero":
            tag = rng.choice([ROWS, COLUMNS])
            out, detail = set_us(out, elements, tag, 0), f"({tag >> 16:04X},{tag & 0xFFFF:04X}) = 0"
        elif kind == "bits":
            n = rng.choice([0, 1, 7, 12, 64, 65535])
            out, detail = set_us(out, elements, BITS_ALLOCATED, n), f"BitsAllocated = {n}"
        elif kind == "samples":
            n = rng.choice([0, 1, 2, 3, 4, 255])
            out, detail = set_us(out, elements, SAMPLES, n), f"SamplesPerPixel = {n}"
        elif kind == "stored":
            n = rng.choice([0, 1, 7, 9, 12, 16, 17, 32])
            out, detail = set_us(out, elements, 0x00280101, n), f"BitsStored = {n}"
        elif kind == "photometric":
            value = rng.choice([b"MONOCHROME2", b"RGB", b"YBR_FULL_422", b"PALETTE COLOR",
                                b"YBR_ICT", b"GARBAGE", b""])
            new = enc.element(0x00280004, "CS", pad(value))
            el = find(elements, 0x00280004)
            out = splice(out, el, new) if el else insert_sorted(out, elements, 0x00280004, new)
            detail = f"PhotometricInterpretation = {value!r}"
        elif kind == "frames":
            value = rng.choice([b"0", b"-1", b"abc", b"99999999999", b"2", b"3 ", b""])
            new = enc.element(FRAMES, "IS", pad(value))
            el = find(elements, FRAMES)
            out = splice(out, el, new) if el else insert_sorted(out, elements, FRAMES, new)
            detail = f"NumberOfFrames = {value!r}"
        elif kind in ("short", "long") and pixel is not None and pixel.length != st.UNDEFINED:
            value = data[pixel.value:pixel.end]
            value = value[:-rng.choice([1, 2, 100])] if kind == "short" else value + bytes(
                rng.choice([1, 2, 64]))
            vr = pixel.vr if pixel.vr else "OW"
            out = splice(out, pixel, enc.element(st.PIXEL_DATA, vr, value))
            detail = f"Pixel Data {kind}er: {len(value)} bytes"
        elif pixel is not None:
            end = pixel.end
            out = data[:pixel.start] + data[end:]
            detail = "Pixel Data removed"
        else:
            detail = "no Pixel Data to change"
        return out, detail

    def pixel_bytes(self, data, elements):
        """Damage inside the pixel data, lengths untouched: for compressed frames, a
        codestream the decoders must survive (the frame header included)."""
        pixel = find(elements, st.PIXEL_DATA)
        if pixel is None or pixel.end - pixel.start < 64:
            return self.bitflip(data, elements)
        out = bytearray(data)
        # Mostly near the start of the value (Basic Offset Table, fragment items, the
        # codestream's headers), sometimes anywhere in it.
        span = min(pixel.end - pixel.start, 600 if self.rng.random() < 0.7 else 1 << 30)
        hits = []
        for _ in range(self.rng.randint(1, 6)):
            pos = pixel.start + 12 + self.rng.randrange(max(span - 12, 1))
            pos = min(pos, len(out) - 1)
            if self.rng.random() < 0.5:
                out[pos] ^= 1 << self.rng.randrange(8)
            else:
                out[pos] = self.rng.choice([0x00, 0xFF, 0xD9, 0xDA, 0xC0])
            hits.append(pos)
        return bytes(out), "pixel bytes damaged at " + ",".join(map(str, hits))

    def uid_vr(self, data, elements):
        enc, rng = self.enc, self.rng
        tag = rng.choice([SOP_INSTANCE_UID, STUDY_UID, SERIES_UID, SOP_CLASS_UID])
        el = find(elements, tag)
        if el is None:
            return self.bitflip(data, elements)
        value = data[el.value:el.end]
        if enc.implicit:
            bad = rng.choice([value.rstrip(b"\0") + b".abc", b"1.2.840.10008..5",
                              b" " + value.rstrip(b"\0"), value.replace(b".", b",", 1),
                              b"1." + b"2" * 70, b"", value + b"\0\0"])
            new = enc.element(tag, "UI", pad(bad, b"\0"))
            return splice(data, el, new), f"UID value {bad[:30]!r}"
        vr = rng.choice(["LO", "SH", "OB", "UN", "US", "SQ", "UT", "CS", "AE", "FD"])
        return splice(data, el, enc.element(tag, vr, value)), \
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}) with VR {vr}"

    def reorder(self, data, elements):
        header = [el for el in elements if el.end > 0 and el.tag != st.PIXEL_DATA]
        if len(header) < 3:
            return self.bitflip(data, elements)
        i = self.rng.randrange(0, len(header) - 1)
        a, b = header[i], header[i + 1]
        if self.rng.random() < 0.5:
            return (data[:a.start] + data[b.start:b.end] + data[a.start:a.end] + data[b.end:],
                    f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X}) and the next swapped")
        # One element moved to the end, after Pixel Data.
        return (data[:a.start] + data[a.end:] + data[a.start:a.end],
                f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X}) moved to the end")

    def duplicate(self, data, elements):
        rng, enc = self.rng, self.enc
        if rng.random() < 0.4:
            tag = rng.choice([SOP_INSTANCE_UID, STUDY_UID, PATIENT_ID, ROWS])
            el = find(elements, tag)
            if el is not None:
                if tag == ROWS:
                    value = enc.us(rng.choice([1, 7, 4096]))
                    vr = "US"
                elif tag == PATIENT_ID:
                    value, vr = b"OTHER-ID", "LO"
                else:
                    value, vr = ui(fresh_uid("dup", rng.random())), "UI"
                new = enc.element(tag, vr, value)
                return (data[:el.end] + new + data[el.end:],
                        f"({tag >> 16:04X},{tag & 0xFFFF:04X}) twice, another value")
        el = self.pick(elements)
        return (data[:el.end] + data[el.start:el.end] + data[el.end:],
                f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) twice")

    def delimiters(self, data, elements):
        enc, rng = self.enc, self.rng
        kind = rng.choice(["stray-item-end", "stray-seq-end", "stray-item", "pixel-no-end",
                           "trailing", "padding", "group-length", "meta-element"])
        pixel = find(elements, st.PIXEL_DATA)
        if kind == "pixel-no-end" and pixel is not None and pixel.length == st.UNDEFINED:
            return (data[:pixel.end - 8] + data[pixel.end:],
                    "encapsulated Pixel Data without its delimiter")
        if kind == "stray-item-end":
            return data + enc.item_end(), "item delimiter at the top level"
        if kind == "stray-seq-end":
            return data + enc.seq_end(), "sequence delimiter at the top level"
        if kind == "stray-item":
            return data + enc.item(4) + b"abcd", "item at the top level"
        if kind == "padding":
            new = enc.element(st.TRAILING_PADDING, "OB", bytes(16))
            return data + new, "Data Set Trailing Padding"
        if kind == "group-length":
            return insert_sorted(data, elements, 0x00080000,
                                 enc.element(0x00080000, "UL", struct.pack(enc.bo + "L", 7))), \
                "a wrong (0008,0000) group length"
        if kind == "meta-element":
            return insert_sorted(data, elements, 0x00020010,
                                 enc.element(0x00020010, "UI", ui(EXPLICIT_BE))), \
                "(0002,0010) inside the data set"
        n = rng.choice([1, 2, 3, 5, 7, 8, 13])
        return data + bytes(rng.getrandbits(8) for _ in range(n)), f"{n} bytes after the end"


OPERATORS = {
    # name: weight
    "truncate": 9, "bitflip": 6, "bytes_": 3, "length": 4, "undefined": 3, "nest": 2,
    "huge": 1, "pixels": 5, "pixel_bytes": 4, "uid_vr": 3, "reorder": 2, "duplicate": 2,
    "delimiters": 3,
    "garbage": 1, "syntax": 1,
}


def _garbage(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["random", "zeros", "empty", "part10", "text", "ff"])
    if kind == "random":
        n = rng.choice([1, 2, 7, 8, 100, 4000])
        return bytes(rng.getrandbits(8) for _ in range(n)), f"{n} random bytes"
    if kind == "zeros":
        return bytes(rng.choice([8, 1024])), "zeros"
    if kind == "ff":
        return b"\xff" * 64, "0xFF bytes"
    if kind == "empty":
        return b"", "no data set at all"
    if kind == "part10":
        seed = seeds()[1]
        return (file_meta(seed.sop_class, "1.2.3", seed.ts) + seed.plain,
                "a whole Part-10 file as data set")
    return b"%PDF-1.4\n" + b"not a data set " * 64, "a PDF header"


def store_cases(seed: int = DEFAULT_SEED, count: int = DEFAULT_CASES,
                prefix: str = "cstore") -> list[StoreCase]:
    """The C-STORE corpus: fixed cases (every seed as it is, the issue's examples),
    then ``count`` mutations drawn from ``seed``."""
    rng = random.Random(f"{seed}:{prefix}")
    cases: list[StoreCase] = []

    def add(seed_obj: Seed, data: bytes, detail: str, *, ts: str | None = None,
            must_store: bool = False, uid: str | None = None) -> None:
        name = f"{prefix}-{len(cases):04d}"
        ts = ts or seed_obj.ts
        if ts == DEFLATED and not detail.startswith("deflated:"):
            data = deflate(data)
        cases.append(StoreCase(name, f"{seed_obj.name}: {detail}", seed_obj.sop_class,
                               uid or fresh_uid(seed, prefix, name), ts, data, must_store))

    all_seeds = seeds()
    by_name = {s.name: s for s in all_seeds}

    def uid_for_next() -> str:
        return fresh_uid(seed, prefix, f"{prefix}-{len(cases):04d}")

    # Every seed as it is: these must be stored.
    for s in all_seeds:
        uid = uid_for_next()
        data, _ = with_uid(s, uid)
        add(s, data, "as it is", must_store=True, uid=uid)
    # The reproducer: CT_small cut to 10 % (inside the header).
    ct = by_name["CT_small"]
    uid = uid_for_next()
    data, _ = with_uid(ct, uid)
    tenth = len(data) // 10
    add(ct, data[:tenth], f"cut to 10 % ({tenth} of {len(data)} bytes)", uid=uid)
    # 65535 x 65535 x 1000 frames with a few bytes of pixel data.
    for name in ("US_rgb", "MR_small"):
        s = by_name[name]
        uid = uid_for_next()
        data, elements = with_uid(s, uid)
        m = _Mutator(random.Random(0), Enc.of(s.ts), s)
        m.rng = _Fixed(["huge"])
        out, detail = m.pixels(data, elements)
        add(s, out, detail, uid=uid)
    # Deep nesting, closed and unclosed.
    for depth, defined, broken in ((1000, False, False), (1000, True, False), (5000, False, False),
                                   (300, False, True)):
        s = by_name["US_rgb"]
        uid = uid_for_next()
        data, elements = with_uid(s, uid)
        nested = _nested(Enc.of(s.ts), depth, defined)
        if broken:
            nested = nested[:-8]
        add(s, insert_sorted(data, elements, 0x00400275, nested),
            f"{'unclosed ' if broken else ''}sequence nested {depth} deep, "
            f"{'defined' if defined else 'undefined'} lengths", uid=uid)
    # A data set in the other VR encoding than the negotiated one, both ways.
    for name, other in (("MR_implicit", EXPLICIT_LE), ("MR_small", IMPLICIT_LE)):
        s = by_name[name]
        uid = uid_for_next()
        data, _ = with_uid(s, uid)
        add(s, data, f"sent as {pydicom.uid.UID(other).name}", ts=other, uid=uid)
    # Truncations of one object at every 1/16 of its length, and around the pixels.
    s = by_name["US_rgb"]
    uid = uid_for_next()
    data, elements = with_uid(s, uid)
    pixel = find(elements, st.PIXEL_DATA)
    offsets = sorted({len(data) * k // 16 for k in range(1, 16)}
                     | {pixel.start, pixel.start + 4, pixel.value, pixel.value + 1, len(data) - 1})
    for k in offsets:
        uid = uid_for_next()
        d, _ = with_uid(s, uid)
        add(s, d[:k], f"truncated at {k} of {len(d)}", uid=uid)

    weighted = [s for s in all_seeds for _ in range(s.weight)]
    ops = [op for op, w in OPERATORS.items() for _ in range(w)]
    for _ in range(count):
        s = rng.choice(weighted)
        op = rng.choice(ops)
        uid = uid_for_next()
        data, elements = with_uid(s, uid)
        if op == "garbage":
            out, detail = _garbage(rng)
            add(s, out, detail, uid=uid, ts=EXPLICIT_LE if s.ts == DEFLATED else None)
            continue
        if op == "syntax":
            other = rng.choice([t for t in (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED)
                                if t != s.ts])
            out = deflate(data) if other == DEFLATED else data
            detail = f"sent as {pydicom.uid.UID(other).name}"
            add(s, out, "deflated: " + detail if other == DEFLATED else detail, ts=other, uid=uid)
            continue
        mutator = _Mutator(rng, Enc.of(s.ts), s)
        out, detail = getattr(mutator, op)(data, elements)
        if s.ts == DEFLATED and op in ("truncate", "bitflip") and rng.random() < 0.5:
            # Damage the deflated stream itself.
            compressed = deflate(data)
            k = rng.randrange(1, len(compressed))
            out, detail = compressed[:k], f"deflated: stream cut at {k} of {len(compressed)}"
        add(s, out, f"{op.rstrip('_')}: {detail}", uid=uid)
    return cases


class _Fixed:
    """Stands in for the RNG of a fixed case: ``choice`` returns the next given value."""

    def __init__(self, values: list) -> None:
        self.values = list(values)

    def choice(self, seq):
        return self.values.pop(0) if self.values else seq[0]

    def random(self) -> float:
        return 0.5

    def randrange(self, a, b=None):
        return a if b is None else a

    def randint(self, a, b):
        return a


# -- STOW-RS bodies ---------------------------------------------------------------


@dataclass
class StowBody:
    """One STOW-RS request: its body, content type, and the parts it holds."""

    name: str
    detail: str
    body: bytes
    content_type: str
    parts: list[StoreCase] = field(default_factory=list)   # the DICOM parts, by position
    headers: dict[str, str] = field(default_factory=dict)
    raw_length: int | None = None   # Content-Length to announce when it lies
    chunks: list[int] | None = None  # sent with Transfer-Encoding: chunked, these sizes

    def describe(self) -> str:
        return f"{self.name} [{self.detail}] {len(self.body)} bytes, {len(self.parts)} DICOM parts"


def _multipart(parts: list[tuple[list[str], bytes]], boundary: str, *, close: bool = True,
               preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = [preamble]
    for headers, content in parts:
        out.append(b"--" + boundary.encode() + b"\r\n")
        out.append("".join(h + "\r\n" for h in headers).encode("latin-1") + b"\r\n")
        out.append(content + b"\r\n")
    if close:
        out.append(b"--" + boundary.encode() + b"--\r\n" + epilogue)
    return b"".join(out)


DICOM_PART = ["Content-Type: application/dicom"]


def stow_bodies(seed: int = DEFAULT_SEED, count: int = DEFAULT_CASES // 4) -> list[StowBody]:
    """STOW-RS bodies: objects of the C-STORE corpus as parts, and framing damage."""
    rng = random.Random(f"{seed}:stow")
    objects = store_cases(seed, max(count * 2, 40), prefix="stow")
    pristine = [c for c in objects if c.must_store]
    mutated = [c for c in objects if not c.must_store]
    bodies: list[StowBody] = []

    def ct(boundary: str, extra: str = "") -> str:
        return f'multipart/related; type="application/dicom"; boundary={boundary}{extra}'

    def add(detail: str, body: bytes, content_type: str, parts: list[StoreCase] = (),
            **kw) -> None:
        bodies.append(StowBody(f"stow-{len(bodies):04d}", detail, body, content_type,
                               list(parts), **kw))

    b = "fuzzBoundary"
    # Valid bodies: one part, several parts, each seed.
    add("one valid part", _multipart([(DICOM_PART, pristine[0].part10())], b), ct(b), [pristine[0]])
    several = pristine[1:4]
    add("three valid parts", _multipart([(DICOM_PART, c.part10()) for c in several], b), ct(b),
        several)
    # The same objects again (new UIDs), the body in chunks of 1 to 200 bytes: every
    # delimiter and header is split somewhere across reads.
    again = []
    for x in several:
        uid = fresh_uid(seed, "chunked", x.name)
        source = next(s for s in seeds() if s.sop_class == x.sop_class and s.ts == x.ts)
        again.append(StoreCase(f"{x.name}-chunked", x.detail, x.sop_class, uid, x.ts,
                               with_uid(source, uid)[0], must_store=True))
    body = _multipart([(DICOM_PART, x.part10()) for x in again], b)
    sizes, total = [], 0
    while total < len(body):
        sizes.append(rng.choice([1, 2, 3, 5, 7, 13, 64, 200]))
        total += sizes[-1]
    add("three valid parts in chunks of 1-200 bytes", body, ct(b), again, chunks=sizes)
    for c in pristine[4:]:
        add(f"valid part {c.detail}", _multipart([(DICOM_PART, c.part10())], b), ct(b), [c])
    # The damaged objects as parts, alone and beside a valid one.
    for c in mutated[:count]:
        if rng.random() < 0.5:
            add(f"damaged part {c.detail}", _multipart([(DICOM_PART, c.part10())], b), ct(b), [c])
        else:
            ok = StoreCase(c.name + "+ok", "valid companion", pristine[0].sop_class,
                           fresh_uid(seed, "stow-ok", c.name), pristine[0].ts,
                           with_uid(seeds()[0], fresh_uid(seed, "stow-ok", c.name))[0],
                           must_store=True)
            pair = [ok, c] if rng.random() < 0.5 else [c, ok]
            add(f"damaged part beside a valid one {c.detail}",
                _multipart([(DICOM_PART, p.part10()) for p in pair], b), ct(b), pair)
    # Framing. ``parts`` lists what may be stored; a part that must be has must_store.
    one = mutated[0]

    def single(case: StoreCase, **kw) -> bytes:
        return _multipart([(DICOM_PART, case.part10())], b, **kw)

    def maybe(case: StoreCase) -> StoreCase:
        return StoreCase(case.name, case.detail, case.sop_class, case.sop_uid, case.ts,
                         case.data, must_store=False)

    c = pristine[0]
    whole = single(c)
    add("no close delimiter", single(c, close=False), ct(b), [])
    add("body cut in the middle of the part", whole[:len(whole) // 2], ct(b), [])
    add("close delimiter without its CRLF (RFC 2046 allows it)", whole.rstrip(b"\r\n"), ct(b),
        [maybe(c)])
    add("garbage preamble and epilogue (RFC 2046 allows them)",
        _multipart([(DICOM_PART, c.part10())], b, preamble=b"x" * 1000 + b"\r\n",
                   epilogue=b"trailing junk" * 10), ct(b), [c])
    add("boundary not found", whole.replace(b"--" + b.encode(), b"--other"), ct(b), [])
    add("boundary parameter differs from the body's", whole, ct("someOtherBoundary"), [])
    add("no boundary parameter", whole, 'multipart/related; type="application/dicom"', [])
    add("boundary of 71 characters", whole, ct("b" * 71), [])
    add("quoted boundary (RFC 2045 allows it)", whole,
        f'multipart/related; type="application/dicom"; boundary="{b}"', [c])
    add("not multipart", c.part10(), "application/dicom", [])
    add("multipart/related of another type", whole,
        f'multipart/related; type="application/dicom+json"; boundary={b}', [])
    add("empty body", b"", ct(b), [])
    add("only the close delimiter", f"--{b}--\r\n".encode(), ct(b), [])
    add("an empty part", _multipart([([], b"")], b), ct(b), [])
    add("an empty application/dicom part", _multipart([(DICOM_PART, b"")], b), ct(b), [])
    add("part headers without a blank line",
        f"--{b}\r\nContent-Type: application/dicom\r\n".encode() + c.part10()
        + f"\r\n--{b}--\r\n".encode(), ct(b), [])
    add("a part header line without a colon",
        _multipart([(["Content-Type application/dicom"], c.part10())], b), ct(b), [maybe(c)])
    add("part of another type", _multipart([(["Content-Type: text/plain"], b"hello")], b),
        ct(b), [])
    add("part without Content-Type", _multipart([([], c.part10())], b), ct(b), [maybe(c)])
    inner_b = "innerBoundary"
    inner = _multipart([(DICOM_PART, one.part10())], inner_b)
    add("nested multipart",
        _multipart([([f'Content-Type: multipart/related; type="application/dicom"; '
                      f'boundary={inner_b}'], inner)], b), ct(b), [])
    add("a huge part header (20 KB)",
        _multipart([(DICOM_PART + ["X-Fuzz: " + "h" * 20_000], c.part10())], b), ct(b), [maybe(c)])
    add("a part header of 1 MB",
        _multipart([(DICOM_PART + ["X-Fuzz: " + "h" * (1 << 20)], c.part10())], b), ct(b),
        [maybe(c)])
    add("2000 part headers",
        _multipart([(DICOM_PART + [f"X-Fuzz-{i}: v" for i in range(2000)], c.part10())], b),
        ct(b), [maybe(c)])
    tail = StoreCase(c.name + "-tail", "the part runs on with a false delimiter", c.sop_class,
                     c.sop_uid, c.ts, c.data + b"\r--" + b.encode() + b"x")
    add("the boundary inside the content without CRLF",
        _multipart([(DICOM_PART, tail.part10())], b), ct(b), [tail])
    add("a megabyte preamble", _multipart([(DICOM_PART, c.part10())], b,
                                           preamble=b"p" * (1 << 20) + b"\r\n"), ct(b), [maybe(c)])
    add("Content-Length larger than the body", whole, ct(b), [], raw_length=len(whole) + 1000)
    add("Content-Length smaller than the body", whole, ct(b), [], raw_length=len(whole) // 2)
    # Damaged File Meta Information in a part.
    part10 = c.part10()
    meta_len = struct.unpack_from("<L", part10, 140)[0]
    add("part without preamble, File Meta first", _multipart([(DICOM_PART, part10[132:])], b),
        ct(b), [c])
    add("part without File Meta (a bare data set)", _multipart([(DICOM_PART, c.data)], b),
        ct(b), [])
    bad_len = bytearray(part10)
    struct.pack_into("<L", bad_len, 140, 0xFFFFFFF0)
    # The meta's elements are all there, only their group length lies (pydicom ignores it).
    add("File Meta group length absurd", _multipart([(DICOM_PART, bytes(bad_len))], b), ct(b),
        [maybe(c)])
    add("File Meta cut", _multipart([(DICOM_PART, part10[:144 + meta_len // 2])], b), ct(b), [])
    unknown_ts = file_meta(c.sop_class, c.sop_uid, "1.2.3.4.5.6") + c.data
    add("File Meta with an unknown transfer syntax", _multipart([(DICOM_PART, unknown_ts)], b),
        ct(b), [])
    uid = fresh_uid(seed, "stow-be")
    wrong_ts = StoreCase("stow-be", "explicit LE sent as big endian", c.sop_class, uid,
                         EXPLICIT_BE, with_uid(seeds()[0], uid)[0])
    add("File Meta says big endian, the data set is little endian",
        _multipart([(DICOM_PART, wrong_ts.part10())], b), ct(b), [wrong_ts])
    return bodies


# -- QIDO-RS ---------------------------------------------------------------------

QIDO_KEYS = [
    "PatientName", "PatientID", "StudyDate", "StudyTime", "StudyInstanceUID", "Modality",
    "SOPInstanceUID", "AccessionNumber", "StudyDescription", "InstitutionName",
    "ReferringPhysicianName", "SeriesNumber", "InstanceNumber", "Rows", "NumberOfFrames",
    "ModalitiesInStudy", "SeriesInstanceUID", "SOPClassUID", "PatientBirthDate",
    "00100010", "0020000D", "7FE00010", "00081111", "0040A370.00400009", "00100010.00100020",
    "includefield", "includefield", "limit", "offset", "fuzzymatching", "orderby", "count",
    "foo", "", "SELECT", "1=1", "PatientName\x00", "ＰatientName", "x" * 300, "00000000",
    "FFFFFFFF", "(0010,0010)", "patientname",
]
QIDO_VALUES = [
    "' OR '1'='1", "1; DROP TABLE instances; --", "\" OR 1=1 --",
    "') UNION SELECT * FROM patients --",
    "*' --", "%", "_", "%%", "A%", "_*", "[a-z]*", "[", "]", "\\", "\\\\", "*?*?", "**", "*", "?",
    "Ζαχαρίας", "山田^太郎", "😀", "e\u0301", "\u202eevil", "A\x00B", "\x00", "\ufffd",
    "a" * 1023, "a" * 1024, "a" * 1025, "b" * 10_000, "c*" * 50_000,
    "-1", "0", "99999999999999999999", "1e9", "NaN", "10001", "all", "all,PatientName",
    "20200101-", "-", "--", "2020-01-01", "20201301-20200101", "a-b", "20200101-20200101-x",
    "1.2.3,1.2.4", "1.2.3\\1.2.4", ",", "1..2", ",".join(["1.2.3"] * 500), "", " ", "\t",
    "US\\CT", "US,CT", "PatientName,00100020,foo", "true", "false",
]


def qido_queries(seed: int = DEFAULT_SEED, count: int = DEFAULT_CASES) -> list[tuple[str, str]]:
    """(name, path with query string) of QIDO-RS requests."""
    rng = random.Random(f"{seed}:qido")
    uid = fresh_uid("study", "synthetic-us")
    paths = ["/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
             f"/dicom-web/studies/{uid}/series", f"/dicom-web/studies/{uid}/instances",
             f"/dicom-web/studies/{uid}/series/1.2.3/instances",
             "/dicom-web/studies/1.2.abc/series", "/dicom-web/studies/%00/instances",
             "/dicom-web/studies/" + "1" * 300 + "/series", "/dicom-web/studies/../instances",
             "/dicom-web/studies/%2e%2e/series"]
    out = []
    for i in range(count):
        path = rng.choice(paths)
        pairs = []
        for _ in range(rng.choice([1, 1, 2, 3, 5])):
            key = rng.choice(QIDO_KEYS)
            value = rng.choice(QIDO_VALUES)
            if rng.random() < 0.15:
                pairs.append((key, value))  # the same key twice
            pairs.append((key, value))
        style = rng.random()
        if style < 0.8:
            query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
        elif style < 0.9:
            query = "&".join(f"{urllib.parse.quote(k, safe='')}={v}" for k, v in pairs
                             if all(32 < ord(ch) < 127 and ch not in "#" for ch in v))
            query = query or "PatientName=%"
        else:
            query = rng.choice(["PatientName=%", "PatientName=%zz", "PatientName=%FF%FE",
                                "PatientName=%C3%28", "=&&=&", "PatientName", "limit=%00",
                                "&" * 1000, "a=" + "%41" * 5000, "PatientName=a%00b"])
        out.append((f"qido-{i:04d}", f"{path}?{query}"))
    return out


# -- Modality Worklist C-FIND identifiers and MPPS attribute lists ----------------------


def _mwl_query(rng: random.Random) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wildcards and "-" are not valid DA/CS values
        return _mwl_query_of(rng)


def _mwl_query_of(rng: random.Random) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = rng.choice(["ISO_IR 192", "ISO_IR 100", ""])
    ds.PatientName = rng.choice(["", "*", "DOE*", "Ζαχαρίας*", "DOE^JANE", "?"])
    ds.PatientID = rng.choice(["", "P1", "*"])
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    sps = Dataset()
    sps.Modality = rng.choice(["", "US", "*"])
    sps.ScheduledStationAETitle = rng.choice(["", "US1", "*"])
    sps.ScheduledProcedureStepStartDate = rng.choice(["", "20240105", "20240101-20240131", "-"])
    sps.ScheduledProcedureStepStartTime = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


WORKLIST_SPECIALS = [
    ("two items in the sequence key", lambda enc: _two_items(enc)),
    ("date not YYYYMMDD", lambda enc: _sps_value(enc, 0x00400002, "DA", b"2024-01-05")),
    ("date range garbage", lambda enc: _sps_value(enc, 0x00400002, "DA", b"20241305-abc")),
    ("time range garbage", lambda enc: _sps_value(enc, 0x00400003, "TM", b"25-99")),
    ("wildcards only", lambda enc: enc.element(PATIENT_NAME, "PN", b"*?*?")),
    ("backslash list in a name", lambda enc: enc.element(PATIENT_NAME, "PN", b"A\\B\\C\\")),
    ("NUL in a value", lambda enc: enc.element(PATIENT_NAME, "PN", b"DO\0E")),
    ("non-UTF-8 bytes under ISO_IR 192",
     lambda enc: enc.element(0x00080005, "CS", b"ISO_IR 192")
     + enc.element(PATIENT_NAME, "PN", b"\xc3\x28\xff*")),
    ("unknown character set", lambda enc: enc.element(0x00080005, "CS", b"GARBAGE ") +
     enc.element(PATIENT_NAME, "PN", b"A*")),
    ("ISO 2022 character sets", lambda enc: enc.element(0x00080005, "CS", b"\\ISO 2022 IR 87") +
     enc.element(PATIENT_NAME, "PN", b"\x1b$B;3ED\x1b(B*")),
    ("a private element", lambda enc: enc.element(0x00090010, "LO", b"FUZZ") +
     enc.element(0x00091010, "LO", b"value ")),
    ("an unknown public element", lambda enc: enc.element(0x00111234, "LO", b"x ")),
    ("an empty identifier", lambda enc: b""),
    ("a huge value", lambda enc: enc.element(PATIENT_NAME, "PN", b"A" * 65534)),
    ("an empty sequence key", lambda enc: enc.element(0x00400100, "SQ", b"")),
    ("a sequence key with an empty item", lambda enc: enc.element(0x00400100, "SQ", enc.item(0))),
    ("a UID list", lambda enc: enc.element(STUDY_UID, "UI", b"1.2.3\\1.2.4\\" + b"1.2" * 30)),
    ("Q/R keys in a worklist query", lambda enc: enc.element(0x00080052, "CS", b"STUDY ") +
     enc.element(STUDY_UID, "UI", b"")),
    ("pixel data in a query", lambda enc: enc.element(st.PIXEL_DATA, "OB", bytes(64))),
]


def _two_items(enc: Enc) -> bytes:
    item = enc.element(0x00080060, "CS", b"US")
    body = enc.item(len(item)) + item + enc.item(len(item)) + item
    return enc.element(0x00400100, "SQ", body)


def _sps_value(enc: Enc, tag: int, vr: str, value: bytes) -> bytes:
    inner = enc.element(tag, vr, pad(value))
    return enc.element(0x00400100, "SQ", enc.item(len(inner)) + inner)


@dataclass
class DimseCase:
    name: str
    detail: str
    ts: str
    data: bytes
    sop_uid: str | None = None    # MPPS: the instance (None: let the SCP choose)
    action: str = "find"          # find | create | set
    may_abort: bool = False       # the command set itself is invalid: an A-ABORT is an answer

    def describe(self) -> str:
        return (f"{self.name} [{self.detail}] {self.action} in {pydicom.uid.UID(self.ts).name}, "
                f"{len(self.data)} bytes")


def _identifier_cases(prefix: str, rng: random.Random, sop_class: str, query,
                      specials, count: int, *, named: str | None = None) -> list[DimseCase]:
    """C-FIND identifiers: a valid ``query(rng)`` in each transfer syntax, the
    ``specials``, and ``count`` mutations of valid ones (the MWL and Q/R campaigns).
    The cases are named ``named`` (else ``prefix``) and their number."""
    cases = []

    def add(detail, ts, data):
        cases.append(DimseCase(f"{named or prefix}-{len(cases):04d}", detail, ts, data))

    for ts in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE):
        add("a valid query", ts, encode(query(random.Random(1)), ts))
    for detail, make in specials:
        ts = rng.choice([EXPLICIT_LE, IMPLICIT_LE])
        add(detail, ts, make(Enc.of(ts)))
    ops = ["truncate", "bitflip", "bytes_", "length", "undefined", "nest", "huge", "uid_vr",
           "reorder", "duplicate", "delimiters"]
    for _ in range(count):
        ts = rng.choice([EXPLICIT_LE, EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
        s = Seed(f"{prefix}-query", sop_class, ts, encode(query(rng), ts))
        elements = judge(s.plain, ts, "").elements
        op = rng.choice(ops)
        data, detail = getattr(_Mutator(rng, Enc.of(ts), s), op)(s.plain, elements)
        add(f"{op.rstrip('_')}: {detail}", ts, data)
    return cases


def worklist_identifiers(seed: int = DEFAULT_SEED,
                         count: int = DEFAULT_CASES // 3) -> list[DimseCase]:
    """MWL C-FIND identifiers: valid ones, the specials above, and mutations."""
    return _identifier_cases("mwl", random.Random(f"{seed}:mwl"), MWL_FIND, _mwl_query,
                             WORKLIST_SPECIALS, count)


def _qr_query(rng: random.Random, sop_class: str) -> Dataset:
    """A plausible Q/R C-FIND identifier (PS3.4 C.6.1/C.6.2) at a random level, with
    the unique keys above it sometimes given, sometimes not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wildcards and ranges are not valid DA/CS values
        ds = Dataset()
        ds.SpecificCharacterSet = rng.choice(["ISO_IR 192", "ISO_IR 100", ""])
        levels = ["STUDY", "SERIES", "IMAGE"] + (["PATIENT"] if sop_class == PATIENT_ROOT_FIND else [])
        ds.QueryRetrieveLevel = rng.choice(levels)
        ds.PatientName = rng.choice(["", "*", "DOE*", "Ζαχαρίας*", "doe^jane", "?", "*A%B*"])
        ds.PatientID = rng.choice(["", "P1", "*", "P%1"])
        ds.StudyDate = rng.choice(["", "20240105", "20240101-20240131", "-", "-20240101"])
        ds.StudyInstanceUID = rng.choice(["", fresh_uid("qr", rng.random()),
                                          "1.2.3\\1.2.4\\1.2.5"])
        ds.ModalitiesInStudy = rng.choice(["", "US", "US\\CT"])
        ds.NumberOfStudyRelatedInstances = None
        if ds.QueryRetrieveLevel in ("SERIES", "IMAGE"):
            ds.SeriesInstanceUID = rng.choice(["", fresh_uid("qr-series", rng.random())])
            ds.Modality = rng.choice(["", "US"])
        if ds.QueryRetrieveLevel == "IMAGE":
            ds.SOPInstanceUID = ""
            ds.InstanceNumber = rng.choice(["", "1"])
        return ds


QR_SPECIALS = [
    ("no QueryRetrieveLevel", lambda enc: enc.element(PATIENT_NAME, "PN", b"*")),
    ("QueryRetrieveLevel garbage", lambda enc: enc.element(0x00080052, "CS", b"WORKLIST")
     + enc.element(PATIENT_NAME, "PN", b"*")),
    ("two levels at once", lambda enc: enc.element(0x00080052, "CS", b"STUDY\\SERIES")),
    ("SERIES with no StudyInstanceUID", lambda enc: enc.element(0x00080052, "CS", b"SERIES ")
     + enc.element(0x0020000E, "UI", b"")),
    ("a StudyInstanceUID list of garbage", lambda enc: enc.element(0x00080052, "CS", b"STUDY ")
     + enc.element(0x0020000D, "UI", b"1.2.x\\..\\" + b"9" * 70 + b"\0")),
    ("a huge UID list", lambda enc: enc.element(0x00080052, "CS", b"STUDY ")
     + enc.element(0x0020000D, "UI", b"\\".join(b"1.2.%d" % i for i in range(3000)))),
    ("a study date range of garbage", lambda enc: enc.element(0x00080020, "DA", b"2024-13-45")
     + enc.element(0x00080052, "CS", b"STUDY ")),
] + [special for special in WORKLIST_SPECIALS if "sequence" not in special[0]
     and "date" not in special[0] and "time" not in special[0]]


def qr_identifiers(sop_class: str, seed: int = DEFAULT_SEED,
                   count: int = DEFAULT_CASES // 3) -> list[DimseCase]:
    """Q/R C-FIND identifiers for ``sop_class`` (Patient or Study Root): valid ones,
    the specials above, and mutations of valid ones."""
    # Named by model, so that --show finds a case of either campaign.
    named = "qr-patient" if sop_class == PATIENT_ROOT_FIND else "qr-study"
    return _identifier_cases("qr", random.Random(f"{seed}:qr:{sop_class}"), sop_class,
                             lambda rng: _qr_query(rng, sop_class), QR_SPECIALS, count,
                             named=named)


def _mpps_create(rng: random.Random) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = rng.choice(["FUZZ^MPPS", "Ζαχαρίας^Γιάννης"])
    ds.PatientID = "FUZZ-MPPS"
    ssa = Dataset()
    ssa.StudyInstanceUID = fresh_uid("mpps-study", rng.random())
    ssa.AccessionNumber = ""
    ssa.RequestedProcedureID = ""
    ssa.ScheduledProcedureStepID = "SPS1"
    ssa.ReferencedStudySequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "US1"
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "US"
    ds.PerformedSeriesSequence = []
    return ds


def _mpps_final(rng: random.Random) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = rng.choice(["COMPLETED", "DISCONTINUED", "IN PROGRESS"])
    ds.PerformedProcedureStepEndDate = "20240105"
    ds.PerformedProcedureStepEndTime = "100000"
    series = Dataset()
    series.SeriesInstanceUID = fresh_uid("mpps-series", rng.random())
    series.PerformingPhysicianName = "WHO^DR"
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def mpps_requests(seed: int = DEFAULT_SEED, count: int = DEFAULT_CASES // 4) -> list[DimseCase]:
    """MPPS N-CREATE then N-SET pairs (``sop_uid`` shared), valid and mutated; and odd UIDs."""
    rng = random.Random(f"{seed}:mpps")
    cases = []
    ops = ["truncate", "bitflip", "bytes_", "length", "undefined", "nest", "huge", "uid_vr",
           "reorder", "duplicate", "delimiters"]

    def add(detail, ts, data, uid, action, may_abort=False):
        cases.append(DimseCase(f"mpps-{len(cases):04d}", detail, ts, data, uid, action,
                               may_abort))

    for bad_uid in ["1.2.abc", "", "1." + "2" * 70, "0.0", "1.2\x003", " 1.2.3", None]:
        ts = EXPLICIT_LE
        add(f"N-CREATE with SOP Instance UID {bad_uid!r}", ts, encode(_mpps_create(rng), ts),
            bad_uid, "create", may_abort=bad_uid is not None)
    add("N-SET of an unknown instance", EXPLICIT_LE, encode(_mpps_final(rng), EXPLICIT_LE),
        fresh_uid(seed, "mpps-unknown"), "set")
    for i in range(count):
        ts = rng.choice([EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
        uid = fresh_uid(seed, "mpps", i)
        create = Seed("mpps-create", MPPS, ts, encode(_mpps_create(rng), ts))
        final = Seed("mpps-set", MPPS, ts, encode(_mpps_final(rng), ts))
        target = rng.choice(["create", "set", "both", "none"])
        data_c, detail_c = create.plain, "valid"
        data_s, detail_s = final.plain, "valid"
        if target in ("create", "both"):
            op = rng.choice(ops)
            data_c, detail_c = getattr(_Mutator(rng, Enc.of(ts), create), op)(
                create.plain, judge(create.plain, ts, "").elements)
            detail_c = f"{op.rstrip('_')}: {detail_c}"
        if target in ("set", "both"):
            op = rng.choice(ops)
            data_s, detail_s = getattr(_Mutator(rng, Enc.of(ts), final), op)(
                final.plain, judge(final.plain, ts, "").elements)
            detail_s = f"{op.rstrip('_')}: {detail_s}"
        add(f"N-CREATE {detail_c}", ts, data_c, uid, "create")
        add(f"N-SET {detail_s}", ts, data_s, uid, "set")
        if rng.random() < 0.2:
            add("N-SET again", ts, final.plain, uid, "set")
    return cases


# -- command line: show or dump one case ----------------------------------------------


def _all(seed: int, count: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for c in store_cases(seed, count):
        out[c.name] = c
    for b in stow_bodies(seed, count // 4):
        out[b.name] = b
    for name, q in qido_queries(seed, count):
        out[name] = q
    for c in worklist_identifiers(seed, count // 3):
        out[c.name] = c
    for sop_class in (STUDY_ROOT_FIND, PATIENT_ROOT_FIND):   # as test_hostile sizes them
        for c in qr_identifiers(sop_class, seed, max(count // 4, 10)):
            out[c.name] = c
    for c in mpps_requests(seed, count // 4):
        out[c.name] = c
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--cases", type=int, default=DEFAULT_CASES)
    p.add_argument("--show", metavar="CASE", help="describe one case (or 'all')")
    p.add_argument("--dump", nargs=2, metavar=("CASE", "FILE"),
                   help="write a case: a Part-10 file, a STOW body or a data set")
    args = p.parse_args(argv)
    cases = _all(args.seed, args.cases)
    if args.show:
        names = list(cases) if args.show == "all" else [args.show]
        for name in names:
            case = cases[name]
            print(case if isinstance(case, str) else case.describe())
        return 0
    if args.dump:
        name, path = args.dump
        case = cases[name]
        if isinstance(case, StoreCase):
            Path(path).write_bytes(case.part10())
        elif isinstance(case, StowBody):
            Path(path).write_bytes(case.body)
            print(f"Content-Type: {case.content_type}")
        elif isinstance(case, DimseCase):
            Path(path).write_bytes(case.data)
        else:
            Path(path).write_text(str(case))
        print(f"wrote {path}")
        return 0
    counts: dict[str, int] = {}
    for name in cases:
        counts[name.split("-")[0]] = counts.get(name.split("-")[0], 0) + 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
