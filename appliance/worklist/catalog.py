"""The served worklist items: compact records and the catalog that indexes them.

Pure: no I/O, no logging, no module state.

Memory. An item keeps its attribute map and its encoded answer values
(:mod:`appliance.worklist.encoded`) as one ``marshal`` blob (about 1.3 KB for a typical
ultrasound item) and unpacks it when a query tests it (about 8 us): 10,000 items take about
25 MB with their index instead of the ~150 MB that live attribute maps and per-transfer-syntax
element caches took. The same blob is what the parse cache stores
(:mod:`appliance.worklist.cache`), so a restart reads it back without parsing.

Updates. The catalog changes in place, one item at a time (its index keys removed and
added): a changed file costs work proportional to that file, not a rebuild of the whole
index. A query takes its candidates (records, which never change) under the catalog's lock,
then tests and answers them outside it: it sees the folder as it was when it started.
"""

from __future__ import annotations

import bisect
import marshal
import threading
from collections.abc import Iterable, Iterator

from appliance.worklist.encoded import Values, encode_values
from appliance.worklist.matching import Attrs, Query, answer_charset

__all__ = ["Catalog", "INDEXED_PATHS", "WorklistItem", "item_id", "pack"]

SUFFIX = ".wl"

_STUDY_INSTANCE_UID = 0x0020000D
_ACCESSION_NUMBER = 0x00080050
_REQUESTED_PROCEDURE_ID = 0x00401001
_SPS_SEQUENCE = 0x00400100

# Attributes indexed by exact key, so that a query naming one (a patient, an accession, a
# station, a day) tests a handful of candidates instead of every item.
_TOP_INDEXED = tuple((tag, (tag,)) for tag in (
    0x00100020, 0x00100010, _ACCESSION_NUMBER, _STUDY_INSTANCE_UID, _REQUESTED_PROCEDURE_ID))
_SPS_INDEXED = tuple((tag, (_SPS_SEQUENCE, tag)) for tag in (
    0x00080060,  # Modality
    0x00400001,  # Scheduled Station AE Title
    0x00400002,  # Scheduled Procedure Step Start Date
    0x00400006,  # Scheduled Performing Physician's Name
    0x00400009,  # Scheduled Procedure Step ID
))
INDEXED_PATHS = frozenset(path for _, path in _TOP_INDEXED + _SPS_INDEXED)
_LINK_TAGS = (_STUDY_INSTANCE_UID, _ACCESSION_NUMBER, _REQUESTED_PROCEDURE_ID)


def item_id(name: str) -> str:
    """The worklist ID of a file name: the name without its extension (Orthanc's rule)."""
    return name[: -len(SUFFIX)]


def pack(attrs: Attrs) -> tuple[str | None, bytes]:
    """(answer character set, packed attribute map and encoded values) of a parsed item."""
    charset = answer_charset(attrs)
    return charset, marshal.dumps((attrs, encode_values(attrs, charset)))


class WorklistItem:
    """One parsed ``.wl`` file (immutable): its signature on disk and its packed content."""

    __slots__ = ("name", "size", "mtime_ns", "ino", "digest", "charset", "packed")

    def __init__(self, name: str, size: int, mtime_ns: int, ino: int, digest: int,
                 charset: str | None, packed: bytes) -> None:
        self.name = name
        self.size = size
        self.mtime_ns = mtime_ns
        self.ino = ino
        self.digest = digest  # of the file's bytes: an in-place rewrite of the same size
        self.charset = charset
        self.packed = packed

    @classmethod
    def of(cls, name: str, attrs: Attrs, *, signature: tuple[int, int, int] = (0, 0, 0),
           digest: int = 0) -> "WorklistItem":
        """An item from its attribute map; ``signature`` is (mtime_ns, size, inode)."""
        charset, packed = pack(attrs)
        mtime_ns, size, ino = signature
        return cls(name, size, mtime_ns, ino, digest, charset, packed)

    def unpack(self) -> tuple[Attrs, Values]:
        """(attribute map, encoded values): new objects on every call."""
        return marshal.loads(self.packed)

    @property
    def attrs(self) -> Attrs:
        """The flattened dataset (appliance.worklist.matching)."""
        return marshal.loads(self.packed)[0]

    @property
    def signature(self) -> tuple[int, int, int]:
        """(mtime_ns, size, inode) of the file version this item was read from."""
        return (self.mtime_ns, self.size, self.ino)

    @property
    def mtime(self) -> float:
        """The file's modification time, in seconds."""
        return self.mtime_ns / 1e9

    @property
    def id(self) -> str:
        """Orthanc's worklist ID: the file name without ``.wl``."""
        return item_id(self.name)

    def value(self, tag: int) -> str:
        """The first value of a top-level text attribute, stripped; "" if absent."""
        attr = self.attrs.get(tag)
        if attr is None or attr[0] == "SQ" or not attr[1]:
            return ""
        return str(attr[1][0]).strip(" \0")

    def link_keys(self) -> tuple[str, str, str]:
        """(Study Instance UID, Accession Number, Requested Procedure ID), one unpack."""
        attrs = self.attrs
        out = []
        for tag in _LINK_TAGS:
            attr = attrs.get(tag)
            out.append("" if attr is None or attr[0] == "SQ" or not attr[1]
                       else str(attr[1][0]).strip(" \0"))
        return out[0], out[1], out[2]

    @property
    def study_instance_uid(self) -> str:
        return self.value(_STUDY_INSTANCE_UID)

    @property
    def accession_number(self) -> str:
        return self.value(_ACCESSION_NUMBER)

    @property
    def requested_procedure_id(self) -> str:
        return self.value(_REQUESTED_PROCEDURE_ID)

    def __repr__(self) -> str:
        return f"WorklistItem({self.name!r}, size={self.size}, mtime_ns={self.mtime_ns})"


def index_keys(attrs: Attrs) -> list[tuple[tuple[int, ...], str]]:
    """The (attribute path, comparison key) pairs of an item in the catalog's index (a pair
    may come twice: from two values, or two steps)."""
    keys = []
    get = attrs.get
    for tag, path in _TOP_INDEXED:
        attr = get(tag)
        if attr is not None:
            for key in attr[2]:
                keys.append((path, key))
    sps = get(_SPS_SEQUENCE)
    if sps is not None and sps[0] == "SQ":
        for step in sps[1]:
            get = step.get
            for tag, path in _SPS_INDEXED:
                attr = get(tag)
                if attr is not None:
                    for key in attr[2]:
                        keys.append((path, key))
    return keys


class Catalog:
    """The served items by file name, with an index of exact keys; thread-safe.

    Every method may be called from any thread. Items come out in file-name order, so
    answers come in a stable order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, WorklistItem] = {}
        self._names: list[str] = []  # sorted
        # path -> comparison key -> the one file name holding it, or a set of them.
        self._index: dict[tuple[int, ...], dict[str, str | set[str]]] = {
            path: {} for path in INDEXED_PATHS}
        # Paths whose postings are still as a snapshot stored them (restore): unmarshalled
        # on first use, so that a restart serves without building ~60,000 entries of
        # which a query reads two paths' worth.
        self._stored: dict[tuple[int, ...], bytes] = {}

    @classmethod
    def of(cls, items: Iterable[WorklistItem]) -> "Catalog":
        """A catalog of ``items``."""
        catalog = cls()
        catalog.add_all(items)
        return catalog

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> tuple[WorklistItem, ...]:
        """Every item, in file-name order (a tuple: it does not follow later changes)."""
        with self._lock:
            return tuple(self._items[name] for name in self._names)

    def get(self, name: str) -> WorklistItem | None:
        """The item of file ``name``, if served."""
        return self._items.get(name)

    def names(self) -> set[str]:
        """The file names served."""
        with self._lock:
            return set(self._items)

    def dump(self) -> tuple[dict[str, WorklistItem], dict[tuple[int, ...], bytes]]:
        """(items by name, index as one ``marshal`` blob per path): a copy to store (see
        :meth:`restore`), taken at once."""
        with self._lock:
            index = {path: self._stored.get(path) or marshal.dumps(self._index[path])
                     for path in INDEXED_PATHS}
            return dict(self._items), index

    def restore(self, items: dict[str, WorklistItem], index: dict) -> bool:
        """Serve ``items`` with ``index``, both from :meth:`dump` (of an earlier run) and
        both taken over, not copied: no item is unpacked, and each path's postings are
        read when first needed (checked then against the items; rebuilt from them if they
        do not belong together). False (nothing changed) if ``index`` is not a dump's."""
        if type(index) is not dict or index.keys() != INDEXED_PATHS or not all(
                isinstance(blob, (bytes, memoryview)) for blob in index.values()):
            return False
        with self._lock:
            self._items = items
            self._names = sorted(items)
            self._index = {path: {} for path in INDEXED_PATHS}
            self._stored = dict(index)
        return True

    def _postings(self, path: tuple[int, ...]) -> dict[str, str | set[str]]:
        """The postings of an indexed ``path`` (under the lock)."""
        blob = self._stored.pop(path, None)
        if blob is not None:
            self._index[path] = self._thawed(path, blob)
        return self._index[path]

    def _thawed(self, path: tuple[int, ...], blob: bytes) -> dict[str, str | set[str]]:
        names = self._items.keys()  # as restored: any change thaws every path first
        try:
            postings = marshal.loads(blob)
            if type(postings) is dict and all(
                    held in names if type(held) is str else type(held) is set and held <= names
                    for held in postings.values()):
                return postings
        except (ValueError, EOFError, TypeError):
            pass
        # A snapshot that disagrees with itself: this path from the items (each unpacked;
        # a damaged one is found by no key).
        return Catalog.of(self._items[name] for name in self._names)._index[path]

    def _thaw_all(self) -> None:
        for path in list(self._stored):
            self._postings(path)

    def add_all(self, items: Iterable[WorklistItem]) -> list[WorklistItem]:
        """Serve ``items`` (replacing items of the same names), indexed in one pass (a
        start-up's thousands of items); returns those whose packed content is damaged
        (not served)."""
        with self._lock:
            self._thaw_all()
            return self._add_many(items)

    def update(self, put: Iterable[WorklistItem], remove: Iterable[str],
               keys: dict[str, list] | None = None) -> None:
        """Serve ``put`` (replacing items of the same names) and stop serving ``remove``;
        the work is proportional to the items named, not to the catalog. ``keys``: the
        index keys of items of ``put`` by name (:func:`index_keys`), known from their
        parse; the others are unpacked for them."""
        put, remove = list(put), list(remove)
        if not put and not remove:
            return
        with self._lock:
            self._thaw_all()
            for name in remove:
                self._remove(name)
            self._add_many(put, keys)

    def _add_many(self, items: Iterable[WorklistItem],
                  known: dict[str, list] | None = None) -> list[WorklistItem]:
        damaged = []
        added: list[str] = []
        postings: dict[tuple, list[str]] = {}
        for item in items:
            name = item.name
            keys = known.get(name) if known else None
            if keys is None:
                try:
                    keys = index_keys(marshal.loads(item.packed)[0])
                except Exception:  # noqa: BLE001 - a damaged cache row: read the file instead
                    damaged.append(item)
                    continue
            if name in self._items:
                self._remove(name)
            self._items[name] = item
            added.append(name)
            for entry in keys:
                held = postings.get(entry)
                if held is None:
                    postings[entry] = [name]
                elif held[-1] != name:
                    held.append(name)
        if len(added) > 16:
            self._names = sorted(self._items)
        else:
            for name in added:
                bisect.insort(self._names, name)
        index = self._index
        for (path, key), names in postings.items():
            target = index[path]
            held = target.get(key)
            if held is None and len(names) == 1:
                target[key] = names[0]
                continue
            merged = set(names)
            if held is not None:
                if type(held) is str:
                    merged.add(held)
                else:
                    held.update(merged)
                    continue
            target[key] = merged
        return damaged

    def _remove(self, name: str) -> None:
        item = self._items.pop(name, None)
        if item is None:
            return
        del self._names[bisect.bisect_left(self._names, name)]
        index = self._index
        try:
            entries = set(index_keys(item.attrs))
        except Exception:  # noqa: BLE001 - content that cannot be unpacked: look everywhere
            entries = {(path, key) for path, postings in index.items()
                       for key, held in postings.items()
                       if (held == name if type(held) is str else name in held)}
        for path, key in entries:
            postings = index[path]
            held = postings.get(key)
            if held is None:
                continue
            if type(held) is str:
                if held == name:
                    del postings[key]
            else:
                held.discard(name)
                if len(held) == 1:
                    postings[key] = next(iter(held))

    def candidates(self, query: Query) -> list[WorklistItem]:
        """The items that may match ``query``, in file-name order: those holding the
        query's most selective exact key (and every other exact key it names), or every
        item. An item lacking one of those keys cannot pass the query's tests, and every
        candidate must still pass them all, so the index never changes an answer."""
        with self._lock:
            lookups = []
            for path, wanted in query.lookups:
                if path not in INDEXED_PATHS:
                    continue
                postings = self._postings(path)
                held = [h for h in (postings.get(key) for key in wanted) if h is not None]
                if not held:
                    return []
                lookups.append((sum(1 if type(h) is str else len(h) for h in held), held))
            items = self._items
            if not lookups:
                return [items[name] for name in self._names]
            lookups.sort(key=lambda lookup: lookup[0])
            names: set[str] = set()
            for held in lookups[0][1]:
                if type(held) is str:
                    names.add(held)
                else:
                    names.update(held)
            for _, others in lookups[1:]:  # fewer items to unpack and test
                names = {name for name in names
                         if any(name == h if type(h) is str else name in h for h in others)}
            return [items[name] for name in sorted(names)]

    def matches(self, query: Query) -> Iterator[tuple[WorklistItem, Attrs, Values]]:
        """(item, attribute map, encoded values) of every item matching ``query``, lazily
        (C-CANCEL and LimitAnswers stop early), over the items served when it is called."""
        matches = query.matches
        for item in self.candidates(query):
            attrs, values = marshal.loads(item.packed)
            if matches(attrs):
                yield item, attrs, values

    def search(self, query: Query) -> Iterator[WorklistItem]:
        """The items matching ``query``, lazily."""
        return (item for item, _, _ in self.matches(query))

    def linked(self, study_instance_uid: str = "", accession_number: str = "",
               requested_procedure_id: str = "") -> WorklistItem | None:
        """The item an MPPS refers to: by Study Instance UID, else Accession Number, else
        Requested Procedure ID (the first in file-name order when several share it)."""
        with self._lock:
            for tag, key in ((_STUDY_INSTANCE_UID, study_instance_uid.strip(" \0")),
                             (_ACCESSION_NUMBER, accession_number.strip(" \0")),
                             (_REQUESTED_PROCEDURE_ID, requested_procedure_id.strip(" \0"))):
                if not key:
                    continue
                held = self._postings((tag,)).get(key)
                if held is not None:
                    return self._items[held if type(held) is str else min(held)]
        return None
