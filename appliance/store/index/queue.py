"""The outbound queue (issue 13): send tasks and items, the StableStudy debounce.

A mixin of :class:`appliance.store.index.Index`. What is to be sent lives in
the index, so

- a forwarding rule's enqueue commits in the same transaction as the instance
  row that triggers it (:func:`enqueue_forwards`, called by ``_insert``): a
  crash between the C-STORE acknowledgement and the enqueue cannot happen;
- a send on demand or a storage commitment report is one transaction too;
- an item leaves the ``pending`` state only once the destination took it
  (``sent``), its instance was found gone (``dropped``) or someone cancelled it.

Order per study (issue 13: "ordered per study"): an instance whose attempt failed
holds back the instances queued after it for the same study and destination
(:data:`_HELD_BY`) until it is delivered, dropped or cancelled, so a destination
never receives a study out of order because one of its instances failed alone
(refused, unreadable); other studies keep flowing. A refused instance is retried
with the backoff like any failure, until delivered or cancelled.

The StableStudy debounce is two tables: instances waiting for their study to be
quiet (``stable_waiting``) and the time it will be (``stable_due``, moved on by
every new instance of the study). :meth:`Outbox.release_stable_studies` moves
the waiting instances of the studies that became quiet into the queue in one
transaction, so a restart neither loses nor doubles them, and instances
arriving later wait for the next quiet period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import apsw

from appliance.lazyclasses import lazy_dataclass

# Kinds of items (and tasks).
STORE = "store"
COMMITMENT = "commitment"
# States of an item.
PENDING, SENT, DROPPED, CANCELLED = "pending", "sent", "dropped", "cancelled"


@lazy_dataclass(frozen=True)
class Forward:
    """What a forwarding rule decided for one instance being stored: send it to
    ``destination`` now (``stable_age`` None, Trigger Instance) or with its
    study once the study had no new instance for ``stable_age`` seconds."""

    destination: str
    stable_age: float | None = None


@lazy_dataclass(frozen=True)
class QueueItem:
    """One due item, with the stored instance it names (None: gone, or a report)."""

    id: int
    task_id: int | None
    destination: str
    kind: str
    origin: str
    study_instance_uid: str
    sop_instance_uid: str
    attempts: int
    created_at: float
    payload: str | None
    instance: "StoredInstance | None"  # noqa: F821 - instances.py imports this module


@lazy_dataclass(frozen=True)
class Settled:
    """The outcome of one attempt on one item: ``state`` SENT, DROPPED or PENDING
    (failed: tried again after the backoff); ``error`` says why it failed."""

    item_id: int
    state: str
    error: str | None = None
    bytes: int = 0


class UnknownResources(Exception):
    """Some UIDs of a send request name no stored study, series or instance."""

    def __init__(self, uids: Sequence[str]) -> None:
        super().__init__("unknown: " + ", ".join(uids))
        self.uids = tuple(uids)


def backoff(attempts: int, cap: float) -> float:
    """Seconds before attempt ``attempts + 1``: 1, 2, 4... capped at ``cap``
    (Forwarding.MaxRetrySeconds)."""
    return float(min(cap, 2 ** min(attempts - 1, 20))) if attempts > 0 else 0.0


def enqueue_forwards(conn: apsw.Connection, study_uid: str, sop_uid: str,
                     forwards: Iterable[Forward], now: float) -> None:
    """Inside the instance insert's transaction: queue or debounce what the rules decided."""
    for f in forwards:
        if f.stable_age is None:
            conn.execute(
                "INSERT INTO send_items (destination, kind, origin, study_instance_uid, "
                "sop_instance_uid, state, next_attempt_at, created_at) "
                "VALUES (?, 'store', 'Instance', ?, ?, 'pending', ?, ?)",
                (f.destination, study_uid, sop_uid, now, now))
            continue
        conn.execute("INSERT OR IGNORE INTO stable_waiting VALUES (?, ?, ?)",
                     (f.destination, study_uid, sop_uid))
        conn.execute("INSERT INTO stable_due VALUES (?, ?, ?) ON CONFLICT "
                     "(destination, study_instance_uid) DO UPDATE SET due_at = excluded.due_at",
                     (f.destination, study_uid, now + f.stable_age))


# The earlier failing items of q's study on q's destination (see the module
# docstring). Spelled to match the partial index send_items_failing
# (_SCHEMA_QUEUE_ORDER): state and attempts as in its WHERE.
_HELD_BY = """
    SELECT b.id FROM send_items b
    WHERE b.state = 'pending' AND b.attempts > 0 AND b.destination = q.destination
      AND b.study_instance_uid = q.study_instance_uid AND b.id < q.id AND b.kind = 'store'"""

_DUE = """
    SELECT q.id, q.task_id, q.destination, q.kind, q.origin, q.study_instance_uid,
           q.sop_instance_uid, q.attempts, q.created_at, t.payload,
           i.id, i.sop_instance_uid, i.sop_class_uid, se.series_instance_uid,
           st.study_instance_uid, i.transfer_syntax_uid, i.file_path, i.file_size, i.sha256,
           i.number_of_frames, i.rows, i.columns
    FROM send_items q
    LEFT JOIN send_tasks t ON t.id = q.task_id
    LEFT JOIN instances i ON q.kind = 'store' AND i.sop_instance_uid = q.sop_instance_uid
    LEFT JOIN series se ON se.id = i.series_pk
    LEFT JOIN studies st ON st.id = se.study_pk
    WHERE q.state = 'pending' AND q.destination = ?1 AND q.next_attempt_at <= ?2
      AND NOT (q.kind = 'store' AND EXISTS (""" + _HELD_BY + """ AND b.next_attempt_at > ?2))
    ORDER BY q.kind = 'store', q.id LIMIT ?3"""

_INSTANCES_OF = """
    SELECT st.study_instance_uid, i.sop_instance_uid
    FROM instances i JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk
    WHERE st.study_instance_uid = ?1 OR se.series_instance_uid = ?1 OR i.sop_instance_uid = ?1
    ORDER BY st.study_instance_uid, se.series_number IS NULL, se.series_number, se.id,
             i.instance_number IS NULL, i.instance_number, i.id"""


class Outbox:
    """The queue operations of the index."""

    def queue_request(self, destination: str, uids: Sequence[str]) -> tuple[int, int]:
        """Queue every instance of these study, series or instance UIDs for
        ``destination``, as one task: (task id, instances). UnknownResources
        when a UID names nothing stored (and nothing is queued)."""
        def write(conn: apsw.Connection) -> tuple[int, int]:
            now = time.time()
            found: list[tuple[str, str]] = []
            unknown = []
            for uid in dict.fromkeys(uids):
                rows = list(conn.execute(_INSTANCES_OF, (uid,)))
                if not rows:
                    unknown.append(uid)
                found.extend(rows)
            if unknown:
                raise UnknownResources(unknown)
            conn.execute("INSERT INTO send_tasks (destination, kind, origin, created_at) "
                         "VALUES (?, 'store', 'request', ?)", (destination, now))
            task = conn.last_insert_rowid()
            conn.executemany(
                "INSERT INTO send_items (task_id, destination, kind, origin, study_instance_uid, "
                "sop_instance_uid, state, next_attempt_at, created_at) "
                "VALUES (?, ?, 'store', 'request', ?, ?, 'pending', ?, ?)",
                [(task, destination, study, sop, now, now) for study, sop in dict.fromkeys(found)])
            return task, len(dict.fromkeys(found))
        return self.run_write(write)

    def queue_commitment(self, destination: str, transaction_uid: str, payload: str) -> int:
        """Queue a storage commitment report for ``destination``; the task id. The
        caller answers the N-ACTION only once this returned (it is durable)."""
        def write(conn: apsw.Connection) -> int:
            now = time.time()
            conn.execute("INSERT INTO send_tasks (destination, kind, origin, created_at, payload) "
                         "VALUES (?, 'commitment', 'commitment', ?, ?)", (destination, now, payload))
            task = conn.last_insert_rowid()
            conn.execute(
                "INSERT INTO send_items (task_id, destination, kind, origin, study_instance_uid, "
                "sop_instance_uid, state, next_attempt_at, created_at) "
                "VALUES (?, ?, 'commitment', 'commitment', '', ?, 'pending', ?, ?)",
                (task, destination, transaction_uid, now, now))
            return task
        return self.run_write(write)

    def queue_due(self, destination: str, now: float, limit: int) -> list[QueueItem]:
        """The pending items of ``destination`` whose time has come, reports
        first, then in the order they were queued (so per study)."""
        from appliance.store.index.instances import StoredInstance  # instances imports us

        rows = self.read(_DUE, (destination, now, limit))
        return [QueueItem(*r[:10], StoredInstance(*r[10:]) if r[10] is not None else None)
                for r in rows]

    def queue_settle(self, outcomes: Sequence[Settled], max_retry: float) -> Callable[[], None]:
        """Record the outcomes of one attempt (one transaction); failed items get
        their next attempt after the capped exponential backoff. Returns once
        queued for the writer, with a function that waits for the commit."""
        def write(conn: apsw.Connection) -> None:
            now = time.time()
            for o in outcomes:
                if o.state == PENDING:
                    row = conn.execute("SELECT attempts FROM send_items WHERE id = ? AND "
                                       "state = 'pending'", (o.item_id,)).fetchone()
                    if row is None:
                        continue  # cancelled meanwhile
                    attempts = row[0] + 1
                    conn.execute("UPDATE send_items SET attempts = ?, next_attempt_at = ?, "
                                 "last_error = ? WHERE id = ?",
                                 (attempts, now + backoff(attempts, max_retry), o.error, o.item_id))
                else:
                    conn.execute("UPDATE send_items SET state = ?, done_at = ?, bytes = ?, "
                                 "last_error = coalesce(?, last_error), attempts = attempts + 1 "
                                 "WHERE id = ? AND state = 'pending'",
                                 (o.state, now, o.bytes, o.error, o.item_id))
        return self.submit_write(write)

    def queue_next_due(self) -> dict[str, float]:
        """destination -> time its next pending item is due."""
        # A held item is due when the item holding it is: only the others count.
        return dict(self.read("SELECT destination, min(next_attempt_at) FROM send_items q "
                              "WHERE state = 'pending' AND NOT (kind = 'store' AND EXISTS ("
                              + _HELD_BY + ")) GROUP BY destination"))

    def release_stable_studies(self, now: float) -> list[str]:
        """Queue the waiting instances of the studies quiet since their due
        time; the destinations that got something."""
        def write(conn: apsw.Connection) -> list[str]:
            due = list(conn.execute("SELECT destination, study_instance_uid FROM stable_due "
                                    "WHERE due_at <= ? ORDER BY due_at LIMIT 200", (now,)))
            for destination, study in due:
                conn.execute(
                    "INSERT INTO send_items (destination, kind, origin, study_instance_uid, "
                    "sop_instance_uid, state, next_attempt_at, created_at) "
                    "SELECT w.destination, 'store', 'StableStudy', w.study_instance_uid, "
                    "w.sop_instance_uid, 'pending', ?1, ?1 FROM stable_waiting w "
                    "LEFT JOIN instances i ON i.sop_instance_uid = w.sop_instance_uid "
                    "LEFT JOIN series se ON se.id = i.series_pk "
                    "WHERE w.destination = ?2 AND w.study_instance_uid = ?3 "
                    "ORDER BY se.series_number IS NULL, se.series_number, se.id, "
                    "i.instance_number IS NULL, i.instance_number, i.id", (now, destination, study))
                conn.execute("DELETE FROM stable_waiting WHERE destination = ? AND "
                             "study_instance_uid = ?", (destination, study))
                conn.execute("DELETE FROM stable_due WHERE destination = ? AND "
                             "study_instance_uid = ?", (destination, study))
            return sorted({d for d, _ in due})
        return self.run_write(write)

    def next_stable_due(self) -> float | None:
        """When the next debounced study becomes stable, or None."""
        rows = self.read("SELECT min(due_at) FROM stable_due")
        return rows[0][0] if rows else None

    def queue_summary(self) -> list[dict]:
        """Per destination: pending, failing (pending after a failed attempt),
        sent, dropped, cancelled, bytes sent, oldest pending item's time, next
        attempt, last error, waiting for a stable study, held (pending behind a
        failing item of their study)."""
        rows = self.read("""
            SELECT destination,
                   sum(state = 'pending'), sum(state = 'pending' AND attempts > 0),
                   sum(state = 'sent'), sum(state = 'dropped'), sum(state = 'cancelled'),
                   coalesce(sum(CASE WHEN state = 'sent' THEN bytes END), 0),
                   min(CASE WHEN state = 'pending' THEN created_at END),
                   max(CASE WHEN state = 'pending' THEN attempts END)
            FROM send_items GROUP BY destination ORDER BY destination""")
        # The next attempt is that of an item not held (a held item goes when its holder does).
        due = self.queue_next_due()
        errors = dict(self.read("""
            SELECT destination, last_error FROM send_items q
            WHERE id = (SELECT max(id) FROM send_items r WHERE r.destination = q.destination
                        AND r.state = 'pending' AND r.last_error IS NOT NULL)"""))
        waiting = dict(self.read("SELECT destination, count(*) FROM stable_waiting GROUP BY destination"))
        held = dict(self.read("SELECT destination, count(*) FROM send_items q WHERE state = 'pending' "
                              "AND kind = 'store' AND EXISTS (" + _HELD_BY + ") GROUP BY destination"))
        names = ("destination", "pending", "failing", "sent", "dropped", "cancelled", "bytes",
                 "oldest", "attempts")
        out = [dict(zip(names, r)) | {"next_attempt": due.get(r[0]), "last_error": errors.get(r[0]),
                                      "waiting_stable": waiting.pop(r[0], 0), "held": held.get(r[0], 0)}
               for r in rows]
        out += [{"destination": d, "pending": 0, "failing": 0, "sent": 0, "dropped": 0, "cancelled": 0,
                 "bytes": 0, "oldest": None, "next_attempt": None, "attempts": None,
                 "last_error": None, "waiting_stable": n, "held": 0} for d, n in waiting.items()]
        return out

    def queue_items(self, destination: str | None = None, limit: int = 100) -> list[dict]:
        """The pending items, oldest first (``queue list --items``); ``held_by``: the
        failing item of the same study it waits for, if any."""
        where, args = ("AND destination = ?", (destination,)) if destination else ("", ())
        names = ("id", "task_id", "destination", "kind", "origin", "sop_instance_uid",
                 "attempts", "next_attempt", "last_error", "created_at", "held_by")
        rows = self.read(f"SELECT id, task_id, destination, kind, origin, sop_instance_uid, attempts, "
                         f"next_attempt_at, last_error, created_at, "
                         f"CASE WHEN kind = 'store' THEN ({_HELD_BY} ORDER BY b.id LIMIT 1) END "
                         f"FROM send_items q WHERE state = 'pending' {where} ORDER BY id LIMIT ?",
                         (*args, limit))
        return [dict(zip(names, r)) for r in rows]

    def queue_retry(self, destination: str | None = None, task_id: int | None = None,
                    item_id: int | None = None) -> int:
        """Pending items (and cancelled ones) of a destination, task or one item, or
        all: due now. The count."""
        return self.run_write(lambda conn: _change(
            conn, "state = 'pending', next_attempt_at = ?, done_at = NULL",
            "state IN ('pending', 'cancelled')", destination, task_id, item_id))

    def queue_cancel(self, destination: str | None = None, task_id: int | None = None,
                     item_id: int | None = None) -> int:
        """Pending items of a destination, task or one item (an instance the
        destination keeps refusing, which holds back its study), or all: cancelled.
        The count."""
        return self.run_write(lambda conn: _change(
            conn, "state = 'cancelled', done_at = ?", "state = 'pending'", destination, task_id,
            item_id))

    def queue_prune(self, rules_before: float, tasks_before: float) -> int:
        """Forget finished items: those a rule queued, finished before ``rules_before``;
        those of a task (and the task), finished before ``tasks_before``. The count."""
        def write(conn: apsw.Connection) -> int:
            conn.execute("DELETE FROM send_items WHERE task_id IS NULL AND state != 'pending' "
                         "AND done_at < ?", (rules_before,))
            n = conn.changes()
            old = [r[0] for r in conn.execute(
                "SELECT id FROM send_tasks t WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM "
                "send_items q WHERE q.task_id = t.id AND (q.state = 'pending' OR q.done_at >= ?))",
                (tasks_before, tasks_before))]
            for task in old:
                conn.execute("DELETE FROM send_items WHERE task_id = ?", (task,))
                n += conn.changes()
                conn.execute("DELETE FROM send_tasks WHERE id = ?", (task,))
            return n
        return self.run_write(write)

    def queue_task_ids(self) -> list[int]:
        """The ids of the send tasks kept (finished ones until they are pruned), oldest first."""
        return [r[0] for r in self.read("SELECT id FROM send_tasks ORDER BY id")]

    def queue_task(self, task_id: int) -> dict | None:
        """A task and the states of its items, or None."""
        rows = self.read("SELECT id, destination, kind, created_at FROM send_tasks WHERE id = ?",
                         (task_id,))
        if not rows:
            return None
        counts = dict(self.read("SELECT state, count(*) FROM send_items WHERE task_id = ? "
                                "GROUP BY state", (task_id,)))
        tried = self.read("SELECT count(*), max(last_error) FROM send_items WHERE task_id = ? "
                          "AND state = 'pending' AND attempts > 0", (task_id,))[0]
        tid, destination, kind, created = rows[0]
        return {"id": tid, "destination": destination, "kind": kind, "created_at": created,
                "states": counts, "failing": tried[0], "last_error": tried[1]}


def _change(conn: apsw.Connection, assignment: str, condition: str,
            destination: str | None, task_id: int | None, item_id: int | None) -> int:
    where, args = [condition], [time.time()]
    for column, value in (("destination", destination), ("task_id", task_id), ("id", item_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    conn.execute(f"UPDATE send_items SET {assignment} WHERE {' AND '.join(where)}", args)
    return conn.changes()
