"""The composition root: builds every part with explicit arguments, starts
them in order, serves until SIGTERM, and stops them in reverse order.

Only this module (and the CLI's commands) read the whole Config: each part gets
its slice, a section, a few values, or a view (``config.view(WebConfig)``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.config import Config, ConfigError, changed_keys, load_config
from appliance.durable import write_json
from appliance.dicom import transport
from appliance.dicomfile import isolated
from appliance.dicomfile.settings import quiet_pydicom
from appliance.dicom.commitment import CommitmentScp
from appliance.dicom.handlers import DicomHandlers
from appliance.dicom.mwl import MwlOptions, WorklistDimse
from appliance.dicom.policy import AccessPolicy, Service
from appliance.dicom.qr_find import FindLimits, QueryRetrieveFind
from appliance.dicom.retrieve import RetrieveDimse
from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.scp import DicomServer
from appliance.dicom.scu import Outbound
from appliance.outbound.engine import OutboundEngine
from appliance.outbound.rules import Rules
from appliance.outbound.stow import HttpsTrust
from appliance.ops.backup import BackupScheduler, BackupSettings
from appliance.ops.disk import DiskMonitor
from appliance.ops.adopt import OrthancAdopter
from appliance.ops.lock import data_folders_locked
from appliance.ops.manage import remove_token, write_token
from appliance.ops.memory import SETTLE_AFTER, MemoryTrimmer, settle_after_start
from appliance.ops.quota import StoreAdmission
from appliance.ops.runtime import RUNTIME_FILE
from appliance.ops.space import install_admission
from appliance.ops.diskhistory import DiskHistory
from appliance.ops.status import LastError, StatusBoard
from appliance.store.archive import Archive
from appliance.systemd import Notifier
from appliance.worklist.housekeeping import CleanupRules, Housekeeper
from appliance.worklist.mpps import MppsManager
from appliance.worklist.source import CACHE_NAME as WORKLIST_CACHE, WorklistFolder

if TYPE_CHECKING:
    from aiohttp import web

    from appliance.web.app import Users

log = logging.getLogger(__name__)

# How long the HTTP side waits for the worklist folder to be served before it is loaded
# (see _serve): a restart's folder is served in tens of milliseconds; a first start
# parsing thousands of files does not hold HTTP back longer than this.
WORKLIST_HEAD_START = 0.5


def runtime_path(config: Config) -> Path:
    """Where the running daemon says where it listens (pid, bound ports)."""
    return Path(config.index_directory) / RUNTIME_FILE


def _http_hosts(config: Config) -> list[str]:
    if config.http_bind_addresses:  # Orthanc's HttpBindAddresses, when given
        return list(config.http_bind_addresses)
    # Orthanc's RemoteAccessAllowed=false means loopback only.
    return ["0.0.0.0", "::"] if config.remote_access_allowed else ["127.0.0.1", "::1"]


async def _start_web(config: Config, live: "_Reloadable", archive: Archive, ops: "_Ops",
                     dicom: DicomServer, outbound: Outbound,
                     ) -> tuple["web.AppRunner", int, "Users", DiskHistory]:
    """Build the HTTP side (DICOMweb, REST, UI) and listen: (runner, port, users, the UI's
    disk history)."""
    # Imported here, once the DICOM side listens: aiohttp and the web package are ~80 ms of
    # CPU that a modality's first association after a restart need not wait for (issue 15.4).
    from appliance.web.app import Users, make_app
    from appliance.web.common import WebConfig
    from appliance.web.instances import IMPORT_RUNS
    from appliance.web.metrics import STATUS
    from appliance.web.ui import DISK_HISTORY

    users = Users(live.registered_users, live.authentication_enabled)
    users.local_token = write_token(config.index_directory)  # pacs-appliance delete/modify
    ops.board.http_authentication = lambda: users.authenticator is not None
    app = make_app(archive=archive, config=config.view(WebConfig), users=users,
                   dicom_port=dicom.port, dicom_echo=outbound.echo)
    app[STATUS] = ops.board.snapshot
    ops.board.imports = app[IMPORT_RUNS].snapshot
    disk_history = DiskHistory(config.index_directory, lambda: ops.disk.state)  # the UI's disk plot
    app[DISK_HISTORY] = disk_history.samples
    runner, port = await _start_http(config, app)
    return runner, port, users, disk_history


async def _start_http(config: Config, app: "web.Application") -> tuple["web.AppRunner", int]:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = config.http_port
    for i, host in enumerate(_http_hosts(config)):
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            if i == 0:
                raise _bind_error("HttpPort", port, host, e) from None
            # No IPv6 on this machine (or the port is taken there): IPv4 serves.
            log.warning("HTTP not listening on [%s]:%d: %s", host, port, e.strerror)
            continue
        if port == 0:
            port = site._server.sockets[0].getsockname()[1]
    return runner, port


def _bind_error(key: str, port: int, host: str | None, e: OSError) -> OSError:
    """``e`` saying which port (and config key) could not be listened on."""
    where = f"{key} {port}" + (f" on {host}" if host else "")
    why = e.strerror or str(e)
    if e.errno == errno.EADDRINUSE:
        why += " (another program listens there: Orthanc, or a second pacs-appliance?)"
    return OSError(e.errno, f"{where}: {why}")


def _log_configuration(config: Config) -> None:
    if config.embedded_defaults:
        log.warning("no --config given: running on EMBEDDED DEFAULTS, data in %s, "
                    "HTTP on localhost only, no authentication", config.storage_directory.parent)
    else:
        log.info("configuration: %s", config.source)
    if config.unperformed:
        log.warning("configuration: ignored, not done by this daemon: %s",
                    ", ".join(config.unperformed))
    rest = [key for key in config.ignored if key not in config.unperformed]
    if rest:
        log.debug("configuration: Orthanc options with no meaning here, ignored: %s",
                  ", ".join(rest))
    if not config.authentication_enabled:
        # Said at every start, not only on embedded defaults: an orthanc.json without
        # AuthenticationEnabled leaves it off too (Orthanc's default for localhost).
        log.warning("HTTP AUTHENTICATION IS OFF (AuthenticationEnabled false): %s can read, "
                    "store and delete every study over HTTP; set AuthenticationEnabled and "
                    "RegisteredUsers", "ANY HOST that reaches the HTTP port"
                    if config.remote_access_allowed else "any local user or process")
    if config.storage_compression:
        log.info("StorageCompression is true: Orthanc's compressed files are decompressed once "
                 "when adopted, and new objects are stored uncompressed")


async def run(config: Config, notifier: Notifier | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the exit code.

    Raises appliance.ops.lock.FolderInUse, having touched nothing, when another
    pacs-appliance holds the data folders.
    """
    # First of all: a second daemon on these folders must not sweep the first
    # one's incoming files, open its index or write its runtime file. Held until
    # the runtime file is gone, so the next holder finds a clean folder.
    with data_folders_locked(config.storage_directory, config.index_directory):
        _log_configuration(config)
        return await _run_locked(config, notifier)


async def _run_locked(config: Config, notifier: Notifier | None) -> int:
    notifier = notifier or Notifier()
    quiet_pydicom()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    wl = config.worklists
    folder = (WorklistFolder(wl.database, cache=config.index_directory / WORKLIST_CACHE)
              if wl.enable and wl.database is not None else None)
    if folder is None:
        return await _serve(config, notifier, started, stop, None, None)
    # First of all, on its thread beside the rest of the start-up: stores need not wait
    # for a large folder, and a C-FIND waits for the first snapshot (loaded).
    worklist_start = loop.create_task(folder.start())
    try:
        return await _serve(config, notifier, started, stop, folder, worklist_start)
    finally:
        await _stop_worklist(folder, worklist_start)  # done already unless _serve failed early


async def _stop_worklist(folder: WorklistFolder, start: asyncio.Task) -> None:
    """Stop reading ``folder`` (its first read too) and write its parse cache; again: nothing."""
    if not start.done():
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    await folder.stop()


async def _serve(config: Config, notifier: Notifier, started: float, stop: asyncio.Event,
                 folder: WorklistFolder | None, worklist_start: asyncio.Task | None) -> int:
    loop = asyncio.get_running_loop()
    archive = Archive(config.storage_directory, config.index_directory,
                      overwrite_instances=config.overwrite_instances)
    await asyncio.to_thread(archive.open)
    incoming = ReceivedFiles(archive)
    live = _reloadable(config)
    worklist = _build_worklist(config, archive, live, folder)
    # The fast path, when it runs, covers the sender's writes too (appliance.dicom.streaming).
    mode = transport.choose_mode()
    direct_writes = mode is transport.Mode.FAST
    retrieve = RetrieveDimse(archive, our_aet=config.dicom_aet,
                             scu_timeout=config.dicom_scu_timeout,
                             spool_dir=config.temporary_directory, direct_writes=direct_writes)
    handlers = DicomHandlers(archive, live.policy, incoming, worklist=worklist.dimse,
                             find=QueryRetrieveFind(archive, find_limits(config)),
                             retrieve=retrieve, commitment=CommitmentScp(archive))
    sending = _build_outbound(config, archive, direct_writes)
    ops = _build_ops(config, archive, handlers, worklist, sending)
    dicom = DicomServer(
        aet=config.dicom_aet, port=config.dicom_port, handlers=handlers, incoming=incoming,
        max_associations=config.dicom_threads_count, timeout=config.dicom_scp_timeout,
        max_pdu=config.maximum_pdu_length,
        unknown_sop_classes=config.unknown_sop_class_accepted,
        mode=mode,
    )
    outbound = Outbound(aet=config.dicom_aet, timeout=config.dicom_scu_timeout)
    adoption: asyncio.Task | None = None
    runner = None
    housekeeping = None
    ops_tasks: list[asyncio.Task] = []
    try:
        # Free space is known before the first store can arrive.
        await asyncio.to_thread(ops.disk.measure)
        await asyncio.to_thread(ops.board.refresh_counts, True)
        if worklist.housekeeper is not None:
            housekeeping = loop.create_task(worklist.housekeeper.run_forever())
        sending.start()
        try:
            dicom.start()
        except OSError as e:
            raise _bind_error("DicomPort", config.dicom_port, None, e) from None
        if worklist_start is not None:
            # The modalities' side first: the HTTP side's imports would take the CPU the
            # folder's load needs, and a scanner's first C-FIND after a restart waits for
            # that load (issue 15.4).
            await asyncio.wait({worklist_start}, timeout=WORKLIST_HEAD_START)
        # Before the runtime file names us: import-orthanc signals only then, and
        # SIGUSR1's default action would end the daemon.
        loop.add_signal_handler(signal.SIGUSR1, ops.adopter.request)
        runner, http_port, users, disk_history = await _start_web(config, live, archive, ops,
                                                                  dicom, outbound)
        loop.add_signal_handler(signal.SIGHUP, _reload, config, handlers, worklist,
                                users, notifier)
        ops.board.ports.update(dicom=dicom.port, http=http_port)
        ops_tasks = [loop.create_task(t.run())
                     for t in (ops.disk, ops.backups, ops.board, disk_history)]
        # Freed heap back to the system every 30 s: RSS follows what is in use (issue 15.6).
        ops_tasks.append(loop.create_task(MemoryTrimmer().run()))
        period = notifier.watchdog_period()
        if period is not None:
            ops_tasks.append(loop.create_task(_watchdog(notifier, period, dicom, archive, ops.board)))
        write_json(runtime_path(config), {
            "pid": os.getpid(), "dicom_port": dicom.port, "http_port": http_port,
            "dicom_aet": config.dicom_aet, "version": __version__,
        })
        counts = await asyncio.to_thread(archive.counts)
        log.info("ready in %.2f s: DICOM %s on port %d, HTTP on %s port %d, %d instances",
                 time.monotonic() - started, config.dicom_aet, dicom.port,
                 "all interfaces" if config.remote_access_allowed else "localhost",
                 http_port, counts["instances"])
        notifier.ready(f"{counts['instances']} instances")
        # The start ran without cyclic GC (cli serve): its one collection comes later.
        loop.call_later(SETTLE_AFTER, settle_after_start)
        # An Orthanc archive in the data folders is adopted in the background,
        # once everything serves (appliance/ops/adopt.py); SIGUSR1 asks again.
        adoption = loop.create_task(ops.adopter.run_forever())
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        if adoption is not None:
            ops.adopter.stop()  # after the batch being written
            await asyncio.gather(adoption, return_exceptions=True)
        for task in ops_tasks:
            task.cancel()
        await asyncio.gather(*ops_tasks, return_exceptions=True)
        if housekeeping is not None:
            housekeeping.cancel()
        await asyncio.to_thread(dicom.stop)
        await asyncio.to_thread(sending.stop)
        if folder is not None:
            await _stop_worklist(folder, worklist_start)
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(archive.close)
        isolated.shutdown()  # the pixel decoding worker process, if one was started
        runtime_path(config).unlink(missing_ok=True)
        remove_token(config.index_directory)
        ops.board.remove()
        logging.getLogger().removeHandler(ops.last_error)
    log.info("stopped: %d stored, %d failed since start",
             archive.stored_count, archive.failed_count)
    return 0


@dataclass(frozen=True)
class _Ops:
    """Disk monitor, store admission, backup schedule and status (appliance.ops)."""

    admission: StoreAdmission
    disk: DiskMonitor
    backups: BackupScheduler
    board: StatusBoard
    last_error: LastError
    adopter: OrthancAdopter


def _build_outbound(config: Config, archive: Archive, direct_writes: bool) -> OutboundEngine:
    """The send queue's workers; with Forwarding.Rules, the Archive queues what
    they match as it stores (without rules its store path is unchanged)."""
    rules = Rules(config.forwarding.rules, config.stable_age, config.strict_aet_comparison)
    if rules:
        archive.forwarding = rules
    return OutboundEngine(archive, modalities=config.dicom_modalities,
                          servers=config.dicom_web.servers, dicom_aet=config.dicom_aet,
                          scu_timeout=config.dicom_scu_timeout,
                          max_retry=config.forwarding.max_retry_seconds,
                          spool_dir=config.temporary_directory / "outbound",
                          https=config.view(HttpsTrust),
                          direct_writes=direct_writes)


def _build_ops(config: Config, archive: Archive, handlers: DicomHandlers,
               worklist: "_Worklist", sending: OutboundEngine) -> _Ops:
    admission, disk = install_admission(config, archive)
    backups = BackupScheduler(config.view(BackupSettings))
    last_error = LastError()
    logging.getLogger().addHandler(last_error)
    folder = worklist.folder
    adopter = OrthancAdopter(archive, config.storage_directory, config.index_directory)
    board = StatusBoard(name=config.name, dicom_aet=config.dicom_aet,
                        remote_access=config.remote_access_allowed,
                        index_directory=config.index_directory,
                        archive=archive, admission=admission, disk=disk,
                        backups=backups, associations=handlers.open_associations,
                        last_error=last_error,
                        worklist_size=(lambda: len(folder.snapshot)) if folder is not None else None,
                        queries=handlers.find.counts.snapshot if handlers.find is not None else None,
                        outbound=sending.stats,
                        retrieves=handlers.retrieve.stats if handlers.retrieve is not None else None,
                        adoption=adopter.snapshot)
    # The status file follows an adoption closely (import-orthanc beside the
    # daemon follows it there), not only every STATUS_EVERY seconds.
    adopter.on_progress, adopter.report_every = (lambda _progress: board.write()), 1.0
    return _Ops(admission, disk, backups, board, last_error, adopter)


@dataclass(frozen=True)
class _Worklist:
    """The worklist parts (each None when not configured)."""

    folder: WorklistFolder | None
    dimse: WorklistDimse | None
    mpps: MppsManager | None
    housekeeper: Housekeeper | None


def _build_worklist(config: Config, archive: Archive, live: _Reloadable,
                    folder: WorklistFolder | None) -> _Worklist:
    mpps = (MppsManager(archive, folder,
                        archive_finished_worklists=live.archive_finished_worklists)
            if config.mpps.enable else None)
    dimse = (WorklistDimse(folder, mpps, live.mwl)
             if folder is not None or mpps is not None else None)
    housekeeper = (Housekeeper(folder, archive, live.cleanup)
                   if folder is not None else None)
    return _Worklist(folder, dimse, mpps, housekeeper)


@dataclass(frozen=True)
class _Reloadable:
    """The settings SIGHUP applies again (folders, ports and enabling services need
    a restart); start-up takes them from the same function, so both agree."""

    policy: AccessPolicy
    mwl: MwlOptions
    cleanup: CleanupRules
    archive_finished_worklists: bool
    registered_users: Mapping[str, str]
    authentication_enabled: bool


def access_policy(config: Config) -> AccessPolicy:
    """The DICOM access rules of ``config``: DicomCheckCalledAet, DicomAlwaysAllow*,
    DicomModalities, DicomCheckModalityHost, StrictAetComparison."""
    always = {
        Service.ECHO: config.dicom_always_allow_echo,
        Service.STORE: config.dicom_always_allow_store,
        Service.FIND: config.dicom_always_allow_find,
        Service.FIND_WORKLIST: config.dicom_always_allow_find_worklist,
        Service.GET: config.dicom_always_allow_get,
        Service.MOVE: config.dicom_always_allow_move,
        Service.STORAGE_COMMITMENT: config.dicom_always_allow_storage_commitment,
    }
    return AccessPolicy(
        our_aet=config.dicom_aet,
        check_called_aet=config.dicom_check_called_aet,
        check_modality_host=config.dicom_check_modality_host,
        modalities=tuple(config.dicom_modalities),
        always=frozenset(s for s, on in always.items() if on),
        strict_aet=config.strict_aet_comparison,
    )


def find_limits(config: Config) -> FindLimits:
    """Q/R C-FIND's caps and name matching: LimitFindResults, LimitFindInstances, CaseSensitivePN."""
    return FindLimits(results=config.limit_find_results, instances=config.limit_find_instances,
                      case_sensitive_pn=config.case_sensitive_pn)


def _reloadable(config: Config) -> _Reloadable:
    wl = config.worklists
    return _Reloadable(
        policy=access_policy(config),
        mwl=MwlOptions(filter_issuer_aet=wl.filter_issuer_aet, limit_answers=wl.limit_answers),
        cleanup=CleanupRules(delete_on_stable_study=wl.delete_worklists_on_stable_study,
                             stable_age=config.stable_age, delete_delay_hours=wl.delete_worklists_delay,
                             interval=wl.housekeeping_interval),
        archive_finished_worklists=config.mpps.archive_finished_worklists,
        registered_users=config.registered_users,
        authentication_enabled=config.authentication_enabled,
    )


async def _watchdog(notifier: Notifier, period: float, dicom: DicomServer, archive: Archive,
                    board: StatusBoard) -> None:
    """WATCHDOG=1 every ``period`` seconds while healthy: this coroutine running
    proves the event loop turns; the DICOM server must still accept and the
    index writer still run. When one is dead no ping goes out, and systemd
    restarts the service after WatchdogSec."""
    while True:
        if dicom.is_alive() and archive.is_alive():
            notifier.watchdog()
            snap = board.snapshot()
            counts = snap.get("counts") or {}
            notifier.status(f"{counts.get('instances', 0)} instances, "
                            f"{snap.get('associations', 0)} associations open")
        else:
            log.error("health check failed (DICOM server %s, index writer %s): "
                      "no watchdog ping", "up" if dicom.is_alive() else "DOWN",
                      "up" if archive.is_alive() else "DOWN")
        await asyncio.sleep(period)


def _reload(config: Config, handlers: DicomHandlers, worklist: _Worklist, users: Users,
            notifier: Notifier) -> None:
    """SIGHUP: re-read the running ``config``'s file and apply the users, the access
    rules and the worklist options (_Reloadable); say which other changes wait for a
    restart."""
    notifier.reloading()
    try:
        _apply_reload(config, handlers, worklist, users)
    finally:
        notifier.ready()


# What SIGHUP applies (the keys behind _Reloadable); any other change needs a restart.
RELOADED_KEYS = frozenset(
    """
    RegisteredUsers AuthenticationEnabled DicomCheckCalledAet DicomCheckModalityHost
    DicomModalities DicomAlwaysAllowEcho DicomAlwaysAllowStore DicomAlwaysAllowFind
    DicomAlwaysAllowFindWorklist DicomAlwaysAllowGet DicomAlwaysAllowMove StrictAetComparison
    Worklists.FilterIssuerAet Worklists.LimitAnswers Worklists.DeleteWorklistsOnStableStudy
    Worklists.DeleteWorklistsDelay Worklists.HousekeepingInterval Mpps.ArchiveFinishedWorklists
    """.split()
)


def _apply_reload(config: Config, handlers: DicomHandlers, worklist: _Worklist,
                  users: Users) -> None:
    source = config.source
    if source is None:
        log.info("SIGHUP: running on embedded defaults, nothing to reload")
        return
    try:
        new = load_config(source)
    except ConfigError as e:
        log.error("SIGHUP: configuration not reloaded: %s", e)
        return
    live = _reloadable(new)
    users.load(live.registered_users, live.authentication_enabled)
    handlers.set_policy(live.policy)
    if worklist.dimse is not None:
        worklist.dimse.set_options(live.mwl)
    if worklist.housekeeper is not None:
        worklist.housekeeper.set_rules(live.cleanup)
    if worklist.mpps is not None:
        worklist.mpps.archive_finished_worklists = live.archive_finished_worklists
    log.info("SIGHUP: users, DICOM access rules and worklist options reloaded from %s", source)
    waiting = [key for key in changed_keys(config, new) if key not in RELOADED_KEYS]
    if waiting:
        # Ports, folders, AE title...: the running daemon keeps the old values.
        log.warning("SIGHUP: %s changed in %s: NOT applied, a restart is needed "
                    "(systemctl restart pacs-appliance)", ", ".join(waiting), source)
