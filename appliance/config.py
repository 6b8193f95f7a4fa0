"""Load and validate the daemon's JSON configuration (Orthanc's ``orthanc.json`` format).

The file uses Orthanc's key names and, unless a comment below says otherwise, Orthanc's
meanings and defaults, so that a clinic can point this daemon at its existing
``orthanc.json``. The references checked while writing this module are Orthanc's
``OrthancServer/Resources/Configuration.json`` (1.10 to 1.12 mainline),
``OrthancServer/Sources/OrthancConfiguration.cpp`` and ``main.cpp``,
``RemoteModalityParameters.cpp``, the DICOMweb plugin's ``Plugin/Configuration.cpp`` and the
Orthanc Book pages of the DICOMweb and Worklists plugins.

Where this module is stricter than Orthanc (Orthanc silently ignores unknown keys; here an
unknown key, a wrong type or an impossible value is a :class:`ConfigError`), it is on
purpose: a typo in a clinic's config must stop start-up with one clear line instead of
silently falling back to a default.

Nothing here logs or touches the disk except :func:`load_config` reading the file(s) it is
given; the caller logs ``Config.ignored`` and any :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, NoReturn

from appliance.passwords import password_entry_problem

__all__ = [
    "Config",
    "ConfigError",
    "DicomWebConfig",
    "Modality",
    "MppsConfig",
    "WorklistsConfig",
    "default_config",
    "load_config",
    "parse_config",
    "strip_json_comments",
]

FILE_KEY = "(file)"
"""The ``key`` of a :class:`ConfigError` about the file as a whole (missing, not JSON...)."""


class ConfigError(Exception):
    """A configuration problem, reported as one line: ``<path>: <key>: <why>``.

    ``key`` is dotted for nested keys (``DicomWeb.Root``, ``DicomModalities.us1.Port``) and is
    ``"(file)"`` when the file as a whole is at fault (missing, unreadable, not JSON).
    """

    def __init__(self, path: str, key: str, why: str):
        super().__init__(f"{path}: {key}: {why}")
        self.path = path
        self.key = key
        self.why = why

    def __reduce__(self):  # keep it picklable despite the 3-argument constructor
        return (type(self), (self.path, self.key, self.why))


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Modality:
    """One entry of ``DicomModalities`` (Orthanc's ``RemoteModalityParameters``).

    Orthanc accepts two forms, both supported: ``[AET, host, port]`` /
    ``[AET, host, port, manufacturer]``, and an object with ``AET``, ``Host``, ``Port`` and
    optional ``Manufacturer``, ``Allow*``, ``LocalAet``, ``Timeout``... Every ``Allow*``
    defaults to true, as in Orthanc.
    """

    name: str  # the JSON key (Orthanc's "symbolic name")
    aet: str
    host: str
    port: int
    manufacturer: str = "Generic"
    allow_echo: bool = True
    allow_store: bool = True
    allow_find: bool = True
    allow_find_worklist: bool = True
    allow_get: bool = True
    allow_move: bool = True
    # Orthanc: "AllowStorageCommitment" is an alias for "AllowNAction" & "AllowEventReport";
    # storage commitment needs both, so this is their conjunction.
    allow_storage_commitment: bool = True
    allow_transcoding: bool = True
    # Used when this daemon is the SCU towards the modality (C-MOVE destination).
    local_aet: str | None = None  # "LocalAet": our calling AET for it; None = DicomAet
    timeout: int = 0  # "Timeout" in seconds; 0 = use DicomScuTimeout (Orthanc semantics)


@dataclass(frozen=True)
class DicomWebConfig:
    """The ``DicomWeb`` section (options of Orthanc's DICOMweb plugin that matter here)."""

    enable: bool = True
    root: str = "/dicom-web/"  # normalised to start and end with "/" (as the plugin does)
    enable_wado: bool = True  # WADO-URI
    wado_root: str = "/wado"  # normalised to start with "/" and not end with one (plugin)
    # Root advertised in URLs we generate (RetrieveURL...) when a proxy maps another path;
    # defaults to ``root`` (plugin semantics).
    public_root: str = "/dicom-web/"
    # Host (and port) put in generated URLs; "" = from Forwarded / X-Forwarded-Host / Host
    # request headers, as the plugin does since 1.13.
    host: str = ""
    ssl: bool = False  # scheme of generated URLs when no X-Forwarded-Proto/Forwarded says so
    qido_case_sensitive: bool = True
    studies_metadata: str = "Full"  # "Full" | "MainDicomTags" | "Extrapolate" | "Experimental"
    series_metadata: str = "Full"
    # Ours ("MaximumStowBodySize", MB, 0 = no limit): the largest STOW-RS request body
    # accepted (413 past it). Orthanc has no such limit; its "StowMaxSize" is for its
    # STOW-RS *client* and stays ignored.
    maximum_stow_body_size: int = 4096


@dataclass(frozen=True)
class WorklistsConfig:
    """The ``Worklists`` section (Orthanc's Worklists plugin, legacy sample and new one)."""

    enable: bool = False  # Orthanc default
    database: Path | None = None  # "Database"; "Directory" is the new plugin's synonym
    # Keep only worklists whose ScheduledStationAETitle matches the calling AET.
    filter_issuer_aet: bool = False
    limit_answers: int = 0  # 0 = no limit
    # The new Worklists plugin (Nov 2025) defaults this to true, but the plugin that Debian
    # ships with Orthanc (the legacy sample plugin) never deletes anything: a clinic moving
    # from it must not see its .wl files disappear, so we keep false unless asked.
    delete_worklists_on_stable_study: bool = False
    housekeeping_interval: int = 60  # seconds between two housekeeping passes (plugin default)
    # When a worklist is authored through the REST API / CLI without a StudyInstanceUID.
    set_study_instance_uid_if_missing: bool = True
    # Hours after which a worklist file is deleted (its modification time); 0 = never. The
    # new Orthanc plugin only honours this when worklists are kept in its database and
    # refuses to start with a folder; here it applies to the folder.
    delete_worklists_delay: int = 0


@dataclass(frozen=True)
class MppsConfig:
    """The ``Mpps`` section (our own: Orthanc has no Modality Performed Procedure Step)."""

    enable: bool = True  # accept MPPS N-CREATE / N-SET from the scanners
    # Once a procedure step linked to a worklist item is COMPLETED or DISCONTINUED, stop
    # answering that item and move its .wl file into the "archive" sub-folder.
    archive_finished_worklists: bool = True


@dataclass(frozen=True)
class DiskMonitorConfig:
    """The ``DiskMonitor`` section (ours): free space of the storage, index, temporary
    and backup filesystems, watched with psutil."""

    interval_seconds: int = 30  # "IntervalSeconds": between two measurements
    # "WarnPercent" / "CriticalPercent": a filesystem this full (psutil's percent: used
    # over what non-root users can use) is logged once at WARNING / CRITICAL on the way up.
    warn_percent: int = 80
    critical_percent: int = 90
    # "MinimumFreeMB": below this much free space on the storage or index filesystem new
    # objects are refused (C-STORE 0xA700, HTTP 507) until space returns. Leaves room
    # for the index to commit and for the system itself.
    minimum_free_mb: int = 500


@dataclass(frozen=True)
class BackupsConfig:
    """The ``Backups`` section (ours): online backups of the index, and a storage mirror."""

    # "Directory": where backups go. Default <IndexDirectory>/backups, created when
    # missing; a Directory given in the file must exist (a backup disk that is not
    # mounted must not be silently replaced by a folder on the system disk).
    directory: Path | None = None  # None only on a Config not built by parse_config
    directory_is_default: bool = True
    interval_hours: float = 24  # "IntervalHours": between two scheduled backups; 0 = none
    at: tuple[int, int] | None = None  # "At": "HH:MM" local time the schedule is anchored to
    keep: int = 7  # "Keep": complete backups kept; older ones are deleted
    # "StorageMirror": a folder (an external disk) that receives a copy of every stored
    # file not yet there, so that a backup plus the mirror can restore everything.
    storage_mirror: Path | None = None


def _empty_users() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration. Paths are absolute.

    Built by :func:`load_config` / :func:`parse_config` / :func:`default_config`; keyword-only
    so that field order never matters to callers.
    """

    source: str | None  # the file or folder loaded; None for embedded defaults
    name: str = "pacs-appliance"
    storage_directory: Path
    index_directory: Path
    temporary_directory: Path
    dicom_aet: str = "ORTHANC"
    dicom_port: int = 4242  # 0 = let the OS choose (tests)
    dicom_check_called_aet: bool = False
    dicom_modalities: tuple[Modality, ...] = ()
    dicom_always_allow_echo: bool = True
    dicom_always_allow_store: bool = True
    dicom_always_allow_find: bool = False
    # DELIBERATELY differs from Orthanc >= 1.10 (false). Orthanc's worklist guide has the
    # clinic declare no DicomModalities; with Orthanc's default, every scanner would then get
    # an empty/refused worklist query. C-FIND MWL discloses only the day's schedule, the
    # scanners' whole purpose here, so we allow it unless the file says otherwise.
    dicom_always_allow_find_worklist: bool = True
    dicom_always_allow_get: bool = False
    dicom_always_allow_move: bool = False
    dicom_check_modality_host: bool = False
    # Orthanc: number of threads running DIMSE operations (default 4), extra associations
    # wait. Here: maximum concurrent associations; extra ones get a transient A-ASSOCIATE-RJ
    # (the SCU retries), so the default is higher than Orthanc's to avoid refusing a busy
    # morning of scanners.
    dicom_threads_count: int = 10
    overwrite_instances: bool = False
    maximum_pdu_length: int = 16384  # bytes; Orthanc's allowed range is 4096..131072
    dicom_scp_timeout: int = 30  # seconds without DIMSE before closing; 0 = no timeout (Orthanc)
    http_port: int = 8042  # 0 = let the OS choose (tests)
    remote_access_allowed: bool = False
    # Orthanc >= 1.5.8: when absent, equals RemoteAccessAllowed.
    authentication_enabled: bool
    registered_users: Mapping[str, str] = field(default_factory=_empty_users, hash=False)
    storage_compression: bool = False  # only false is accepted for now
    maximum_storage_size: int = 0  # MB, 0 = unlimited
    maximum_patient_count: int = 0  # 0 = unlimited
    maximum_storage_mode: str = "Recycle"  # "Recycle" | "Reject" (Orthanc >= 1.11.2)
    dicom_web: DicomWebConfig = field(default_factory=DicomWebConfig)
    worklists: WorklistsConfig = field(default_factory=WorklistsConfig)
    mpps: MppsConfig = field(default_factory=MppsConfig)
    disk_monitor: DiskMonitorConfig = field(default_factory=DiskMonitorConfig)
    backups: BackupsConfig = field(default_factory=BackupsConfig)
    # Orthanc keys parsed for later modules (same meaning and default as Orthanc).
    stable_age: int = 60  # seconds without a new instance before a study is "stable"
    strict_aet_comparison: bool = False  # false = AE titles compared case-insensitively
    dicom_scu_timeout: int = 10  # seconds, when we are the SCU (C-MOVE sub-operations)
    unknown_sop_class_accepted: bool = False
    default_encoding: str = "Latin1"  # for datasets without SpecificCharacterSet
    limit_find_results: int = 0  # C-FIND patient/study/series answers; 0 = no limit
    limit_find_instances: int = 0  # C-FIND instance answers; 0 = no limit
    case_sensitive_pn: bool = False
    http_request_timeout: int = 30  # seconds, server-side socket timeout
    http_bind_addresses: tuple[str, ...] = ()  # () = decided by RemoteAccessAllowed
    ignored: tuple[str, ...] = ()  # Orthanc keys accepted but without effect here
    embedded_defaults: bool = False


# --------------------------------------------------------------------------- key tables

# Orthanc core keys accepted without effect here (the caller logs them once). Each is either
# about a feature this appliance does not have (Lua, jobs, peers, WebDAV, Orthanc Explorer,
# outgoing HTTP, transcoding, custom dictionaries), or about a mechanism it replaces
# (HTTP threads and keep-alive: aiohttp; SyncStorageArea: we always fsync; TLS: nginx).
_IGNORED_CORE = frozenset(
    """
    LuaScripts LuaHeartBeatPeriod Plugins ConcurrentJobs JobsEngineThreadsCount
    MaximumStorageCacheSize StorageLoaderThreadsCount StorageMemoryCapacity
    OrthancExplorerEnabled HttpDescribeErrors HttpCompressionEnabled
    WebDavEnabled WebDavDeleteAllowed WebDavUploadAllowed
    AcceptedTransferSyntaxes DeflatedTransferSyntaxAccepted JpegTransferSyntaxAccepted
    Jpeg2000TransferSyntaxAccepted JpegLosslessTransferSyntaxAccepted JpipTransferSyntaxAccepted
    Mpeg2TransferSyntaxAccepted RleTransferSyntaxAccepted Mpeg4TransferSyntaxAccepted
    H265TransferSyntaxAccepted DicomGetScuProposesAcceptedTransferSyntaxes
    AcceptedSopClasses RejectedSopClasses
    SslCertificate SslMinimumProtocolVersion SslCiphersAccepted SslVerifyPeers
    SslTrustedClientCertificates
    DicomTlsCertificate DicomTlsPrivateKey DicomTlsTrustedCertificates
    DicomTlsRemoteCertificateRequired DicomTlsMinimumProtocolVersion DicomTlsCiphersAccepted
    DicomEchoChecksFind DicomDefaultRetrieveMethod DicomScuPreferredTransferSyntax
    OrthancPeers OrthancPeersInDatabase
    HttpProxy HttpVerbose HttpTimeout HttpsVerifyPeers HttpsCACertificates Pkcs11
    UserMetadata UserContentType StoreMD5ForAttachments LogExportedResources
    KeepAlive KeepAliveTimeout TcpNoDelay HttpThreadsCount
    DicomAssociationCloseDelay QueryRetrieveSize
    LoadPrivateDictionary Locale Dictionary ExternalDictionaries DefaultPrivateCreator
    SynchronousCMove JobsHistorySize SaveJobs LimitJobs MediaArchiveSize
    StorageAccessOnFind MetricsEnabled ExecuteLuaEnabled RestApiWriteToFileSystemEnabled
    StorageCommitmentReportsSize TranscodeDicomProtocol BuiltinDecoderTranscoderOrder
    IngestTranscoding IngestTranscodingOfUncompressed IngestTranscodingOfCompressed
    DicomLossyTranscodingQuality SyncStorageArea MallocArenaMax
    DeidentifyLogs DeidentifyLogsDicomVersion DatabaseServerIdentifier CheckRevisions
    SynchronousZipStream ZipLoaderThreads ZipUseUtf8 ExtraMainDicomTags Warnings
    """.split()
)

# Sections read by Orthanc plugins that this daemon does not emulate (viewers, database
# and storage back-ends, Python/Lua hosts...). Accepted so a clinic's file loads unchanged.
_IGNORED_PLUGIN_SECTIONS = frozenset(
    """
    ServeFolders WebViewer StoneWebViewer OrthancExplorer2 Ohif VolView Wsi
    PostgreSQL MySQL Odbc Gdcm Transfers Authorization Python PythonScript PythonVerbose
    Housekeeper DelayedDeletion MultitenantDicom Tcia Indexer ConnectivityChecks
    AzureBlobStorage AwsS3Storage GoogleCloudStorage AdvancedStorage Education
    """.split()
)

# Orthanc keys honoured only with the value this daemon implements; any other value is an
# error rather than being silently ignored.
_FIXED = {
    "DicomServerEnabled": (True, "false is not supported: receiving DICOM is this daemon's purpose"),
    "HttpServerEnabled": (True, "false is not supported: DICOMweb needs the HTTP server"),
    "SslEnabled": (False, "true is not supported: terminate HTTPS in the nginx proxy"),
    "DicomTlsEnabled": (False, "true is not supported yet"),
    "DicomModalitiesInDatabase": (
        False,
        "true is not supported: modalities are read from DicomModalities in this file",
    ),
    "StoreDicom": (True, "false (index-only mode) is not supported"),
    "ReadOnly": (False, "true is not supported"),
}

_SUPPORTED_TOP = (
    "Name StorageDirectory IndexDirectory TemporaryDirectory DicomAet DicomPort "
    "DicomCheckCalledAet DicomModalities DicomAlwaysAllowEcho DicomAlwaysAllowStore "
    "DicomAlwaysAllowFind DicomAlwaysAllowFindWorklist DicomAlwaysAllowGet "
    "DicomAlwaysAllowMove DicomCheckModalityHost DicomThreadsCount OverwriteInstances "
    "MaximumPduLength DicomScpTimeout HttpPort RemoteAccessAllowed AuthenticationEnabled "
    "RegisteredUsers StorageCompression MaximumStorageSize MaximumPatientCount "
    "MaximumStorageMode DicomWeb Worklists StableAge StrictAetComparison DicomScuTimeout "
    "UnknownSopClassAccepted DefaultEncoding LimitFindResults LimitFindInstances "
    "CaseSensitivePN HttpRequestTimeout HttpBindAddresses Mpps DiskMonitor Backups"
).split()

# Orthanc keys checked like the others but not acted upon yet (listed in
# Config.ignored, so the daemon's start-up log says so).
_VALIDATED_NO_EFFECT = (
    "DicomScuTimeout", "DefaultEncoding", "HttpRequestTimeout",
    "DicomWeb.StudiesMetadata", "DicomWeb.SeriesMetadata",
)

_DICOMWEB_SUPPORTED = (
    "Enable Root EnableWado WadoRoot PublicRoot Host Ssl QidoCaseSensitive "
    "StudiesMetadata SeriesMetadata MaximumStowBodySize"
).split()
# DICOMweb client features (Servers...) and plugin performance knobs.
_DICOMWEB_IGNORED = frozenset(
    """
    Servers ServersInDatabase StowMaxInstances StowMaxSize EnableMetadataCache
    EnablePerformanceLogs MetadataWorkerThreadsCount WadoRsLoaderThreadsCount
    StudiesMetadataExtrapolatedTags SeriesMetadataExtrapolatedTags
    """.split()
)

_WORKLISTS_SUPPORTED = (
    "Enable Database Directory FilterIssuerAet LimitAnswers DeleteWorklistsOnStableStudy "
    "HousekeepingInterval SetStudyInstanceUidIfMissing SaveInOrthancDatabase DeleteWorklistsDelay"
).split()
# A debug log switch of the plugin.
_WORKLISTS_IGNORED = frozenset({"LogMatchedWorklistIds"})
_MPPS_SUPPORTED = ["Enable", "ArchiveFinishedWorklists"]

_MODALITY_SUPPORTED = (
    "AET Host Port Manufacturer AllowEcho AllowStore AllowFind AllowFindWorklist AllowGet "
    "AllowMove AllowNAction AllowEventReport AllowStorageCommitment AllowTranscoding "
    "UseDicomTls LocalAet Timeout"
).split()
_MODALITY_IGNORED = frozenset({"RetrieveMethod"})  # Orthanc as Q/R SCU only

# Orthanc's StringToModalityManufacturer (case-sensitive). The last six are obsolete names
# Orthanc still accepts (mapped to Generic / GenericNoWildcardInDates with a warning).
_MANUFACTURERS = (
    "Generic GenericNoWildcardInDates GenericNoUniversalWildcard Vitrea GE SiemensSyngoCT "
    "AgfaImpax SyngoVia EFilm2 MedInria ClearCanvas Dcm4Chee"
).split()

# Orthanc's StringToEncoding (case-insensitive there, so here too); canonical spelling kept.
_ENCODINGS = (
    "Ascii Utf8 Latin1 Latin2 Latin3 Latin4 Latin5 Cyrillic Windows1251 Arabic Greek Hebrew "
    "Thai Japanese Chinese JapaneseKanji Korean SimplifiedChinese"
).split()

_METADATA_MODES = ("Full", "MainDicomTags", "Extrapolate", "Experimental")

_MODALITY_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")  # Orthanc's CheckAlphanumeric

_PORT_RANGE = "0-65535"


# --------------------------------------------------------------------------- comments


_COMMENT_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?(?:\*/|\Z)', re.S)
_TRAILING_COMMA_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|,(?=\s*[}\]])', re.S)
_NOT_NEWLINE = re.compile(r"[^\r\n]")


def _strip_comments(text: str) -> tuple[str, int | None]:
    """Blank out comments; return the text and the offset of an unterminated ``/*``."""
    unterminated: list[int] = []

    def blank(m: re.Match[str]) -> str:
        token = m.group()
        if token.startswith('"'):
            return token  # a string: "http://x" keeps its slashes
        if token.startswith("/*") and (len(token) < 4 or not token.endswith("*/")):
            unterminated.append(m.start())
        # Spaces instead of deletion: JSON error positions (line and column) stay right.
        return _NOT_NEWLINE.sub(" ", token)

    stripped = _COMMENT_TOKENS.sub(blank, text)
    return stripped, (unterminated[0] if unterminated else None)


def strip_json_comments(text: str) -> str:
    """Replace ``//`` and ``/* */`` comments by spaces, leaving strings untouched.

    Newlines (and every other character's column) are preserved, so a JSON parser's line
    and column numbers still point into the original text. An unterminated ``/*`` comment
    runs to the end of the text.
    """
    return _strip_comments(text)[0]


def _strip_trailing_commas(text: str) -> str:
    # Orthanc parses with jsoncpp's CharReaderBuilder defaults, which allow a trailing comma
    # before "}" or "]"; a file Orthanc loads must load here.
    return _TRAILING_COMMA_TOKENS.sub(lambda m: " " if m.group() == "," else m.group(), text)


# --------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    """A value as it would appear in JSON, shortened for a one-line message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, known: list[str]) -> str:
    lowered = {k.lower(): k for k in known}
    if key.lower() in lowered:
        return f'; did you mean "{lowered[key.lower()]}"?'
    match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
    return f'; did you mean "{lowered[match[0]]}"?' if match else ""


def _aet_problem(value: str) -> str | None:
    """Why ``value`` is not a usable AE title (PS3.5 6.2, VR AE), or None."""
    if not value:
        return "must not be empty"
    if len(value) > 16:
        return f"at most 16 characters, got {len(value)} ({_show(value)})"
    if value.strip(" ") == "":
        return "must not be all spaces (PS3.5 6.2)"
    if "\\" in value:
        return f"must not contain a backslash, got {_show(value)}"
    if any(not (" " <= c <= "~") for c in value):
        return f"only printable ASCII characters are allowed (PS3.5 6.2), got {_show(value)}"
    return None


class _Object:
    """Reads one JSON object of the config, knowing its dotted prefix and allowed keys."""

    def __init__(
        self,
        data: Mapping[str, Any],
        prefix: str,
        fail: Callable[[str, str], NoReturn],
        ignored_out: list[str],
        supported: list[str],
        ignored: frozenset[str] = frozenset(),
    ):
        self.data = data
        self.prefix = prefix
        self.fail = fail
        # Unknown keys first, so a typo is reported before any consequence of it.
        known = list(supported) + sorted(ignored)
        for key in data:
            if key in ignored:
                ignored_out.append(self.key(key))
            elif key not in supported:
                fail(self.key(key), "unknown key" + _suggest(key, known))

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def has(self, name: str) -> bool:
        return name in self.data

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, bool):
            self.fail(self.key(name), f"expected boolean, got {_show(value)}")
        return value

    def integer(self, name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        if name not in self.data:
            return default
        value = self.data[name]
        # bool is an int in Python, but "DicomPort": true is not a number in JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(self.key(name), f"expected integer, got {_show(value)}")
        if value < lo or (hi is not None and value > hi):
            expected = f"{lo}-{hi}" if hi is not None else f"integer >= {lo}"
            self.fail(self.key(name), f"expected {expected}, got {_show(value)}")
        return value

    def port(self, name: str, default: int) -> int:
        # Orthanc reads DicomPort/HttpPort as JSON integers only ("4242" is refused there
        # too). 0 is accepted for OS-assigned ports in tests.
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            self.fail(self.key(name), f"expected {_PORT_RANGE}, got {_show(value)}")
        return value

    def string(self, name: str, default: str, *, empty_ok: bool = True) -> str:
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, str):
            self.fail(self.key(name), f"expected string, got {_show(value)}")
        if not empty_ok and not value.strip():
            self.fail(self.key(name), "must not be empty")
        return value

    def choice(self, name: str, default: str, choices: list[str] | tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            self.fail(
                self.key(name),
                f"expected one of {', '.join(choices)}, got {_show(value)}"
                + _suggest(value, list(choices)),
            )
        return value

    def aet(self, name: str, default: str) -> str:
        value = self.string(name, default)
        problem = _aet_problem(value)
        if problem:
            self.fail(self.key(name), problem)
        # PS3.5 6.2: leading and trailing spaces of an AE title are not significant.
        return value.strip(" ")

    def fixed(self, name: str, supported: bool, why: str) -> None:
        if self.boolean(name, supported) != supported:
            self.fail(self.key(name), why)

    def path(self, name: str, default: str, base: Path) -> Path:
        value = self.string(name, default, empty_ok=False)
        if "\0" in value:
            self.fail(self.key(name), "must not contain a NUL character")
        return _absolute(base, value)

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            self.fail(self.key(name), f"expected object, got {_show(value)}")
        return value


def _absolute(base: Path, value: str) -> Path:
    # Orthanc interprets relative paths against the folder of the configuration file
    # (OrthancConfiguration::InterpretStringParameterAsPath). normpath, not resolve():
    # no disk access, symlinks left alone.
    return Path(os.path.normpath(base / value))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _normalise_root(obj: _Object, name: str, default: str) -> str:
    value = obj.string(name, default)
    # The DICOMweb plugin's GetRootPath: make sure the root starts and ends with "/".
    if not value.startswith("/"):
        value = "/" + value
    if not value.endswith("/"):
        value += "/"
    _check_url_path(obj, name, value)
    return value


def _check_url_path(obj: _Object, name: str, value: str) -> None:
    if re.search(r"[\s?#%\\]", value) or "//" in value or "/../" in value or "/./" in value:
        obj.fail(obj.key(name), f"expected a plain URL path like \"/dicom-web/\", got {_show(value)}")


# --------------------------------------------------------------------------- sections


def _parse_modality(
    name: str, value: Any, prefix: str, fail: Callable[[str, str], NoReturn], ignored_out: list[str]
) -> Modality:
    key = f"{prefix}{name}"
    if not _MODALITY_NAME.match(name):
        fail(key, 'a modality name may only contain letters, digits, "-" and "_" (as in Orthanc)')

    def check_port(where: str, raw: Any) -> int:
        # Orthanc's ReadPortNumber accepts an integer or a string holding one for modalities
        # (configs generated with "${PORT}" templates rely on it). Orthanc stops at 65534.
        port = raw
        if isinstance(raw, str) and re.fullmatch(r"\s*\d{1,5}\s*", raw):
            port = int(raw)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            fail(where, f"expected 1-65535, got {_show(raw)}")
        return port

    def check_aet(where: str, raw: Any) -> str:
        if not isinstance(raw, str):
            fail(where, f"expected string, got {_show(raw)}")
        problem = _aet_problem(raw)
        if problem:
            fail(where, problem)
        return raw.strip(" ")

    def check_host(where: str, raw: Any) -> str:
        if not isinstance(raw, str):
            fail(where, f"expected string, got {_show(raw)}")
        if not raw.strip() or re.search(r"\s", raw):
            fail(where, f"expected a host name or IP address, got {_show(raw)}")
        return raw

    def check_manufacturer(where: str, raw: Any) -> str:
        if not isinstance(raw, str):
            fail(where, f"expected string, got {_show(raw)}")
        if raw not in _MANUFACTURERS:
            fail(where, f"unknown manufacturer {_show(raw)}" + _suggest(raw, _MANUFACTURERS))
        return raw

    if isinstance(value, list):
        if len(value) not in (3, 4):
            fail(
                key,
                "expected [AET, host, port] or [AET, host, port, manufacturer], "
                f"got a list of {len(value)} item(s)",
            )
        return Modality(
            name=name,
            aet=check_aet(f"{key}[0]", value[0]),
            host=check_host(f"{key}[1]", value[1]),
            port=check_port(f"{key}[2]", value[2]),
            manufacturer=check_manufacturer(f"{key}[3]", value[3]) if len(value) == 4 else "Generic",
        )

    if not isinstance(value, dict):
        fail(
            key,
            "expected [AET, host, port], [AET, host, port, manufacturer] or an object "
            f"with AET, Host and Port, got {_show(value)}",
        )
    obj = _Object(value, key + ".", fail, ignored_out, _MODALITY_SUPPORTED, _MODALITY_IGNORED)
    for required in ("AET", "Host", "Port"):
        if required not in value:
            fail(obj.key(required), "required in a modality object")
    # Orthanc: AllowNAction/AllowEventReport first, then AllowStorageCommitment overrides both.
    n_action = obj.boolean("AllowNAction", True)
    n_event_report = obj.boolean("AllowEventReport", True)
    storage_commitment = obj.boolean("AllowStorageCommitment", n_action and n_event_report)
    obj.fixed("UseDicomTls", False, "true is not supported yet")
    # Orthanc serialises an unset LocalAet as "" (REST API exports), so "" means unset.
    local_aet = obj.string("LocalAet", "")
    if local_aet:
        local_aet = check_aet(obj.key("LocalAet"), local_aet)
    return Modality(
        name=name,
        aet=check_aet(obj.key("AET"), value["AET"]),
        host=check_host(obj.key("Host"), value["Host"]),
        port=check_port(obj.key("Port"), value["Port"]),
        manufacturer=check_manufacturer(obj.key("Manufacturer"), value.get("Manufacturer", "Generic")),
        allow_echo=obj.boolean("AllowEcho", True),
        allow_store=obj.boolean("AllowStore", True),
        allow_find=obj.boolean("AllowFind", True),
        allow_find_worklist=obj.boolean("AllowFindWorklist", True),
        allow_get=obj.boolean("AllowGet", True),
        allow_move=obj.boolean("AllowMove", True),
        allow_storage_commitment=storage_commitment,
        allow_transcoding=obj.boolean("AllowTranscoding", True),
        local_aet=local_aet or None,
        timeout=obj.integer("Timeout", 0),
    )


def _parse_dicom_web(
    data: Mapping[str, Any], fail: Callable[[str, str], NoReturn], ignored_out: list[str]
) -> DicomWebConfig:
    obj = _Object(data, "DicomWeb.", fail, ignored_out, _DICOMWEB_SUPPORTED, _DICOMWEB_IGNORED)
    root = _normalise_root(obj, "Root", "/dicom-web/")
    public_root = _normalise_root(obj, "PublicRoot", root)

    wado_root = obj.string("WadoRoot", "/wado")
    # The plugin's GetWadoRoot: leading "/" added, trailing "/" removed.
    if not wado_root.startswith("/"):
        wado_root = "/" + wado_root
    wado_root = wado_root.rstrip("/")
    if not wado_root:
        fail(obj.key("WadoRoot"), 'expected a URL path below "/", like "/wado"')
    _check_url_path(obj, "WadoRoot", wado_root)

    host = obj.string("Host", "").strip()
    if re.search(r"[\s/?#@]", host):
        fail(obj.key("Host"), f"expected host or host:port (no scheme, no path), got {_show(host)}")

    return DicomWebConfig(
        enable=obj.boolean("Enable", True),
        root=root,
        enable_wado=obj.boolean("EnableWado", True),
        wado_root=wado_root,
        public_root=public_root,
        host=host,
        ssl=obj.boolean("Ssl", False),
        qido_case_sensitive=obj.boolean("QidoCaseSensitive", True),
        studies_metadata=obj.choice("StudiesMetadata", "Full", _METADATA_MODES),
        series_metadata=obj.choice("SeriesMetadata", "Full", _METADATA_MODES),
        maximum_stow_body_size=obj.integer("MaximumStowBodySize", 4096),
    )


def _parse_worklists(
    data: Mapping[str, Any],
    base: Path,
    fail: Callable[[str, str], NoReturn],
    ignored_out: list[str],
) -> WorklistsConfig:
    obj = _Object(data, "Worklists.", fail, ignored_out, _WORKLISTS_SUPPORTED, _WORKLISTS_IGNORED)
    # The worklist plugins take "Database" as given (relative to Orthanc's working
    # directory); like every other path here it is relative to the config file instead.
    database = obj.path("Database", "", base) if obj.has("Database") else None
    directory = obj.path("Directory", "", base) if obj.has("Directory") else None
    if database is not None and directory is not None and database != directory:
        fail(obj.key("Directory"), f'differs from Worklists.Database ("{database}"); keep one')
    folder = directory or database
    enable = obj.boolean("Enable", False)
    obj.fixed(
        "SaveInOrthancDatabase",
        False,
        "true is not supported: worklists are served from the Database/Directory folder",
    )
    if enable and folder is None:
        fail(obj.key("Database"), 'required when Worklists.Enable is true ("Directory" also accepted)')
    return WorklistsConfig(
        enable=enable,
        database=folder,
        filter_issuer_aet=obj.boolean("FilterIssuerAet", False),
        limit_answers=obj.integer("LimitAnswers", 0),
        delete_worklists_on_stable_study=obj.boolean("DeleteWorklistsOnStableStudy", False),
        housekeeping_interval=obj.integer("HousekeepingInterval", 60, lo=1),
        set_study_instance_uid_if_missing=obj.boolean("SetStudyInstanceUidIfMissing", True),
        delete_worklists_delay=obj.integer("DeleteWorklistsDelay", 0),
    )


def _parse_mpps(
    data: Mapping[str, Any], fail: Callable[[str, str], NoReturn], ignored_out: list[str]
) -> MppsConfig:
    obj = _Object(data, "Mpps.", fail, ignored_out, _MPPS_SUPPORTED)
    return MppsConfig(
        enable=obj.boolean("Enable", True),
        archive_finished_worklists=obj.boolean("ArchiveFinishedWorklists", True),
    )


_DISK_MONITOR_SUPPORTED = "IntervalSeconds WarnPercent CriticalPercent MinimumFreeMB".split()
_BACKUPS_SUPPORTED = "Directory IntervalHours At Keep StorageMirror".split()
_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")


def _parse_disk_monitor(
    data: Mapping[str, Any], fail: Callable[[str, str], NoReturn], ignored_out: list[str]
) -> DiskMonitorConfig:
    obj = _Object(data, "DiskMonitor.", fail, ignored_out, _DISK_MONITOR_SUPPORTED)
    warn = obj.integer("WarnPercent", 80, lo=1, hi=100)
    critical = obj.integer("CriticalPercent", 90, lo=1, hi=100)
    if critical < warn:
        fail(obj.key("CriticalPercent"), f"must not be below WarnPercent ({warn}), got {critical}")
    return DiskMonitorConfig(
        interval_seconds=obj.integer("IntervalSeconds", 30, lo=1, hi=3600),
        warn_percent=warn,
        critical_percent=critical,
        minimum_free_mb=obj.integer("MinimumFreeMB", 500),
    )


def _parse_backups(
    data: Mapping[str, Any],
    base: Path,
    index: Path,
    storage: Path,
    fail: Callable[[str, str], NoReturn],
    ignored_out: list[str],
) -> BackupsConfig:
    obj = _Object(data, "Backups.", fail, ignored_out, _BACKUPS_SUPPORTED)
    interval = data.get("IntervalHours", 24)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool):
        fail(obj.key("IntervalHours"), f"expected a number of hours, got {_show(interval)}")
    if not 0 <= interval <= 24 * 366:
        fail(obj.key("IntervalHours"), f"expected 0 (no scheduled backups) to 8784, got {_show(interval)}")
    at = None
    if obj.has("At") and data["At"] is not None:
        text = obj.string("At", "")
        m = _TIME_OF_DAY.match(text)
        if not m:
            fail(obj.key("At"), f'expected a time of day "HH:MM" (00:00-23:59), got {_show(text)}')
        at = (int(m.group(1)), int(m.group(2)))
        if interval == 0:
            fail(obj.key("At"), "has no effect with IntervalHours 0 (no scheduled backups)")
    mirror = None
    if obj.has("StorageMirror") and data["StorageMirror"] is not None:
        mirror = obj.path("StorageMirror", "", base)
        if _is_within(mirror, storage) or _is_within(storage, mirror):
            fail(obj.key("StorageMirror"), f'must be outside StorageDirectory ("{storage}")')
    directory = obj.path("Directory", "", base) if obj.has("Directory") else index / "backups"
    if mirror is not None and (_is_within(mirror, directory) or _is_within(directory, mirror)):
        fail(obj.key("StorageMirror"), f'must be outside Backups.Directory ("{directory}")')
    return BackupsConfig(
        directory=directory,
        directory_is_default=not obj.has("Directory"),
        interval_hours=interval,
        at=at,
        keep=obj.integer("Keep", 7, lo=1, hi=1000),
        storage_mirror=mirror,
    )


def _parse_users(obj: _Object) -> Mapping[str, str]:
    users = obj.section("RegisteredUsers")
    result: dict[str, str] = {}
    for username, password in users.items():
        key = obj.key(f"RegisteredUsers.{username}")
        if not username or ":" in username:
            # RFC 7617: the user-id of HTTP Basic authentication cannot contain a colon.
            obj.fail(key, 'a user name must be non-empty and must not contain ":" (HTTP Basic, RFC 7617)')
        if not isinstance(password, str):
            obj.fail(key, f"expected string (the password), got {_show(password)}")
        if not password:
            obj.fail(key, "empty password")
        if (problem := password_entry_problem(password)) is not None:
            obj.fail(key, f"unusable password hash: {problem}")
        result[username] = password
    return MappingProxyType(result)


def _parse_overwrite(obj: _Object) -> bool:
    if not obj.has("OverwriteInstances"):
        return False
    value = obj.data["OverwriteInstances"]
    # Orthanc <= 1.12.11: boolean. Later: "Never" | "Always" | "IfChanged" (booleans kept).
    if isinstance(value, bool):
        return value
    if value == "Never":
        return False
    if value == "Always":
        return True
    if value == "IfChanged":
        obj.fail(obj.key("OverwriteInstances"), '"IfChanged" is not supported yet')
    obj.fail(
        obj.key("OverwriteInstances"),
        f'expected boolean, "Never" or "Always", got {_show(value)}',
    )


# --------------------------------------------------------------------------- public API


def parse_config(
    data: dict,
    source: str,
    *,
    base_dir: Path | str | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Validate the decoded JSON ``data`` and build a :class:`Config`.

    ``source`` names the file in error messages and becomes ``Config.source``. Relative
    paths are taken relative to ``base_dir``, by default the folder of ``source`` (Orthanc's
    rule). ``origins`` maps top-level keys to the file that defined them when a folder of
    files was loaded, so that an error names the right file.

    Raises :class:`ConfigError` for an unknown key, a wrong type or an impossible value.
    """

    def fail(key: str, why: str) -> NoReturn:
        top = re.split(r"[.\[]", key, maxsplit=1)[0]
        path = origins.get(top, source) if origins else source
        raise ConfigError(path, key, why)

    if not isinstance(data, dict):
        fail(FILE_KEY, f"expected a JSON object at the top level, got {type(data).__name__}")
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.path.dirname(source) or "."))

    ignored: list[str] = []
    top = _Object(
        data,
        "",
        fail,
        ignored,
        _SUPPORTED_TOP + list(_FIXED),
        _IGNORED_CORE | _IGNORED_PLUGIN_SECTIONS,
    )
    for key, (supported, why) in _FIXED.items():
        top.fixed(key, supported, why)

    # Orthanc's defaults: "OrthancStorage" next to the config file; the index defaults to
    # the storage folder (they may be the same folder, as in Debian's orthanc.json).
    storage = top.path("StorageDirectory", "OrthancStorage", base)
    index = top.path("IndexDirectory", str(storage), base)
    # Orthanc's default is the system temporary folder. Ours must be on the same filesystem
    # as the storage so that a received file is renamed into place atomically (the store
    # contract); a sibling folder is not (a storage folder is often a mount point), a
    # sub-folder always is. The leading dot lets a walk of the storage tree skip it.
    temporary = top.path("TemporaryDirectory", str(storage / ".tmp"), base)

    dicom_port = top.port("DicomPort", 4242)
    http_port = top.port("HttpPort", 8042)
    if dicom_port and dicom_port == http_port:
        fail("HttpPort", f"same port as DicomPort ({dicom_port})")

    modalities_data = top.section("DicomModalities")
    modalities = tuple(
        _parse_modality(name, value, "DicomModalities.", fail, ignored)
        for name, value in modalities_data.items()
    )

    remote_access = top.boolean("RemoteAccessAllowed", False)
    # Orthanc >= 1.5.8 (main.cpp): when "AuthenticationEnabled" is absent, authentication
    # is on exactly when remote access is allowed.
    authentication = top.boolean("AuthenticationEnabled", remote_access)
    users = _parse_users(top)
    if authentication and not users:
        # Orthanc then creates the well-known user orthanc/orthanc (remote access) or serves
        # nobody (localhost); this appliance never runs with a default password.
        fail(
            "RegisteredUsers",
            "authentication is enabled but no user is declared "
            "(Orthanc would create the default user orthanc/orthanc; this daemon refuses to)",
        )

    if top.boolean("StorageCompression", False):
        fail("StorageCompression", "true is not supported yet")

    bind_addresses: tuple[str, ...] = ()
    if top.has("HttpBindAddresses"):
        raw = top.data["HttpBindAddresses"]
        if not isinstance(raw, list):
            fail("HttpBindAddresses", f"expected a list of IP addresses, got {_show(raw)}")
        for i, address in enumerate(raw):
            try:
                ipaddress.ip_address(address)
            except ValueError:
                fail(f"HttpBindAddresses[{i}]", f"expected an IP address, got {_show(address)}")
        bind_addresses = tuple(raw)

    encoding = top.string("DefaultEncoding", "Latin1")
    canonical = {e.lower(): e for e in _ENCODINGS}.get(encoding.lower())
    if canonical is None:
        fail(
            "DefaultEncoding",
            f"expected one of {', '.join(_ENCODINGS)}, got {_show(encoding)}"
            + _suggest(encoding, _ENCODINGS),
        )

    dicom_web = _parse_dicom_web(top.section("DicomWeb"), fail, ignored)
    # Validated (a wrong value is still an error) but without effect yet: say
    # so at start-up rather than pretend.
    for key in _VALIDATED_NO_EFFECT:
        section, _, sub = key.partition(".")
        where = top.data.get(section) if sub else top.data
        if isinstance(where, Mapping) and (sub or section) in where:
            ignored.append(key)
    worklists = _parse_worklists(top.section("Worklists"), base, fail, ignored)
    mpps = _parse_mpps(top.section("Mpps"), fail, ignored)
    disk_monitor = _parse_disk_monitor(top.section("DiskMonitor"), fail, ignored)
    backups = _parse_backups(top.section("Backups"), base, index, storage, fail, ignored)
    for other_key, other in (
        ("StorageDirectory", storage),
        ("IndexDirectory", index),
        ("Worklists.Database", worklists.database),
        ("Backups.Directory", backups.directory),
        ("Backups.StorageMirror", backups.storage_mirror),
    ):
        # Temporary files are swept at start-up: that sweep must never reach kept data.
        if other is not None and _is_within(other, temporary):
            fail("TemporaryDirectory", f'must not contain {other_key} ("{other}"): it is emptied at start-up')

    return Config(
        source=source,
        name=top.string("Name", "pacs-appliance", empty_ok=False),
        storage_directory=storage,
        index_directory=index,
        temporary_directory=temporary,
        dicom_aet=top.aet("DicomAet", "ORTHANC"),
        dicom_port=dicom_port,
        dicom_check_called_aet=top.boolean("DicomCheckCalledAet", False),
        dicom_modalities=modalities,
        dicom_always_allow_echo=top.boolean("DicomAlwaysAllowEcho", True),
        dicom_always_allow_store=top.boolean("DicomAlwaysAllowStore", True),
        dicom_always_allow_find=top.boolean("DicomAlwaysAllowFind", False),
        dicom_always_allow_find_worklist=top.boolean("DicomAlwaysAllowFindWorklist", True),
        dicom_always_allow_get=top.boolean("DicomAlwaysAllowGet", False),
        dicom_always_allow_move=top.boolean("DicomAlwaysAllowMove", False),
        dicom_check_modality_host=top.boolean("DicomCheckModalityHost", False),
        dicom_threads_count=top.integer("DicomThreadsCount", 10, lo=1),
        overwrite_instances=_parse_overwrite(top),
        maximum_pdu_length=top.integer("MaximumPduLength", 16384, lo=4096, hi=131072),
        dicom_scp_timeout=top.integer("DicomScpTimeout", 30),
        http_port=http_port,
        remote_access_allowed=remote_access,
        authentication_enabled=authentication,
        registered_users=users,
        storage_compression=False,
        maximum_storage_size=top.integer("MaximumStorageSize", 0),
        maximum_patient_count=top.integer("MaximumPatientCount", 0),
        maximum_storage_mode=top.choice("MaximumStorageMode", "Recycle", ("Recycle", "Reject")),
        dicom_web=dicom_web,
        worklists=worklists,
        mpps=mpps,
        disk_monitor=disk_monitor,
        backups=backups,
        stable_age=top.integer("StableAge", 60),
        strict_aet_comparison=top.boolean("StrictAetComparison", False),
        dicom_scu_timeout=top.integer("DicomScuTimeout", 10),
        unknown_sop_class_accepted=top.boolean("UnknownSopClassAccepted", False),
        default_encoding=canonical,
        limit_find_results=top.integer("LimitFindResults", 0),
        limit_find_instances=top.integer("LimitFindInstances", 0),
        case_sensitive_pn=top.boolean("CaseSensitivePN", False),
        http_request_timeout=top.integer("HttpRequestTimeout", 30),
        http_bind_addresses=bind_addresses,
        ignored=tuple(ignored),
        embedded_defaults=False,
    )


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _read_json_file(path: Path, shown: str) -> dict:
    """Read one config file; every problem becomes a ConfigError about ``shown``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, FILE_KEY, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(shown, FILE_KEY, "is a folder") from None
    except OSError as e:
        raise ConfigError(shown, FILE_KEY, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # jsoncpp skips a UTF-8 BOM too
    except UnicodeDecodeError as e:
        raise ConfigError(shown, FILE_KEY, f"not UTF-8 text (byte {e.start})") from None

    text, unterminated = _strip_comments(text)
    if unterminated is not None:
        line = text.count("\n", 0, unterminated) + 1
        column = unterminated - (text.rfind("\n", 0, unterminated) + 1) + 1
        raise ConfigError(
            shown, FILE_KEY, f"unterminated /* comment starting at line {line}, column {column}"
        )
    text = _strip_trailing_commas(text)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(
            shown, FILE_KEY, f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except _DuplicateKey as e:
        # jsoncpp keeps the last one silently; one of the two values would be lost here.
        raise ConfigError(shown, str(e), "defined twice in the same object") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(shown, FILE_KEY, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            shown, FILE_KEY, f"expected a JSON object at the top level, got {type(data).__name__}"
        )
    return data


def load_config(path: str | os.PathLike) -> Config:
    """Read, decode and validate the configuration at ``path``.

    ``path`` is a JSON file with ``//`` and ``/* */`` comments allowed (and trailing commas,
    as Orthanc's jsoncpp allows), or, as with Orthanc (Debian starts it on ``/etc/orthanc/``),
    a folder whose ``*.json`` files are merged; a top-level key defined in two files is an
    error there as in Orthanc. Relative paths inside are relative to the file's folder (or to
    the folder itself).

    Raises :class:`ConfigError`; ``key`` is ``"(file)"`` when the file itself is the problem.
    """
    shown = os.fspath(path)
    target = Path(shown)
    if not target.is_dir():
        data = _read_json_file(target, shown)
        return parse_config(data, shown, base_dir=os.path.dirname(os.path.abspath(shown)))

    try:
        files = sorted(p for p in target.iterdir() if p.suffix.lower() == ".json" and not p.is_dir())
    except OSError as e:
        raise ConfigError(shown, FILE_KEY, f"cannot list the folder: {e.strerror or e}") from None
    if not files:
        raise ConfigError(shown, FILE_KEY, "no .json file in this folder")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for file in files:
        file_shown = os.path.join(shown, file.name)
        for key, value in _read_json_file(file, file_shown).items():
            if key in merged:
                raise ConfigError(file_shown, key, f"also defined in {origins[key]}")
            merged[key] = value
            origins[key] = file_shown
    return parse_config(merged, shown, base_dir=os.path.abspath(shown), origins=origins)


def default_config(base: Path | None = None) -> Config:
    """The embedded defaults used when there is no configuration file.

    Data lives under ``<base>/pacs-data`` (``base`` defaults to the current directory) in
    ``storage``, ``index``, ``tmp`` and ``worklists``; HTTP listens on localhost only, so
    authentication is off, as Orthanc does for a localhost-only server.
    """
    root = Path(os.path.abspath(base if base is not None else Path.cwd())) / "pacs-data"
    data = {
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "TemporaryDirectory": str(root / "tmp"),
        "RemoteAccessAllowed": False,
        "Worklists": {"Enable": True, "Directory": str(root / "worklists")},
    }
    config = parse_config(data, "(embedded defaults)", base_dir=root)
    return dataclasses.replace(config, source=None, embedded_defaults=True)
