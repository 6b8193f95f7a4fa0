"""The worklist folder: every ``*.wl`` file read once, kept current, served to C-FIND with
read-your-writes.

Threads and ownership
---------------------
* One background thread per folder reads the folder at start (unchanged files from the
  parse cache, :mod:`appliance.worklist.cache`; the rest parsed, :mod:`.parse`), then waits
  on the folder's inotify queue (:mod:`.inotify`) and applies what changed after a short
  debounce (a writer's create/modify/close costs one parse). It also writes the parse cache,
  checks every ``check_interval`` seconds that the folder is still the one watched, and
  every minute compares the listing with what is served (changes inotify cannot see: files
  written by another host on a network file system).
* Any thread may call :meth:`WorklistFolder.refresh`; a C-FIND does, through
  :meth:`~WorklistFolder.current`, before it answers. Under the folder's update lock it
  reads the inotify queue to its end and applies what it names: the kernel queued those
  events inside the system calls that made the changes, so a file written and closed (or
  renamed into place, or deleted) before the C-FIND started is in its answer. It also
  compares the folder's change time (``st_mtime_ns``, ``st_ctime_ns``) with the last one
  accounted for: a change that no event explains (no inotify here, or an overflowed queue)
  makes it re-list the folder (scandir + stat) and read only new and changed files. When
  nothing changed this costs one ``read`` and one ``stat``.
* The items live in a :class:`~appliance.worklist.catalog.Catalog`, updated one item at a
  time under its own lock: one changed file costs work proportional to that file. A query
  takes its candidates under that lock and answers outside it.
* :meth:`WorklistFolder.take_out` (MPPS completion, housekeeping) may run on any thread: it
  stops serving the item at once, then moves or deletes its file.

A file that is not a readable worklist (garbage, half written, truncated) is logged once by
name and left out; it is read again as soon as it changes. An empty file (a writer that has
just created or truncated it) is left out without a warning. A missing folder is created; a
folder deleted or replaced while running is noticed (by its watch, by the change-time check
and by the periodic check) and re-created and watched again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import select
import stat
import threading
import time
from collections import deque
from pathlib import Path

from appliance.durable import fsync_dir
from appliance.worklist.cache import CACHE_NAME, NOTHING, ParseCache, Row
from appliance.worklist.catalog import (
    INDEXED_PATHS,
    SUFFIX,
    Catalog,
    WorklistItem,
    item_id,
)
from appliance.worklist.inotify import Changes, Inotify
from appliance.worklist.parse import WorklistFileError, parse_worklist
from appliance.worklist.reading import EMPTY, Read, Unreadable, read_file

__all__ = [
    "ARCHIVE_FOLDER", "CACHE_NAME", "INDEXED_PATHS", "SUFFIX", "Catalog", "WorklistFileError",
    "WorklistFolder", "WorklistItem", "is_worklist_name", "item_id", "parse_worklist",
]

log = logging.getLogger(__name__)

ARCHIVE_FOLDER = "archive"
# A cached row is trusted on its signature alone only if it was checked at least this long
# after the file's last modification: a rewrite within the file system's timestamp
# granularity (a few ms; more on network file systems) could keep size and mtime.
_RACY_NS = 2_000_000_000
# Even with inotify, the listing is compared with the catalog this often (stat of every file,
# ~50 ms for 10,000): a safety net for changes inotify cannot see (NFS writes from another host).
_LISTING_INTERVAL = 60.0
# A first start with at least this many files to read hands part of them to a helper
# process (appliance.worklist.helper), in chunks of this many files (~20 ms of work each).
HELPER_FROM = 1000
_CHUNK = 250
_PER_HAND_OVER = 4  # chunks handed to the helper at once
_IN_FLIGHT = 2  # hand-overs waiting for the helper or being read by it
# A chunk the helper has not answered in this long: it is stuck, and its files are read here.
_HELPER_TIMEOUT = 120.0


def is_worklist_name(name: str) -> bool:
    """A ``*.wl`` file name (case-insensitive, as Orthanc), not hidden (temp files are)."""
    return name.lower().endswith(SUFFIX) and not name.startswith(".") and len(name) > len(SUFFIX)


class _Beside:
    """``fn()`` run on a thread of its own; :meth:`result` waits for its return value (or
    raises its exception)."""

    def __init__(self, fn) -> None:
        self._fn = fn
        self._outcome: tuple[bool, object] = (False, None)
        self._thread = threading.Thread(target=self._run, name="worklist-listing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = (True, self._fn())
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            self._outcome = (False, e)

    def result(self):
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def _row(item: WorklistItem, verified_ns: int) -> Row:
    return Row(item.size, item.mtime_ns, item.ino, item.digest, verified_ns, item.charset,
               item.packed)


class WorklistFolder:
    """The worklist items of one folder (see the module docstring).

    Create it, ``await start()`` on the event loop (it returns once every file present is
    served), call :meth:`current` (or read :attr:`snapshot`) from any thread, ``await
    stop()``. ``cache``: the parse cache file (None: parse every file at start).
    ``inotify`` false watches without inotify, as where it is not available: created,
    deleted and renamed files are still seen by the next query (the folder's change time),
    files rewritten in place within ``check_interval``.
    """

    def __init__(self, folder: Path, *, cache: Path | None = None, debounce: float = 0.05,
                 check_interval: float = 1.0, inotify: bool = True,
                 helper_from: int = HELPER_FROM) -> None:
        self.folder = Path(folder)
        self.helper_from = helper_from  # files to read at start from which a helper reads some
        self.use_inotify = inotify  # False: as where inotify is not available (tests)
        self.cache_path = Path(cache) if cache is not None else None
        self.debounce = debounce
        self.check_interval = check_interval
        # Set once every file present at start-up is served: a C-FIND arriving earlier
        # waits for it rather than get a partial answer.
        self.loaded = threading.Event()
        self._catalog = Catalog()
        self._update = threading.Lock()  # held while reading events and applying them
        # Under _update:
        self._watch: Inotify | None = None
        self._watch_failed = False  # logged once
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder watched
        self._stamp: tuple[int, int] | None = None  # its change time last accounted for
        # Taken out: file name -> the signature of the file version taken out. Keyed by
        # version, so that a new file written under the same name is served again.
        self._hidden: dict[str, tuple[int, int, int]] = {}
        self._bad: dict[str, tuple[int, int, int]] = {}  # unreadable file -> its signature
        self._reported: dict[str, str] = {}  # bad file name -> problem already logged
        self._dirty: dict[str, Row | None] = {}  # cache rows not written yet
        self._keys: dict[str, list] = {}  # index keys of items read, until they are served
        self._closed = False
        # The background thread's.
        self._cache: ParseCache | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future = concurrent.futures.Future()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1

    @property
    def snapshot(self) -> Catalog:
        """The served items (thread-safe; it does not look at the folder first)."""
        return self._catalog

    def current(self) -> Catalog:
        """Any thread: the served items, after applying every change made to the folder
        before this call (see the module docstring)."""
        if self.loaded.is_set():
            self.refresh()
        return self._catalog

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Create the folder if needed, watch it, serve every .wl file in it; returns once
        they are served."""
        if self._thread is None:
            # At once, before the caller goes on (the daemon says it is ready): a folder
            # that did not exist is there for the clinic's tools to write into.
            self._ensure_exists()
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._run, name="worklist-folder",
                                            daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._started)

    async def stop(self) -> None:
        """Stop watching and write what the parse cache still lacks; the items stay
        readable."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        await asyncio.to_thread(thread.join, 10)
        self._thread = None
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._update:
            self._closed = True
            if self._watch is not None:
                self._watch.close()
                self._watch = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the background thread ---------------------------------------------

    def _run(self) -> None:
        try:
            self._load_all()
        except BaseException as e:  # noqa: BLE001 - handed to start()'s caller
            if self._cache is not None:
                self._cache.close()
            if not self._started.cancelled():
                self._started.set_exception(e)
            return
        self.loaded.set()
        # Cancelled: the daemon stopped while the folder was read. The watch loop below
        # sees the stop at once, and still writes the parse cache for the next start.
        if not self._started.cancelled():
            self._started.set_result(None)
        try:
            self._watch_forever()
        except Exception:  # noqa: BLE001 - keep what is served; say why updates stopped
            log.exception("worklist folder %s: watching stopped", self.folder)
        finally:
            self._persist()
            if self._cache is not None:
                if self._cache.journal_rows:
                    self._snapshot()
                self._cache.close()

    def _watch_forever(self) -> None:
        next_check = time.monotonic() + self.check_interval
        next_listing = time.monotonic() + _LISTING_INTERVAL
        while not self._stopping.is_set():
            with self._update:
                watch_fd = self._watch.fileno() if self._watch is not None else -1
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if watch_fd >= 0:
                poller.register(watch_fd, select.POLLIN)
            timeout = max(0.0, next_check - time.monotonic())
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
            if self._stopping.is_set():
                break
            if watch_fd in ready:
                # Let a burst of events (a writer's create, writes and close) settle.
                self._stopping.wait(self.debounce)
            now = time.monotonic()
            periodic = now >= next_check
            if periodic:
                next_check = now + self.check_interval
            # Without inotify, every periodic pass looks for files rewritten in place; with
            # it, one now and then (a file system whose other clients inotify does not see).
            full = periodic and (watch_fd < 0 or now >= next_listing)
            if full:
                next_listing = now + _LISTING_INTERVAL
            try:
                self.refresh(full=full)
            except Exception as e:  # noqa: BLE001 - the next pass may succeed
                log.error("worklist folder %s: update failed: %s", self.folder, e)
            self._persist()

    def _load_all(self) -> None:
        started = time.monotonic()
        with self._update:
            st = self._ensure_watched()  # watching first: nothing written meanwhile is missed
            self._stamp = (st.st_mtime_ns, st.st_ctime_ns)  # later changes are in its queue
            # The listing (a stat per file, which waits in the kernel, not for the
            # interpreter) runs beside the reading of the parse cache.
            listing = _Beside(self._list)
            cached = NOTHING
            if self.cache_path is not None:
                cache = ParseCache(self.cache_path, self.folder)
                if cache.open():
                    self._cache = cache
                    cached = cache.load()
            # The snapshot's catalog, index included, as it was (stale entries are fixed
            # below against the journal and the listing).
            restored = cached.index is not None and self._catalog.restore(
                cached.items, cached.index)
            items = dict(cached.items)  # what each file was when last read: snapshot, journal
            verified = {}  # when a journal row's signature was last seen with its bytes
            for name, row in cached.journal.items():
                if row is None:
                    items.pop(name, None)
                else:
                    items[name] = WorklistItem(name, row.size, row.mtime_ns, row.ino,
                                               row.digest, row.charset, row.packed)
                    verified[name] = row.verified_ns
            listed = listing.result() or {}
            fresh, parse = [], []
            for name, st_file in listed.items():
                item = items.get(name)
                if item is None or (item.size, item.mtime_ns, item.ino) != (
                        st_file.st_size, st_file.st_mtime_ns, st_file.st_ino):
                    parse.append((name, None))
                else:
                    when = verified.get(name, cached.verified_ns)
                    # Read again (its bytes compared, parsed only if they differ) if it was
                    # checked too soon after a write, or if its inode changed since: a
                    # rewrite in place that put size and mtime back (cp -p, rsync -t)
                    # cannot put the change time back.
                    if (when - item.mtime_ns < _RACY_NS
                            or st_file.st_ctime_ns > when - _RACY_NS):
                        parse.append((name, item))
                    else:
                        fresh.append(item)
            if restored:
                # The catalog holds the snapshot's items: put the journal's that still
                # hold, take out what is gone or is read again below.
                snapshot = cached.items
                self._catalog.update(
                    [item for item in fresh if item.name in verified],
                    [name for name, _ in parse if name in snapshot]
                    + list(snapshot.keys() - listed.keys()))
            else:
                parse.extend((item.name, None) for item in self._catalog.add_all(fresh))
            gone = items.keys() - listed.keys()
            self._dirty.update((name, None) for name in gone)
            results, helped = self._read_all(parse)
            self._apply(results)
            changed = len(parse) + len(gone)
        log.info("worklist folder %s: %d items (%d from the parse cache, %d files read%s) in %.2f s",
                 self.folder, len(self._catalog), len(fresh), len(parse),
                 f", {helped} of them by a helper process" if helped else "",
                 time.monotonic() - started)
        if self._cache is not None and (not restored or changed or cached.journal):
            self._snapshot()  # the next start needs no journal
        else:
            self._persist()

    def _persist(self) -> None:
        with self._update:
            dirty, self._dirty = self._dirty, {}
        cache = self._cache
        if dirty and cache is not None:
            cache.write(dirty.items())
            if cache.journal_rows > max(1000, len(self._catalog) // 10):
                self._snapshot()

    def _snapshot(self) -> None:
        """Write the catalog as the cache's snapshot (background thread)."""
        cache = self._cache
        if cache is None:
            return
        with self._update:
            verified_ns = 0
            if self._watch is not None and not self._closed:
                try:
                    self._refresh(False)  # every change so far applied: the bytes are as of now
                    verified_ns = time.time_ns()
                except OSError:
                    pass
            self._dirty = {}  # in the snapshot, whatever they say
            items, index = self._catalog.dump()
        cache.write_snapshot(items, index, verified_ns)

    # -- applying changes ----------------------------------------------------

    def refresh(self, *, full: bool = False) -> None:
        """Any thread: apply every change made to the folder so far (see the module
        docstring); ``full`` re-lists the folder even if nothing says it changed."""
        with self._update:
            if self._closed:
                return
            try:
                self._refresh(full)
            except OSError as e:
                log.error("worklist folder %s: %s", self.folder, e.strerror or e)

    def _refresh(self, full: bool) -> None:
        changes = self._watch.read() if self._watch is not None else Changes()
        relist = full or changes.overflow
        if changes.lost or (self._watch is None and not self._watch_failed):
            self._watch_lost()
        try:
            st = os.stat(self.folder)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            if self._identity is not None:
                log.warning("worklist folder %s was replaced: watching it again", self.folder)
            st = self._ensure_watched(force=True)
            relist = True
        stamp = (st.st_mtime_ns, st.st_ctime_ns)
        if stamp != self._stamp:
            # Created, deleted and renamed entries move the folder's times; inotify names
            # them. A change it did not report (no inotify, a lost queue) needs the listing.
            relist = relist or not changes.listing or self._watch is None
            self._stamp = stamp
        elif self._watch is None and time.time_ns() - st.st_ctime_ns < _RACY_NS:
            # Without inotify, the times are all there is, and two changes within one tick
            # of the file system's clock leave the same times: look until they are older.
            relist = True
        names = {n for n in changes.names if is_worklist_name(n)}
        if not names and not relist:
            return
        results: dict[str, WorklistItem | str | None] = {}
        if relist:
            listed = self._list()
            if listed is not None:
                known = self._catalog.names() | self._bad.keys() | self._hidden.keys()
                for name in known - listed.keys():
                    results[name] = None
                for name, st_file in listed.items():
                    signature = (st_file.st_mtime_ns, st_file.st_size, st_file.st_ino)
                    item = self._catalog.get(name)
                    if name in names or signature in (
                            item.signature if item is not None else None,
                            self._bad.get(name), self._hidden.get(name)):
                        continue  # unchanged (an event-named file is read below)
                    results[name] = self._load(name, previous=item)
        for name in names:
            results[name] = self._load(name, previous=self._catalog.get(name))
        self._apply(results)

    def _watch_lost(self) -> None:
        if self._identity is not None:
            log.warning("worklist folder %s went away: watching it again", self.folder)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._identity = None  # makes _refresh watch the folder again and re-list it

    def _ensure_exists(self) -> tuple[os.stat_result, bool]:
        """The folder's stat, and whether it had to be created."""
        try:
            return os.stat(self.folder), False
        except FileNotFoundError:
            log.warning("worklist folder %s does not exist: creating it", self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.stat(self.folder), True

    def _ensure_watched(self, force: bool = False) -> os.stat_result:
        """Create the folder if it is missing and watch it; its stat after the watch."""
        st, created = self._ensure_exists()
        force = force or created  # a new folder may reuse the old one's inode number
        identity = (st.st_dev, st.st_ino)
        if not force and identity == self._identity and self._watch is not None:
            return st
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        try:
            if not self.use_inotify:
                raise OSError("inotify not used")
            self._watch = Inotify(self.folder)
        except OSError as e:
            if not self._watch_failed:
                log.warning("worklist folder %s cannot be watched (%s): its listing is checked "
                            "before every query and every %.0f s instead", self.folder,
                            e.strerror or e, self.check_interval)
                self._watch_failed = True
        self._identity = identity
        st = os.stat(self.folder)  # after the watch: a later change is in its queue
        self._stamp = None  # makes the next refresh look at the listing
        return st

    def _list(self) -> dict[str, os.stat_result] | None:
        """name -> stat of every regular ``.wl`` file in the folder (None: cannot list)."""
        listed = {}
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                names = [name for name in os.listdir(fd) if is_worklist_name(name)]
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=fd)  # relative to the folder: no path walk
                    except OSError:
                        continue  # gone meanwhile, or a dangling link
                    if stat.S_ISREG(st.st_mode):
                        listed[name] = st
            finally:
                os.close(fd)
        except OSError as e:
            log.error("worklist folder %s: cannot list: %s", self.folder, e.strerror or e)
            return None
        return listed

    def _load(self, name: str, previous: WorklistItem | None = None) -> WorklistItem | str | None:
        """The item of file ``name`` now: an item (``previous`` again if its bytes did not
        change), None (gone, not a file, or taken out), or why it is not readable."""
        return self._served(name, read_file(
            str(self.folder), name, hidden=self._hidden.get(name),
            same=None if previous is None else (previous.digest, previous.size)), previous)

    def _served(self, name: str, outcome: Read | Unreadable | str | None,
                previous: WorklistItem | None) -> WorklistItem | str | None:
        """What reading file ``name`` gave (:func:`read_file`) as :meth:`_load` says it."""
        if outcome is None or type(outcome) is str:
            return outcome
        if type(outcome) is Unreadable:
            self._bad[name] = outcome.signature
            return outcome.why
        mtime_ns, size, ino = outcome.signature
        if outcome.packed is None:  # the bytes of ``previous``: touched, not rewritten
            item = previous if previous.signature == outcome.signature else WorklistItem(
                name, size, mtime_ns, ino, outcome.digest, previous.charset, previous.packed)
        else:
            item = WorklistItem(name, size, mtime_ns, ino, outcome.digest, outcome.charset,
                                outcome.packed)
            if outcome.keys is not None:
                self._keys[name] = outcome.keys
        self._dirty[name] = _row(item, outcome.verified_ns)
        return item

    def _read_all(self, parse: list[tuple[str, WorklistItem | None]],
                  ) -> tuple[dict[str, WorklistItem | str | None], int]:
        """(what :meth:`_load` gives for each (name, version served) of ``parse``, how many
        a helper process read): a start with many files never read before hands part of
        them to a helper (appliance.worklist.helper)."""
        results: dict[str, WorklistItem | str | None] = {}
        helped = 0
        unknown = [name for name, previous in parse if previous is None]
        if len(unknown) >= self.helper_from:
            helped = self._read_with_helper(unknown, results)
        for name, previous in parse:
            if name not in results:
                results[name] = self._load(name, previous=previous)
        return results, helped

    def _read_with_helper(self, names: list[str], results: dict) -> int:
        """Read ``names`` into ``results``, chunks from the front here and chunks from the
        back in a helper process, until they meet; how many the helper read. A helper that
        cannot start, fails or hangs leaves its chunks to this thread."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from appliance.worklist.helper import read_files, start

        folder = str(self.folder)
        chunks = deque(names[i:i + _CHUNK] for i in range(0, len(names), _CHUNK))
        # Submitted to the helper, oldest first: enough that it never waits for this
        # thread to look.
        in_flight: deque = deque()
        helped = 0
        broken = False

        def here(chunk: list[str]) -> None:
            for name in chunk:
                results[name] = self._load(name)

        def collect(chunk: list[str], future, timeout: float | None) -> None:
            nonlocal broken, helped
            try:
                answers = future.result(timeout=timeout)
            except Exception as e:  # noqa: BLE001 - its files are read here instead
                if not broken:
                    log.warning("worklist folder %s: the helper process failed (%s): reading "
                                "its files here", self.folder, str(e) or type(e).__name__)
                broken = True
                here(chunk)
                return
            for name, outcome in answers:
                results[name] = self._served(name, outcome, None)
            helped += len(answers)

        # spawn: a fork of the daemon would copy its threads' locks mid-use.
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start, initargs=(os.getpid(),))
        try:
            while chunks or in_flight:
                while in_flight and in_flight[0][1].done():
                    collect(*in_flight.popleft(), None)
                while not broken and chunks and len(in_flight) < _IN_FLIGHT:
                    # Several chunks a time: each hand-over waits for this process's
                    # executor thread, which waits for the interpreter lock.
                    chunk = [name for _ in range(min(_PER_HAND_OVER, len(chunks)))
                             for name in chunks.pop()]
                    try:
                        in_flight.append((chunk, pool.submit(read_files, folder, chunk)))
                    except Exception as e:  # noqa: BLE001 - cannot start one: read here
                        log.warning("worklist folder %s: no helper process (%s): reading "
                                    "every file here", self.folder, e)
                        broken = True
                        here(chunk)
                if chunks:
                    here(chunks.popleft())
                elif in_flight:
                    collect(*in_flight.popleft(), _HELPER_TIMEOUT)
        finally:
            if broken:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
            pool.shutdown(wait=False, cancel_futures=True)
        return helped

    def _apply(self, results: dict[str, WorklistItem | str | None]) -> None:
        put, remove = [], []
        for name, outcome in results.items():
            if isinstance(outcome, WorklistItem):
                current = self._catalog.get(name)
                if outcome is not current:
                    log.debug("worklist item %s %s", name, "updated" if current else "added")
                    put.append(outcome)
                self._bad.pop(name, None)
                if self._reported.pop(name, None) is not None:
                    log.info("worklist file %s is valid again: served", name)
                continue
            if self._catalog.get(name) is not None:
                log.debug("worklist item %s removed", name)
                remove.append(name)
            self._dirty[name] = None
            if outcome == EMPTY:
                log.debug("worklist file %s is empty", name)
            elif outcome is None:
                self._bad.pop(name, None)
                self._reported.pop(name, None)
                hidden = self._hidden.get(name)
                if hidden is not None and not self._still_there(name, hidden):
                    del self._hidden[name]  # that version is gone: a new one is served
            elif self._reported.get(name) != outcome:
                self._reported[name] = outcome  # once per problem, not once per event
                log.warning("worklist file %s skipped: %s", name, outcome)
        keys, self._keys = self._keys, {}
        if put or remove:
            self._catalog.update(put, remove, keys)

    def _still_there(self, name: str, signature: tuple[int, int, int]) -> bool:
        try:
            st = os.stat(self.folder / name)
        except OSError:
            return False
        return (st.st_mtime_ns, st.st_size, st.st_ino) == signature

    # -- taking items out --------------------------------------------------

    def take_out(self, name: str, *, archive: bool) -> Path | None:
        """Any thread: stop serving item ``name`` at once, then move its file into the
        ``archive`` sub-folder (``archive`` true) or delete it. Returns the archived path."""
        with self._update:
            current = self._catalog.get(name)
            if current is not None:
                self._hidden[name] = current.signature
                self._catalog.update((), (name,))
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
