"""Fixtures shared by the test suite."""

from __future__ import annotations

import pytest
from pynetdicom import _config

from tests.support import Daemon, base_config


@pytest.fixture
def make_daemon(tmp_path):
    """Factory: ``make_daemon(**config_overrides)`` starts a daemon; all are stopped after."""
    started: list[Daemon] = []

    def factory(name: str = "d", env: dict | None = None, **overrides) -> Daemon:
        root = tmp_path / name
        d = Daemon(root, base_config(root, **overrides), env=env)
        started.append(d)
        return d.start()

    yield factory
    for d in started:
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - a test may have killed it already
            d.kill()


@pytest.fixture
def daemon(make_daemon):
    """A daemon on the default test config."""
    return make_daemon()


@pytest.fixture
def chunked_send(monkeypatch):
    """pynetdicom sends files' data set bytes as they are (no decode and
    re-encode), so a test can send any bytes, broken ones included."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
