"""The processes under test: Orthanc, pacs-appliance and the bare pynetdicom receiver.

Every trial starts a server with a fresh data folder on free loopback ports, waits for the
first successful C-ECHO (that delay is the start-up figure), and stops it with SIGTERM (the
delay to exit is the shutdown figure). Every spawned process is registered so that the harness
can kill whatever is left on any exit path.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CALLED_AET = "ORTHANC"
CALLING_AET = "BENCH"
LOOPBACK = "127.0.0.1"

_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()
_atexit_registered = False


class ServerError(RuntimeError):
    """A server failed to start or answer; carries the tail of its log."""


def free_port() -> int:
    """A currently free loopback TCP port (bind port 0, read it, close).

    Racy by nature — another process may take it before the server binds — but Orthanc
    can only be given a number, so the same is done for every server.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def spawn(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None,
          ) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output to ``log_path``, and register it."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(kill_all)
        _atexit_registered = True
    with open(log_path, "ab") as out:
        # A new session: a stray signal to the harness's group (Ctrl-C) doesn't reach the
        # server mid-measurement, and kill_all can take out any children with the group.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    with _live_lock:
        _live[proc.pid] = proc
    return proc


def forget(proc: subprocess.Popen) -> None:
    """Drop ``proc`` from the kill list once it has been reaped."""
    with _live_lock:
        _live.pop(proc.pid, None)


def kill_all() -> None:
    """SIGKILL every process group this harness spawned that is still alive."""
    with _live_lock:
        procs = list(_live.values())
        _live.clear()
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("pid %d survived SIGKILL", proc.pid)


def base_env(tcp_nodelay: bool) -> dict[str, str]:
    """The environment for servers and clients: TCP_NODELAY=1 or, explicitly, unset.

    DCMTK (storescu, Orthanc) only disables Nagle's algorithm when TCP_NODELAY=1 is in the
    environment; an inherited value must not leak into the "default" scenarios.
    """
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def port_accepts(port: int) -> bool:
    """True if something accepts TCP connections on loopback ``port`` (refused at once
    otherwise): a cheap test to poll before a C-ECHO, whose failed association costs
    pynetdicom ~0.1 s and would make the polling that coarse."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def echo_once(port: int, timeout: float = 2.0) -> bool:
    """One C-ECHO to ``127.0.0.1:port``; True on Success status."""
    from pynetdicom import AE  # imported here: keeps module import free of heavy work
    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(LOOPBACK, port, ae_title=CALLED_AET)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def tail(path: Path, lines: int = 15) -> str:
    """Last ``lines`` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    """One server process of one trial. Subclasses say how to configure and launch it."""

    name: str
    root: Path
    keep: bool = False
    workdir: Path = field(init=False)
    port: int = field(init=False, default=0)
    http_port: int = field(init=False, default=0)  # 0: the server has no HTTP side
    proc: subprocess.Popen | None = field(init=False, default=None)
    log_path: Path = field(init=False)
    spawned_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.root))
        self.log_path = self.workdir / "server.log"

    # -- to override --------------------------------------------------------------------
    def command(self) -> tuple[list[str], Path | None]:
        """Command line and working directory; may write config files into workdir."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, env: dict[str, str]) -> None:
        """Spawn the server (readiness is a separate step so it can be timed)."""
        self.port = free_port()
        cmd, cwd = self.command()
        self.spawned_at = time.perf_counter()
        self.proc = spawn(cmd, self.log_path, env, cwd)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.010) -> float:
        """Poll the port every ``interval`` s and C-ECHO once it accepts; return seconds
        from spawn to the first successful C-ECHO."""
        assert self.proc is not None
        deadline = self.spawned_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode} before "
                                  f"answering C-ECHO; log {self.log_path}:\n{tail(self.log_path)}")
            if port_accepts(self.port) and echo_once(self.port, timeout=2.0):
                return time.perf_counter() - self.spawned_at
            time.sleep(interval)
        raise ServerError(f"{self.name} did not answer C-ECHO within {timeout:.0f} s; "
                          f"log {self.log_path}:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 30.0) -> float | None:
        """SIGTERM; return seconds until the process exited, or None if it had to be killed."""
        proc = self.proc
        if proc is None:
            return None
        elapsed: float | None = None
        if proc.poll() is None:
            t0 = time.perf_counter()
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
                elapsed = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
        # Whatever is left of the group (there should be nothing) goes too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
        forget(proc)
        return elapsed

    def cleanup(self) -> None:
        """Remove the trial's data folder unless --keep was given."""
        if self.keep:
            log.info("kept %s data and log in %s", self.name, self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def orthanc_style_config(workdir: Path, dicom_port: int, http_port: int) -> dict:
    """The config given to both Orthanc and pacs-appliance (Orthanc's keys, same values)."""
    storage = workdir / "storage"
    temp = workdir / "tmp"
    storage.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)  # Orthanc requires TemporaryDirectory to exist
    return {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "TemporaryDirectory": str(temp),
        "DicomAet": CALLED_AET,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        # Plugins are not involved in C-STORE, and loading them slows Orthanc's start.
        "Plugins": [],
    }


@dataclass
class OrthancServer(Server):
    """Debian's Orthanc, run directly (not the packaged service) with a generated config."""

    binary: Path = Path("/usr/sbin/Orthanc")

    def command(self) -> tuple[list[str], Path | None]:
        self.http_port = free_port()
        config = orthanc_style_config(self.workdir, self.port, self.http_port)
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        # Without --logdir/--logfile Orthanc logs warnings to stderr (the packaged service
        # adds --logdir=/var/log/orthanc); SIGTERM/SIGINT make it stop cleanly.
        return [str(self.binary), str(path)], self.workdir


@dataclass
class ApplianceServer(Server):
    """pacs-appliance from this checkout, with the same Orthanc-format config."""

    python: str = str(REPO_ROOT / ".venv" / "bin" / "python")

    def command(self) -> tuple[list[str], Path | None]:
        self.http_port = free_port()
        config = orthanc_style_config(self.workdir, self.port, self.http_port)
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config, indent=2))
        # cwd = repo root so `-m appliance` resolves to this checkout even if not installed.
        return [self.python, "-m", "appliance", "serve", "--config", str(path)], REPO_ROOT


@dataclass
class CeilingServer(Server):
    """pynetdicom's own storescp app discarding what it receives: the ceiling for pynetdicom."""

    python: str = str(REPO_ROOT / ".venv" / "bin" / "python")

    def command(self) -> tuple[list[str], Path | None]:
        # --ignore: answer Success without decoding or writing; -ba: loopback only.
        return [self.python, "-m", "pynetdicom", "storescp", str(self.port), "--ignore",
                "-ba", LOOPBACK, "-aet", CALLED_AET], self.workdir


SERVER_CLASSES: dict[str, type[Server]] = {
    "orthanc": OrthancServer,
    "appliance": ApplianceServer,
    "ceiling": CeilingServer,
}


def byte_compile() -> None:
    """Compile the checkout's ``appliance`` package to ``__pycache__`` once, as the .deb
    does (pip byte-compiles what it installs): with PYTHONDONTWRITEBYTECODE set, as in
    some environments, every start would otherwise compile every module again (~0.1 s),
    which no installed daemon pays."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "appliance"), quiet=1)


def http_answers(port: int, timeout: float = 2.0) -> bool:
    """True if GET /system on loopback ``port`` answers 200 (Orthanc and the appliance)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/system", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _tree_sum(pid: int, measure: Callable[[psutil.Process], float]) -> float | None:
    """``measure`` summed over process ``pid`` and its descendants; None if it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            total += measure(proc)
        except psutil.Error:
            pass  # a child that just exited
    return total


def tree_rss(pid: int) -> int | None:
    """RSS in bytes of process ``pid`` and its descendants; None if it is gone."""
    return _tree_sum(pid, lambda proc: proc.memory_info().rss)


def tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants."""
    return _tree_sum(pid, lambda proc: sum(proc.cpu_times()[:2]))


class RssSampler:
    """Samples the RSS of a process and its descendants every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.050) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> int | None:
        return tree_rss(self.pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._sample()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        first = self._sample()
        if first is not None:
            self.samples.append(first)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        last = self._sample()
        if last is not None:
            self.samples.append(last)

    @property
    def baseline(self) -> int | None:
        """RSS when sampling started (the idle server)."""
        return self.samples[0] if self.samples else None

    @property
    def peak(self) -> int | None:
        """Largest RSS seen."""
        return max(self.samples) if self.samples else None


__all__ = [
    "ApplianceServer", "CeilingServer", "OrthancServer", "RssSampler", "SERVER_CLASSES",
    "Server", "ServerError", "base_env", "echo_once", "free_port", "kill_all", "spawn",
    "forget", "tail",
]


def finish(results: Path, root: Path, keep: bool) -> None:
    """Say where the results are; keep the trial folders or remove them."""
    print(f"results: {results}")
    if keep:
        print(f"server folders, configs and logs kept under {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
