"""The worklist folder: every ``*.wl`` file parsed once, kept current from watchdog events,
served to C-FIND as an immutable snapshot.

Threads and ownership
---------------------
* watchdog's Observer thread only *posts* the names it saw change to the event loop
  (``loop.call_soon_threadsafe``).
* The event loop owns the state: it debounces the names (a burst of events, e.g. a writer's
  create/modify/close, costs one parse), parses the changed files in a worker thread, builds
  a new :class:`Snapshot` and publishes it by swapping one attribute.
* pynetdicom's association threads read :attr:`WorklistFolder.snapshot` once per C-FIND and
  match against that object, which never changes: a C-FIND never touches the disk and never
  sees a half-applied update.
* :meth:`WorklistFolder.take_out` (MPPS completion, housekeeping) may run on any thread: it
  hides the item from the next snapshot at once, under a lock, then moves or deletes its file.

A file that is not a readable worklist (garbage, half written, truncated) is logged once by
name and left out; it is picked up as soon as a later event finds it valid. A missing folder
is created; a folder deleted or replaced while running is noticed (by its watch and by a
periodic check) and re-created and watched again.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_has_tag
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from appliance.durable import fsync_dir
from appliance.worklist.encoded import ItemBytes, encode_item
from appliance.worklist.matching import Attrs, Query, answer_charset, attrs_from_dataset

log = logging.getLogger(__name__)

SUFFIX = ".wl"
ARCHIVE_FOLDER = "archive"
MAX_FILE_SIZE = 4 * 1024 * 1024  # a worklist item is ~1 KB; anything this big is not one

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


def is_worklist_name(name: str) -> bool:
    """A ``*.wl`` file name (case-insensitive, as Orthanc), not hidden (temp files are)."""
    return name.lower().endswith(SUFFIX) and not name.startswith(".") and len(name) > len(SUFFIX)


def item_id(name: str) -> str:
    """The worklist ID of a file name: the name without its extension (Orthanc's rule)."""
    return name[: -len(SUFFIX)]


class WorklistFileError(Exception):
    """A file in the folder is not a readable worklist item."""


@dataclass(frozen=True)
class WorklistItem:
    """One parsed ``.wl`` file."""

    name: str  # file name in the folder
    attrs: Attrs  # flattened dataset (appliance.worklist.matching)
    charset: str | None  # the Specific Character Set its answers are written in
    signature: tuple[int, int, int]  # (mtime_ns, size, inode): unchanged file, no re-parse
    mtime: float
    # Its elements encoded for answers, per transfer syntax (implicit VR or not), filled on
    # first use. A changed file is a new item, so a cache never outlives its file version.
    _encoded: dict[bool, ItemBytes | None] = field(default_factory=dict, init=False,
                                                   compare=False, repr=False)

    def encoded(self, implicit: bool) -> ItemBytes | None:
        """The item's elements encoded in Little Endian, implicit or explicit VR, as its
        C-FIND answers use them (None: answer it the pydicom way). Any thread: two threads
        may both encode it once; the results are equal."""
        try:
            return self._encoded[implicit]
        except KeyError:
            return self._encoded.setdefault(implicit, encode_item(self.attrs, self.charset, implicit))

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

    @property
    def study_instance_uid(self) -> str:
        return self.value(_STUDY_INSTANCE_UID)

    @property
    def accession_number(self) -> str:
        return self.value(_ACCESSION_NUMBER)

    @property
    def requested_procedure_id(self) -> str:
        return self.value(_REQUESTED_PROCEDURE_ID)


@dataclass(frozen=True)
class Snapshot:
    """The served worklist items at one moment; never modified once published."""

    items: tuple[WorklistItem, ...] = ()
    _links: Mapping[tuple[int, str], WorklistItem] = field(default_factory=dict, repr=False)
    _index: Mapping[tuple[tuple[int, ...], str], list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, items: Iterable[WorklistItem]) -> "Snapshot":
        """A snapshot of ``items`` (sorted by file name, so answers come in a stable order)."""
        ordered = tuple(sorted(items, key=lambda i: i.name))
        links: dict[tuple[int, str], WorklistItem] = {}
        index: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for position, item in enumerate(ordered):
            attrs = item.attrs
            for tag in _LINK_TAGS:
                attr = attrs.get(tag)
                if attr is not None and attr[2] and attr[2][0]:
                    links.setdefault((tag, attr[2][0].strip("\0")), item)
            for tag, path in _TOP_INDEXED:
                attr = attrs.get(tag)
                if attr is not None:
                    for key in set(attr[2]):
                        index.setdefault((path, key), []).append(position)
            sps = attrs.get(_SPS_SEQUENCE)
            if sps is not None and sps[0] == "SQ":
                seen = set()
                for step in sps[1]:
                    for tag, path in _SPS_INDEXED:
                        attr = step.get(tag)
                        if attr is not None:
                            seen.update((path, key) for key in attr[2])
                for entry in seen:
                    index.setdefault(entry, []).append(position)
        return cls(ordered, links, index)

    def __len__(self) -> int:
        return len(self.items)

    def search(self, query: Query) -> Iterator[WorklistItem]:
        """The items matching ``query``, lazily (C-CANCEL and LimitAnswers stop early).

        The query's exact-value keys on indexed attributes narrow the items to test; every
        candidate still passes the whole query, so the index never changes an answer.
        """
        # Only the most selective key's candidates are gathered (one day's items, not every
        # US item of the folder): the query's tests check the other keys on far fewer items.
        best: list[list[int]] | None = None
        best_size = 0
        for path, wanted in query.lookups:
            if path not in INDEXED_PATHS:
                continue
            postings = [self._index.get((path, key), []) for key in wanted]
            size = sum(len(p) for p in postings)
            if best is None or size < best_size:
                best, best_size = postings, size
            if not size:
                return iter(())
        if best is None:
            items: Iterable[WorklistItem] = self.items
        else:
            positions = best[0] if len(best) == 1 else sorted(set().union(*best))
            items = [self.items[i] for i in positions]
        matches = query.matches
        return (item for item in items if matches(item.attrs))

    def linked(self, study_instance_uid: str = "", accession_number: str = "",
               requested_procedure_id: str = "") -> WorklistItem | None:
        """The item an MPPS refers to: by Study Instance UID, else Accession Number, else
        Requested Procedure ID."""
        for tag, key in ((_STUDY_INSTANCE_UID, study_instance_uid),
                         (_ACCESSION_NUMBER, accession_number),
                         (_REQUESTED_PROCEDURE_ID, requested_procedure_id)):
            if key and (tag, key) in self._links:
                return self._links[(tag, key)]
        return None


# --------------------------------------------------------------------------- parsing

_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


def _check_structure(data: bytes) -> None:
    """Raise WorklistFileError unless every element of the file is complete.

    pydicom reads a truncated file without complaint (the last value just comes out short),
    so a half-written .wl would be served with attributes missing: walk the element headers
    first and refuse a file whose values or sequences do not end where they say.
    """
    pos, syntax = 0, None
    if len(data) >= 132 and data[128:132] == b"DICM":
        pos = 132
        while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
            element = struct.unpack_from("<H", data, pos + 2)[0]
            end, value_at = _element_end(data, pos, len(data), False, "<")
            if element == 0x0010:
                syntax = data[value_at:end].rstrip(b"\0 ").decode("ascii", "replace")
            pos = end
    if syntax == _DEFLATED:
        return  # compressed body: pydicom inflates and parses it whole
    if syntax is None:  # no File Meta: guess explicit VR from the first element's header
        implicit = not (len(data) >= pos + 6 and data[pos + 4:pos + 6].isalpha()
                        and data[pos + 4:pos + 6].isupper())
    else:
        implicit = syntax == _IMPLICIT_LE
    _walk(data, pos, len(data), implicit, ">" if syntax == _EXPLICIT_BE else "<", False)


def _element_end(data: bytes, pos: int, end: int, implicit: bool, order: str) -> tuple[int, int]:
    """(end of the element at ``pos``, start of its value); walks undefined lengths."""
    if pos + 8 > end:
        raise WorklistFileError("truncated element header")
    group = struct.unpack_from(order + "H", data, pos)[0]
    vr = None
    if implicit or group == 0xFFFE:
        length, value_at = struct.unpack_from(order + "I", data, pos + 4)[0], pos + 8
    else:
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise WorklistFileError("truncated element header")
            length, value_at = struct.unpack_from(order + "I", data, pos + 8)[0], pos + 12
        else:
            length, value_at = struct.unpack_from(order + "H", data, pos + 6)[0], pos + 8
    if length == _UNDEFINED:
        # A sequence (or UN holding an implicit-VR one): its items end with delimiters.
        return _walk_items(data, value_at, end, implicit or vr == b"UN", order), value_at
    if value_at + length > end:
        raise WorklistFileError("truncated value")
    return value_at + length, value_at


def _walk(data: bytes, pos: int, end: int, implicit: bool, order: str, in_item: bool) -> int:
    while pos < end:
        if pos + 8 > end:
            raise WorklistFileError("truncated element header")
        group, element = struct.unpack_from(order + "HH", data, pos)
        if (group << 16 | element) == _ITEM_END and in_item:
            return pos + 8
        if group == 0xFFFE:
            raise WorklistFileError("misplaced item delimiter")
        pos = _element_end(data, pos, end, implicit, order)[0]
    if in_item:
        raise WorklistFileError("sequence item not terminated")
    return pos


def _walk_items(data: bytes, pos: int, end: int, implicit: bool, order: str) -> int:
    while True:
        if pos + 8 > end:
            raise WorklistFileError("sequence not terminated")
        group, element, length = struct.unpack_from(order + "HHI", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise WorklistFileError("bad sequence item")
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, implicit, order, True)
        elif pos + length > end:
            raise WorklistFileError("truncated sequence item")
        else:
            pos += length


def parse_worklist(data: bytes) -> Attrs:
    """The flattened dataset of a .wl file's bytes; WorklistFileError if it is not one."""
    if not data:
        raise WorklistFileError("empty file")
    try:
        _check_structure(data)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        attrs = attrs_from_dataset(ds)
    except WorklistFileError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad input
        raise WorklistFileError(f"not readable DICOM ({type(e).__name__}: {str(e)[:80]})") from None
    # force=True turns any bytes into "elements"; a worklist has standard attributes.
    if not any(dictionary_has_tag(tag) for tag in attrs):
        raise WorklistFileError("no standard DICOM attribute: not a worklist")
    return attrs


def load_item(path: Path, previous: WorklistItem | None = None) -> WorklistItem | None:
    """Parse ``path``; None if it is gone; ``previous`` again if the file did not change.

    Raises WorklistFileError if it is not a readable worklist item.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not path.is_file():
        return None
    signature = (st.st_mtime_ns, st.st_size, st.st_ino)
    if previous is not None and previous.signature == signature:
        return previous
    if st.st_size > MAX_FILE_SIZE:
        raise WorklistFileError(f"{st.st_size} bytes: too large for a worklist item")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WorklistFileError(f"cannot read: {e.strerror or e}") from None
    attrs = parse_worklist(data)
    return WorklistItem(path.name, attrs, answer_charset(attrs), signature, st.st_mtime)


# --------------------------------------------------------------------------- the folder


class _Events(FileSystemEventHandler):
    """Runs on watchdog's thread: reduces events to file names and posts them to the loop."""

    def __init__(self, owner: "WorklistFolder") -> None:
        self._owner = owner
        self._folder = os.fspath(owner.folder)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        names: set[str] = set()
        lost = False
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            if event.is_directory:
                # The folder itself deleted or renamed away (a file change in it also
                # reports the folder "modified": that is not a loss).
                lost = lost or (path == self._folder and event.event_type in ("deleted", "moved"))
                continue
            parent, name = os.path.split(path)
            if parent == self._folder and is_worklist_name(name):
                names.add(name)
        if names or lost:
            self._owner.post(names, lost, watch_lost=lost)


class WorklistFolder:
    """The worklist items of one folder (see the module docstring).

    Create it, ``await start()`` on the event loop, read :attr:`snapshot` from any thread,
    ``await stop()``.
    """

    def __init__(self, folder: Path, *, debounce: float = 0.1, check_interval: float = 1.0) -> None:
        self.folder = Path(folder)
        self.debounce = debounce
        self.check_interval = check_interval
        self._lock = threading.Lock()  # guards _hidden and the publication of snapshots
        self._items: dict[str, WorklistItem] = {}  # everything parsed (owned by the loop)
        # Taken out: file name -> the signature of the file version taken out. Keyed by
        # version, so that a new file written under the same name is served again.
        self._hidden: dict[str, tuple[int, int, int]] = {}
        self._hidden_version = 0
        self._snapshot = Snapshot()
        # Set once every file present at start-up has been parsed: a C-FIND
        # arriving earlier waits for it rather than get a partial answer.
        self.loaded = threading.Event()
        self._pending: set[str] = set()
        self._rescan = False
        self._timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task | None = None
        self._check_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Observer | None = None
        self._watch = None
        self._identity: tuple[int, int] | None = None
        self._watch_lost = False
        self._reported: dict[str, str] = {}  # bad file name -> problem already logged

    @property
    def snapshot(self) -> Snapshot:
        """The current items; an immutable object, safe to use from any thread."""
        return self._snapshot

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create the folder if needed, watch it, parse every .wl file in it."""
        self._loop = asyncio.get_running_loop()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        await asyncio.to_thread(self._ensure_watched)
        await self._flush(set(), rescan=True)  # watching first: nothing written meanwhile is missed
        self._check_task = self._loop.create_task(self._check_folder_forever())
        self.loaded.set()
        log.info("worklist folder %s: %d items", self.folder, len(self._snapshot))

    async def stop(self) -> None:
        """Stop watching; the last snapshot stays readable."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in (self._check_task, self._flush_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # noqa: BLE001 - already logged by the task
                    pass
        self._check_task = self._flush_task = None
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.to_thread(observer.join, 5)

    # -- watching ----------------------------------------------------------

    def _ensure_watched(self, force: bool = False) -> bool:
        """(Re)create and (re)watch the folder if it is missing or was replaced (or
        ``force``: its watch reported the folder gone); True if it did."""
        try:
            st = self.folder.stat()
        except FileNotFoundError:
            log.warning("worklist folder %s does not exist: creating it", self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            st = self.folder.stat()
            force = True  # a new folder may reuse the old one's inode number
        identity = (st.st_dev, st.st_ino)
        if not force and identity == self._identity and self._watch is not None:
            return False
        observer = self._observer
        if observer is None:
            return False
        if self._watch is not None:
            try:
                observer.unschedule(self._watch)
            except (KeyError, OSError):
                pass  # the old watch died with the old folder
        self._watch = observer.schedule(_Events(self), os.fspath(self.folder), recursive=False)
        self._identity = identity
        return True

    async def _check_folder_forever(self) -> None:
        # inotify reports the folder's deletion, but not a folder replaced by a rename or a
        # remount: a cheap stat every second catches every case.
        while True:
            await asyncio.sleep(self.check_interval)
            force, self._watch_lost = self._watch_lost, False
            try:
                if await asyncio.to_thread(self._ensure_watched, force):
                    log.warning("worklist folder %s was replaced: watching it again", self.folder)
                    self.post(set(), True)
            except OSError as e:
                log.error("worklist folder %s: %s", self.folder, e.strerror or e)

    def post(self, names: set[str], rescan: bool, watch_lost: bool = False) -> None:
        """Any thread: these files (or, with ``rescan``, the whole folder) may have changed;
        ``watch_lost``: the folder itself went away, so its watch is dead."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._mark, names, rescan, watch_lost)
        except RuntimeError:
            pass  # the loop is closing: nothing left to serve

    def _mark(self, names: set[str], rescan: bool, watch_lost: bool = False) -> None:
        self._pending |= names
        self._rescan = self._rescan or rescan
        self._watch_lost = self._watch_lost or watch_lost
        self._arm()

    def _arm(self) -> None:
        # Debounce with a bounded delay: the first change arms the timer and later ones ride
        # along, so a writer that never stops cannot postpone the update forever.
        if self._timer is None and self._flush_task is None and (self._pending or self._rescan):
            assert self._loop is not None
            self._timer = self._loop.call_later(self.debounce, self._start_flush)

    def _start_flush(self) -> None:
        assert self._loop is not None
        self._timer = None
        names, rescan = self._pending, self._rescan
        self._pending, self._rescan = set(), False
        self._flush_task = self._loop.create_task(self._flush(names, rescan))
        self._flush_task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task) -> None:
        self._flush_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("worklist folder %s: update failed: %s", self.folder, task.exception())
        self._arm()

    async def _flush(self, names: set[str], rescan: bool) -> None:
        current = self._items
        if rescan:  # also retry the files that were bad: their problem may be gone
            names = names | set(self._reported)
        results = await asyncio.to_thread(self._load, names, rescan, current)
        items = dict(current)
        for name, outcome in results.items():
            if isinstance(outcome, WorklistItem):
                if outcome is not current.get(name):
                    log.debug("worklist item %s %s", name, "updated" if name in current else "added")
                items[name] = outcome
                if self._reported.pop(name, None) is not None:
                    log.info("worklist file %s is valid again: served", name)
                continue
            if items.pop(name, None) is not None:
                log.debug("worklist item %s removed", name)
            if outcome is None:
                self._reported.pop(name, None)
            elif self._reported.get(name) != outcome:
                self._reported[name] = outcome  # once per problem, not once per event
                log.warning("worklist file %s skipped: %s", name, outcome)
        await self._publish(items)

    def _load(self, names: set[str], rescan: bool,
              current: Mapping[str, WorklistItem]) -> dict[str, WorklistItem | str | None]:
        """Worker thread: parse the named files (or all, with ``rescan``).

        Returns name -> item, or None (gone), or a problem description.
        """
        if rescan:
            try:
                listed = {e.name for e in os.scandir(self.folder)
                          if is_worklist_name(e.name) and e.is_file()}
            except OSError as e:
                log.error("worklist folder %s: cannot list: %s", self.folder, e.strerror or e)
                listed = set()
            names = names | listed | set(current)
        results: dict[str, WorklistItem | str | None] = {}
        for name in names:
            try:
                results[name] = load_item(self.folder / name, current.get(name))
            except WorklistFileError as e:
                results[name] = str(e)
            except OSError as e:
                results[name] = f"cannot read: {e.strerror or e}"
        return results

    def _served(self, items: Mapping[str, WorklistItem]) -> list[WorklistItem]:
        hidden = self._hidden
        return [v for k, v in items.items() if hidden.get(k) != v.signature]

    async def _publish(self, items: dict[str, WorklistItem]) -> None:
        with self._lock:
            # Forget what was taken out once that version of the file is gone.
            for name in [n for n, sig in self._hidden.items()
                         if _gone(items, n, sig)]:
                del self._hidden[name]
            version = self._hidden_version
            served = self._served(items)
        # Indexing thousands of items takes a while: in a worker thread, not on the loop.
        snapshot = await asyncio.to_thread(Snapshot.of, served)
        with self._lock:
            if version != self._hidden_version:  # an item was taken out meanwhile
                snapshot = Snapshot.of(self._served(items))
            self._items = items
            self._snapshot = snapshot

    # -- taking items out --------------------------------------------------

    def take_out(self, name: str, *, archive: bool) -> Path | None:
        """Any thread: stop serving item ``name`` at once, then move its file into the
        ``archive`` sub-folder (``archive`` true) or delete it. Returns the archived path."""
        with self._lock:
            current = self._items.get(name)
            if current is not None:
                self._hidden[name] = current.signature
                self._hidden_version += 1
                self._snapshot = Snapshot.of(self._served(self._items))
        source = self.folder / name
        try:
            if not archive:
                source.unlink(missing_ok=True)
                fsync_dir(self.folder)
                return None
            target_dir = self.folder / ARCHIVE_FOLDER
            target_dir.mkdir(exist_ok=True)
            target = target_dir / name
            if target.exists():  # the same name archived before: keep both
                target = target_dir / f"{item_id(name)}-{time.strftime('%Y%m%dT%H%M%S')}{SUFFIX}"
            os.replace(source, target)
            fsync_dir(target_dir)
            fsync_dir(self.folder)
            return target
        except FileNotFoundError:
            return None
        except OSError as e:
            # Still not served (hidden until the daemon restarts); the file stays where it is.
            log.error("worklist file %s: cannot %s it: %s", name,
                      "archive" if archive else "delete", e.strerror or e)
            return None


def _gone(items: Mapping[str, WorklistItem], name: str, signature: tuple[int, int, int]) -> bool:
    """True if the file version ``signature`` of ``name`` is no longer in ``items``."""
    item = items.get(name)
    return item is None or item.signature != signature


