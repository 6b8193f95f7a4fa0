"""The index's engine (apsw): connections, the writer thread, group commit.

Writes go through one writer thread that owns the write connection. Callers
hand it a job and block until the transaction holding their job has
committed; jobs that arrive while a commit is in flight are committed
together in the next transaction (group commit), so N concurrent stores cost
about one WAL fsync rather than N. Each job runs inside its own SAVEPOINT, so
one failing job does not undo the others in its batch.

Reads use pooled read-only connections (WAL lets them run beside the writer).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import apsw

from appliance.store.index.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

# Largest number of jobs folded into one transaction: bounds the latency of
# the first job in a batch when many stores arrive at once.
_MAX_BATCH = 256
# Longest wait for a store on its way to join a group commit (seconds).
_GATHER = 0.004


class IndexError_(Exception):
    """The index could not do what was asked (I/O error, corrupt file, closed)."""


# Read connections kept open between reads. Each holds up to 2 MB of page cache, and a
# burst of concurrent reads (HTTP, C-FIND associations) would otherwise leave its peak
# open for the daemon's life; a steady load reuses a handful (4-5 in the soak).
MAX_IDLE_READERS = 4


class _Job:
    __slots__ = ("fn", "dirs", "done", "result", "error")

    def __init__(self, fn: Callable[[apsw.Connection], Any], dirs: Iterable[Path]) -> None:
        self.fn = fn
        self.dirs = tuple(dirs)
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _connect(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.setbusytimeout(30_000)
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL: readers never block the writer. synchronous=FULL: a commit is
    # fsynced before it returns, which is what acknowledging a store needs
    # (NORMAL would only sync at checkpoints).
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class Engine:
    """The SQLite database of the index: its connections and its writer.

    ``sync_dirs`` is called by the writer thread with the directories a batch
    of jobs renamed files into, just before the batch commits, so a row is
    never durable before the file it names.
    """

    def __init__(self, directory: Path, sync_dirs: Callable[[set[Path]], None],
                 coming: Callable[[], int] = lambda: 0) -> None:
        self.path = Path(directory) / DB_NAME
        self._sync_dirs = sync_dirs
        # How many writes are on their way (stores past their receive): while
        # a batch is smaller, the writer waits a little for them to join it.
        self._coming = coming
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._idle: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = True
        self.commits = 0
        self.jobs = 0

    # -- lifecycle -------------------------------------------------------

    def open(self) -> None:
        """Open (creating or migrating) the database and start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        self._migrate(conn)
        self._closed = False
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="index-writer", daemon=True
        )
        self._writer.start()

    @staticmethod
    def _migrate(conn: apsw.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise IndexError_(
                f"index schema version {version} is newer than this program ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        # Every pending migration in one transaction: one commit (one WAL fsync) on a
        # first start rather than one per version, and a failure leaves the index
        # whole at its old version.
        with conn:
            for v in range(version, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[v])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for v in range(version, SCHEMA_VERSION):
            log.info("index schema migrated to version %d", v + 1)

    def close(self) -> None:
        """Finish queued jobs, stop the writer, close every connection.

        The writer's connection closes last, after folding the WAL into the
        database file (:meth:`_checkpoint`): once stopped, the .sqlite file
        alone holds everything (a copy of it, a backup tool that skips -wal).
        """
        if self._closed:
            return
        self._closed = True
        # Readers first: a read-only connection closing last cannot checkpoint
        # and would leave the -wal file behind.
        with self._readers_lock:
            for c in self._idle:
                c.close()
            self._idle.clear()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join()

    def is_alive(self) -> bool:
        """True while the writer thread runs (a health check)."""
        return self._writer is not None and self._writer.is_alive()

    # -- the writer ------------------------------------------------------

    def _write_loop(self, conn: apsw.Connection) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    self._checkpoint(conn)
                    return
                batch = [job]
                stop = False
                deadline = None
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        # Parallel stores: a commit (a folder fsync and a WAL
                        # fsync) shared by more of them is cheaper than the
                        # short wait for the next one to arrive.
                        if len(batch) >= self._coming():
                            break
                        if deadline is None:
                            deadline = time.monotonic() + _GATHER
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        try:
                            nxt = self._queue.get(timeout=remaining)
                        except queue.Empty:
                            break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit_batch(conn, batch)
                if stop:
                    self._checkpoint(conn)
                    return
        finally:
            conn.close()

    def _checkpoint(self, conn: apsw.Connection) -> None:
        """After the last write: copy the whole WAL into the database file and
        truncate the WAL to zero bytes (closing this last connection then
        deletes it). A reader still in a transaction makes it wait (busy
        timeout), then give up: the WAL stays and SQLite replays it at the
        next open, so nothing is lost either way."""
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as e:
            log.warning("index WAL not checkpointed at close (%s): the next start replays it", e)

    def _commit_batch(self, conn: apsw.Connection, batch: list[_Job]) -> None:
        try:
            dirs = {d for job in batch for d in job.dirs}
            if dirs:
                self._sync_dirs(dirs)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in batch:
                    conn.execute("SAVEPOINT job")
                    try:
                        job.result = job.fn(conn)
                    except Exception as e:  # noqa: BLE001 - reported to that job only
                        conn.execute("ROLLBACK TO job")
                        job.error = e
                    conn.execute("RELEASE job")
                conn.execute("COMMIT")
            except BaseException:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                raise
            self.commits += 1
            self.jobs += len(batch)
        except Exception as e:  # noqa: BLE001 - every job of the batch failed
            log.error("index commit failed: %s", e)
            for job in batch:
                job.error = job.error or e
        finally:
            for job in batch:
                job.done.set()

    def run_write(self, fn: Callable[[apsw.Connection], Any], dirs: Iterable[Path] = ()) -> Any:
        """Run ``fn(conn)`` in the writer's next transaction; return once committed."""
        return self.submit_write(fn, dirs)()

    def submit_write(self, fn: Callable[[apsw.Connection], Any],
                     dirs: Iterable[Path] = ()) -> Callable[[], Any]:
        """Queue ``fn(conn)`` for the writer and return at once a function that waits
        until it is committed and gives its result (or raises its error). Writes
        are committed in the order they were queued."""
        if self._closed:
            raise IndexError_("index is closed")
        job = _Job(fn, dirs)
        self._queue.put(job)

        def committed() -> Any:
            job.done.wait()
            if job.error is not None:
                raise job.error
            return job.result
        return committed

    # -- reads -----------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[apsw.Connection]:
        """A read-only connection from the pool (associations come and go as
        threads, so per-thread connections would pile up)."""
        if self._closed:
            raise IndexError_("index is closed")
        with self._readers_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
            conn.setbusytimeout(30_000)
        try:
            yield conn
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_READERS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run one read-only query and return all rows."""
        with self._reader() as c:
            return list(c.execute(sql, args))
