"""appliance.lazyclasses: a lazy dataclass is the stock dataclass once used, and is not
processed before (issue 11 point 8)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance.lazyclasses import _PARAMS, lazy_dataclass, materialize

REPO = Path(__file__).resolve().parents[1]

# The same declarations, lazy and stock: each check runs on both.
_DECLARE = """
def declare(decorator):
    @decorator(frozen=True)
    class Point:
        '''A point.'''
        x: int
        y: int = 0
        tags: tuple = dataclasses.field(default_factory=tuple)

    @decorator(frozen=True)
    class Labelled(Point):
        label: str = "p"

    @decorator
    class Counter:
        n: int = 0

        def __post_init__(self):
            self.n += 1

    return Point, Labelled, Counter
"""
namespace: dict = {"dataclasses": dataclasses}
exec(_DECLARE, namespace)  # noqa: S102 - the test's own text, twice the same classes
declare = namespace["declare"]


def behaviour(Point, Labelled, Counter) -> list:
    p, q = Point(1, 2), Labelled(1, 2, label="q")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5
    with pytest.raises(TypeError):
        Point()
    c = Counter(4)
    c.n = 7
    return [repr(p), repr(q), p == Point(1, 2), p == Point(1, 3), hash(p) == hash(Point(1, 2)),
            [f.name for f in dataclasses.fields(q)], dataclasses.asdict(q),
            repr(dataclasses.replace(q, x=9)), Counter().n, c.n, Counter.__doc__,
            copy.deepcopy(q) == q, copy.copy(p) == p, Point.__match_args__,
            str(inspect.signature(Labelled)), str(inspect.signature(Counter))]


def test_a_lazy_dataclass_is_the_stock_one_once_used():
    lazy, stock = declare(lazy_dataclass), declare(dataclasses.dataclass)
    Point, Labelled, Counter = lazy
    # Point was processed when Labelled subclassed it; the others wait for their first use.
    assert "__repr__" in vars(Point)
    assert _PARAMS in vars(Labelled) and "__repr__" not in vars(Labelled)
    assert _PARAMS in vars(Counter) and "__repr__" not in vars(Counter)
    assert behaviour(*lazy) == behaviour(*stock)
    for cls in lazy:
        assert _PARAMS not in vars(cls) and "__repr__" in vars(cls)
    assert Labelled.__dataclass_params__.frozen and not Counter.__dataclass_params__.frozen


def test_reading_a_waiting_class_as_a_dataclass_processes_it():
    _, Labelled, Counter = declare(lazy_dataclass)
    assert "__repr__" not in vars(Labelled) and "__repr__" not in vars(Counter)
    assert dataclasses.is_dataclass(Counter) and "__repr__" in vars(Counter)
    assert [f.name for f in dataclasses.fields(Labelled)] == ["x", "y", "tags", "label"]
    assert "__repr__" in vars(Labelled)


def test_subclassing_a_waiting_class_processes_it_first():
    _, Labelled, _ = declare(lazy_dataclass)
    assert _PARAMS in vars(Labelled)

    @dataclasses.dataclass(frozen=True)
    class Stock(Labelled):
        z: int = 3

    assert _PARAMS not in vars(Labelled)
    assert [f.name for f in dataclasses.fields(Stock)] == ["x", "y", "tags", "label", "z"]
    assert Stock(1).z == 3 and Labelled(1).label == "p"


def test_threads_first_instantiating_wait_for_the_one_processing_the_class():
    _, Point, _ = declare(lazy_dataclass)  # Labelled, still waiting
    calls, barrier, made, errors = [], threading.Barrier(8), [], []
    real = dataclasses.dataclass

    def counting(cls, **params):  # slow: the other threads arrive while it runs
        calls.append(cls)
        result = real(cls, **params)
        time.sleep(0.2)
        return result

    def make():
        barrier.wait()
        try:
            made.append(Point(1))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    dataclasses.dataclass = counting
    try:
        workers = [threading.Thread(target=make) for _ in range(8)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        dataclasses.dataclass = real
    assert errors == [] and made == [Point(1)] * 8 and calls == [Point]


def test_materialize_is_explicit_and_idempotent():
    _, Labelled, _ = declare(lazy_dataclass)
    materialize(Labelled)
    materialize(Labelled)
    assert dataclasses.fields(Labelled)[-1].name == "label"


# An instance pickled by one process and unpickled by a fresh one (a pixel worker): no
# instance of the class was made there, unpickling processes it.
_UNPICKLE = """
import dataclasses, pickle, sys
from appliance.store.index.instances import StoredInstance
obj = pickle.loads(sys.stdin.buffer.read())
print(repr(obj), obj == obj, dataclasses.is_dataclass(StoredInstance))
"""


def test_unpickling_in_a_fresh_process_processes_the_class():
    from appliance.store.index.instances import StoredInstance

    fields = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(StoredInstance))}
    obj = StoredInstance(**fields)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _UNPICKLE], input=pickle.dumps(obj),
                         capture_output=True, env=env, cwd=REPO, timeout=60, check=True)
    assert out.stdout.decode().split("\n")[0] == f"{obj!r} True True"
