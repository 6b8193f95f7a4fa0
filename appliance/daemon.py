"""The composition root: builds every part with explicit arguments, starts
them in order, serves until SIGTERM, and stops them in reverse order."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from appliance import __version__
from appliance.config import Config, ConfigError, load_config
from appliance.dicom.handlers import DicomHandlers, IncomingFiles
from appliance.dicom.policy import AccessPolicy
from appliance.dicom.scp import DicomServer
from appliance.store.archive import Archive
from appliance.systemd import Notifier
from appliance.web.app import make_app

log = logging.getLogger(__name__)

RUNTIME_FILE = "pacs-appliance.runtime.json"


def runtime_path(config: Config) -> Path:
    """Where the running daemon says where it listens (pid, bound ports)."""
    return Path(config.index_directory) / RUNTIME_FILE


def _http_hosts(config: Config) -> list[str]:
    # Orthanc's RemoteAccessAllowed=false means loopback only.
    return ["0.0.0.0", "::"] if config.remote_access_allowed else ["127.0.0.1", "::1"]


async def _start_http(config: Config, app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = config.http_port
    for i, host in enumerate(_http_hosts(config)):
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            if i == 0:
                raise
            # No IPv6 on this machine (or the port is taken there): IPv4 serves.
            log.warning("HTTP not listening on [%s]:%d: %s", host, port, e.strerror)
            continue
        if port == 0:
            port = site._server.sockets[0].getsockname()[1]
    return runner, port


def _write_runtime(path: Path, info: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def run(config: Config, notifier: Notifier | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the exit code."""
    notifier = notifier or Notifier()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    archive = Archive(config.storage_directory, config.index_directory,
                      overwrite_instances=config.overwrite_instances)
    await asyncio.to_thread(archive.open)
    incoming = IncomingFiles(archive)
    handlers = DicomHandlers(archive, AccessPolicy.from_config(config), incoming)
    loop.add_signal_handler(signal.SIGHUP, _reload, config, handlers)
    dicom = DicomServer(
        aet=config.dicom_aet, port=config.dicom_port, handlers=handlers, incoming=incoming,
        max_associations=config.dicom_threads_count, timeout=config.dicom_scp_timeout,
        max_pdu=config.maximum_pdu_length,
    )
    runner = None
    try:
        dicom.start()
        runner, http_port = await _start_http(config, make_app(archive=archive, config=config))
        _write_runtime(runtime_path(config), {
            "pid": os.getpid(), "dicom_port": dicom.port, "http_port": http_port,
            "dicom_aet": config.dicom_aet, "version": __version__,
        })
        counts = await asyncio.to_thread(archive.index.counts)
        log.info("ready in %.2f s: DICOM %s on port %d, HTTP on %s port %d, %d instances",
                 time.monotonic() - started, config.dicom_aet, dicom.port,
                 "all interfaces" if config.remote_access_allowed else "localhost",
                 http_port, counts["instances"])
        notifier.ready(f"{counts['instances']} instances")
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        await asyncio.to_thread(dicom.stop)
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(archive.close)
        runtime_path(config).unlink(missing_ok=True)
    log.info("stopped: %d stored, %d failed since start",
             archive.stored_count, archive.failed_count)
    return 0


def _reload(config: Config, handlers: DicomHandlers) -> None:
    """SIGHUP: re-read the config file and apply the access rules."""
    if config.source is None:
        log.info("SIGHUP: running on embedded defaults, nothing to reload")
        return
    try:
        fresh = load_config(config.source)
    except ConfigError as e:
        log.error("SIGHUP: configuration not reloaded: %s", e)
        return
    handlers.set_policy(AccessPolicy.from_config(fresh))
    log.info("SIGHUP: DICOM access rules reloaded from %s", config.source)
