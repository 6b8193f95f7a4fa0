"""The DICOM tests run against both ways the daemon can run pynetdicom for the
associations it accepts: its fast path (the default, appliance.dicom.tuning)
and stock pynetdicom (PACS_APPLIANCE_STOCK_PYNETDICOM=1).

Every test here that starts a daemon through ``make_daemon``/``daemon`` or asks
for ``pynetdicom_env`` runs once per mode (ids ``[fast]`` and ``[stock]``),
but for those marked ``fast_path_only``: what they test (access rules, the
index, the watched worklist folder, matching) takes the same way through the
transport as tests that do run twice, and running them twice would only add
minutes to the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

STOCK_ENV = "PACS_APPLIANCE_STOCK_PYNETDICOM"
MODES = ("fast", "stock")



def pytest_generate_tests(metafunc) -> None:
    if "pynetdicom_mode" in metafunc.fixturenames:
        fast_only = metafunc.definition.get_closest_marker("fast_path_only") is not None
        # Module scope: a module's shared daemons (the worklist's) start once per mode.
        metafunc.parametrize("pynetdicom_mode", ("fast",) if fast_only else MODES, scope="module")


@pytest.fixture(scope="module")
def pynetdicom_env(pynetdicom_mode):
    """``env(root)``: the environment of a daemon under ``root`` in this mode.

    On stock pynetdicom, received data sets first land in pynetdicom's own
    temporary files: TMPDIR keeps them in the daemon's folder rather than /tmp
    (a killed daemon leaves its partial one behind, as pynetdicom does).
    """
    def env(root: Path) -> dict[str, str]:
        if pynetdicom_mode == "fast":
            return {STOCK_ENV: ""}
        tmp = Path(root) / "pynetdicom-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {STOCK_ENV: "1", "TMPDIR": str(tmp)}

    return env


@pytest.fixture
def make_daemon(make_daemon, pynetdicom_mode, pynetdicom_env, tmp_path):
    """tests/conftest.py's factory, in this test's pynetdicom mode (checked in the log)."""
    def factory(name: str = "d", env: dict | None = None, **overrides):
        d = make_daemon(name, env={**pynetdicom_env(tmp_path / name), **(env or {})}, **overrides)
        assert ("stock pynetdicom" in d.log()) == (pynetdicom_mode == "stock"), d.log()
        return d

    return factory
