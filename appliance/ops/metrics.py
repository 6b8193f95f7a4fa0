"""Prometheus text exposition format (version 0.0.4) of the status snapshot.

Pure: :func:`render` turns a :meth:`StatusBoard.snapshot` (and the HTTP request
statistics) into the text ``GET /metrics`` answers. Names follow Prometheus'
conventions: a ``pacs_`` prefix, base units (seconds, bytes), ``_total`` on
counters; label values are escaped as the format says (backslash, double quote,
line feed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from appliance.ops.disk import human_bytes
from appliance.ops.adoption_view import adoption_metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets (seconds): a QIDO answer is milliseconds, a study's
# WADO-RS download can take seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpStats:
    """Request counts and a latency histogram per service (event-loop only)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.histograms: dict[str, list[float]] = {}   # service -> [bucket counts..., sum, count]

    def observe(self, service: str, status: int, seconds: float) -> None:
        """Record one request of ``service`` answered ``status`` after ``seconds``."""
        key = (service, f"{status // 100}xx")
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.histograms.setdefault(service, [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                h[i] += 1
        h[-2] += seconds
        h[-1] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str] | None, float | int | None]]) -> None:
        samples = list(samples)
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | int | None,
            labels: dict[str, str] | None = None) -> None:
        if value is not None:
            self.family(name, kind, help_text, [(labels, value)])


def render(snap: dict, http: HttpStats | None = None) -> str:
    """The /metrics text for a status snapshot."""
    out = _Out()
    out.one("pacs_info", "gauge", "Version of the running pacs-appliance.", 1,
            {"version": snap["version"], "aet": snap["dicom_aet"]})
    out.one("pacs_start_time_seconds", "gauge", "Start time of the daemon (unix time).",
            snap["started"])
    out.one("pacs_uptime_seconds", "gauge", "Seconds since the daemon started.", snap["uptime"])
    counts = snap.get("counts") or {}
    for key, what in (("patients", "Patients"), ("studies", "Studies"), ("series", "Series"),
                      ("instances", "Instances")):
        out.one(f"pacs_{key}", "gauge", f"{what} in the index.", counts.get(key))
    out.one("pacs_stored_bytes", "gauge", "Bytes of the stored files.", counts.get("bytes"))
    outcomes = snap.get("outcomes") or {}
    out.family("pacs_instances_received_total", "counter",
               "Instances stored since start (new or already stored), by source.",
               [({"source": src}, by.get("Success", 0) + by.get("AlreadyStored", 0))
                for src, by in sorted(outcomes.items())])
    out.family("pacs_instances_failed_total", "counter",
               "Instances refused or failed since start, by source and reason.",
               [({"source": src, "reason": label}, n) for src, by in sorted(outcomes.items())
                for label, n in sorted(by.items()) if label not in ("Success", "AlreadyStored")])
    out.one("pacs_dicom_associations_open", "gauge", "DICOM associations open now.",
            snap.get("associations"))
    if "http_authentication" in snap:
        out.one("pacs_http_authentication_enabled", "gauge",
                "1 when HTTP Basic authentication is on, 0 when anyone reaching the port "
                "may read and change every study.", int(snap["http_authentication"]))
    if "worklist_items" in snap:
        out.one("pacs_worklist_items", "gauge", "Worklist items being served.",
                snap["worklist_items"])
    out.family("pacs_dicom_queries_total", "counter",
               "Query/Retrieve C-FIND queries since start, by model, level and outcome.",
               [({"model": q["model"], "level": q["level"], "outcome": q["outcome"]}, q["count"])
                for q in snap.get("queries") or ()])
    _retrieves(out, snap.get("retrieves"))
    _disk(out, snap.get("disk"))
    _outbound(out, snap.get("outbound"), snap["time"])
    for family in adoption_metrics(snap.get("adoption")):
        out.family(*family)
    _admission(out, snap.get("admission") or {})
    _backups(out, snap.get("backups") or {}, snap["time"])
    last_error = snap.get("last_error")
    out.one("pacs_log_errors_total", "counter", "ERROR and CRITICAL log lines since start.",
            snap.get("errors_since_start", 0))
    if last_error:
        out.one("pacs_last_error_time_seconds", "gauge", "Time of the last ERROR log line.",
                last_error["time"])
    if http is not None:
        _http(out, http)
    return "\n".join(out.lines) + "\n"


def _outbound(out: _Out, destinations: list[dict] | None, now: float) -> None:
    """The send queue per destination (appliance.outbound)."""
    if destinations is None:
        return

    def family(name: str, kind: str, help_text: str, value) -> None:
        out.family(name, kind, help_text,
                   [({"destination": d["destination"]}, value(d)) for d in destinations])

    family("pacs_outbound_queue_depth", "gauge", "Instances and reports waiting to be sent.",
           lambda d: d["pending"])
    family("pacs_outbound_failing", "gauge", "Queued items whose last attempt failed.",
           lambda d: d["failing"])
    family("pacs_outbound_oldest_age_seconds", "gauge", "Age of the oldest queued item (0: none).",
           lambda d: max(0.0, now - d["oldest"]) if d["oldest"] else 0)
    family("pacs_outbound_sent_total", "counter", "Instances delivered since start.",
           lambda d: d["sent_since_start"])
    family("pacs_outbound_sent_bytes_total", "counter", "Bytes delivered since start.",
           lambda d: d["bytes_since_start"])
    family("pacs_outbound_failures_total", "counter", "Failed attempts (per item) since start.",
           lambda d: d["failed_attempts_since_start"])


def outbound_line(d: dict, now: float) -> str:
    """One destination of the send queue in words (``status``, the status page)."""
    text = (f"{d['pending']} queued, {d['sent_since_start']} sent since start "
            f"({human_bytes(d['bytes_since_start'])})")
    if d["oldest"]:
        text += f", oldest {max(0.0, now - d['oldest']):.0f} s"
    if d["failing"]:
        text += f", {d['failing']} FAILING: {d['last_error']}"
    return text


_RETRIEVE_METRICS = (
    ("pacs_retrieve_requests_total", "requests", "C-MOVE/C-GET requests answered since start"),
    ("pacs_retrieved_instances_total", "instances",
     "Instances sent by C-MOVE/C-GET sub-operations since start"),
    ("pacs_retrieved_bytes_total", "bytes", "Bytes sent by C-MOVE/C-GET sub-operations since start"),
    ("pacs_retrieve_failed_total", "failed", "Failed C-MOVE/C-GET sub-operations since start"),
)


def _retrieves(out: _Out, totals: dict | None) -> None:
    """C-MOVE and C-GET since start (appliance.dicom.retrieve.RetrieveDimse.stats)."""
    if totals is None:
        return
    for metric, name, what in _RETRIEVE_METRICS:
        out.family(metric, "counter", what + ", by operation.",
                   [({"operation": op}, totals.get(f"{op}_{name}", 0)) for op in ("move", "get")])


def _disk(out: _Out, disk: dict | None) -> None:
    if not disk:
        return
    fss = disk["filesystems"]

    def labels(fs: dict) -> dict[str, str]:
        return {"path": fs["path"], "roles": "+".join(fs["roles"])}

    out.family("pacs_disk_total_bytes", "gauge", "Size of each filesystem the daemon uses.",
               [(labels(fs), fs["total"]) for fs in fss])
    out.family("pacs_disk_free_bytes", "gauge", "Free bytes (for unprivileged use) on each filesystem.",
               [(labels(fs), fs["free"]) for fs in fss])
    out.family("pacs_disk_used_ratio", "gauge", "Used fraction of each filesystem (0-1).",
               [(labels(fs), round(fs["percent"] / 100, 4)) for fs in fss])
    out.family("pacs_disk_level", "gauge",
               "0 below DiskMonitor.WarnPercent, 1 above it, 2 above CriticalPercent.",
               [(labels(fs), {"OK": 0, "WARNING": 1, "CRITICAL": 2}[fs["level"]]) for fs in fss])
    out.family("pacs_disk_directory_missing", "gauge",
               "1 for a configured directory that does not exist (unmounted disk?).",
               [({"role": m["role"], "path": m["path"]}, 1) for m in disk["missing"]])
    out.one("pacs_disk_minimum_free_bytes", "gauge", "DiskMonitor.MinimumFreeMB in bytes.",
            disk["minimum_free"])
    forecast = disk["forecast"]
    out.one("pacs_storage_growth_bytes_per_day", "gauge",
            "Ingest rate over the last days (bytes per day).", forecast["bytes_per_day"])
    out.one("pacs_storage_days_until_full", "gauge",
            "Days until the storage reaches MinimumFreeMB or MaximumStorageSize at that rate.",
            forecast["days_left"])


def _admission(out: _Out, adm: dict) -> None:
    if not adm:
        return
    out.one("pacs_storage_accepting", "gauge", "1 while new objects are accepted (enough free space).",
            1 if adm["accepting"] else 0)
    out.one("pacs_storage_refused_total", "counter",
            "Objects refused for lack of space or by a quota since start.", adm["refused"])
    out.one("pacs_recycled_patients_total", "counter",
            "Patients deleted by MaximumStorageMode Recycle since start.", adm["recycled_patients"])
    out.one("pacs_recycled_bytes_total", "counter",
            "Bytes freed by recycling since start.", adm["recycled_bytes"])
    if adm["maximum_storage_mb"]:
        out.one("pacs_quota_storage_bytes", "gauge", "MaximumStorageSize in bytes.",
                adm["maximum_storage_mb"] * (1 << 20))
    if adm["maximum_patient_count"]:
        out.one("pacs_quota_patients", "gauge", "MaximumPatientCount.", adm["maximum_patient_count"])


def _backups(out: _Out, b: dict, now: float) -> None:
    last = b.get("last_attempt")
    success = b.get("last_success")
    out.one("pacs_backup_running", "gauge", "1 while a scheduled backup runs.",
            1 if b.get("running_since") else 0)
    if last:
        out.one("pacs_backup_last_result", "gauge", "1 if the last backup attempt succeeded, else 0.",
                1 if last.get("ok") else 0)
        out.one("pacs_backup_last_attempt_time_seconds", "gauge", "Time of the last backup attempt.",
                last.get("time"))
        if last.get("finished") and last.get("time"):
            out.one("pacs_backup_last_duration_seconds", "gauge",
                    "Duration of the last backup attempt.", last["finished"] - last["time"])
    if success:
        out.one("pacs_backup_last_success_time_seconds", "gauge", "Time of the last good backup.",
                success.get("time"))
        out.one("pacs_backup_last_success_age_seconds", "gauge", "Age of the last good backup.",
                now - success["time"])
    if b.get("next"):
        out.one("pacs_backup_next_time_seconds", "gauge", "When the next scheduled backup is due.",
                b["next"])


def _http(out: _Out, http: HttpStats) -> None:
    out.family("pacs_http_requests_total", "counter", "HTTP requests answered, by service and status class.",
               [({"service": s, "code": c}, n) for (s, c), n in sorted(http.requests.items())])
    if not http.histograms:
        return
    name = "pacs_http_request_duration_seconds"
    out.lines.append(f"# HELP {name} Time to answer HTTP requests, by service.")
    out.lines.append(f"# TYPE {name} histogram")
    for service, h in sorted(http.histograms.items()):
        for bound, n in zip(BUCKETS, h):
            out.lines.append(f'{name}_bucket{_labels({"service": service, "le": _number(bound)})} {_number(n)}')
        out.lines.append(f'{name}_bucket{_labels({"service": service, "le": "+Inf"})} {_number(h[-1])}')
        out.lines.append(f'{name}_sum{_labels({"service": service})} {_number(h[-2])}')
        out.lines.append(f'{name}_count{_labels({"service": service})} {_number(h[-1])}')


def queries_summary(snap: dict) -> str | None:
    """One line on the Q/R C-FIND queries answered since start (None: no Q/R SCP), for
    ``pacs-appliance status`` and the status page."""
    queries = snap.get("queries")
    if queries is None:
        return None
    by_outcome: dict[str, int] = {}
    for q in queries:
        by_outcome[q["outcome"]] = by_outcome.get(q["outcome"], 0) + q["count"]
    total = sum(by_outcome.values())
    detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(by_outcome.items()))
    return f"{total} C-FIND" + (f" ({detail})" if detail else "")
