"""``pacs-appliance worklist {add,list,remove,import}``: author the worklist folder.

Each command finds the folder in the configuration (``Worklists.Database`` or ``Directory``
of ``--config``, else the embedded defaults' ``./pacs-data/worklists``) and writes there
atomically; a running daemon picks the change up by itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

# CLI option -> DICOM keyword (the CSV import uses the keywords as column names).
ADD_OPTIONS = (
    ("--patient-name", "PatientName", 'e.g. "DOE^JANE" (family^given)'),
    ("--patient-id", "PatientID", None),
    ("--birth-date", "PatientBirthDate", "YYYYMMDD"),
    ("--sex", "PatientSex", "M, F or O"),
    ("--accession", "AccessionNumber", None),
    ("--procedure", "RequestedProcedureDescription", "requested procedure description"),
    ("--procedure-id", "RequestedProcedureID", None),
    ("--referring-physician", "ReferringPhysicianName", None),
    ("--study-uid", "StudyInstanceUID", "default: a new UID"),
    ("--date", "ScheduledProcedureStepStartDate", "scheduled date YYYYMMDD (default: today)"),
    ("--time", "ScheduledProcedureStepStartTime", "scheduled time HHMM[SS]"),
    ("--modality", "Modality", "default: US"),
    ("--station-aet", "ScheduledStationAETitle", "the scanner's AE title"),
    ("--station-name", "ScheduledStationName", None),
    ("--physician", "ScheduledPerformingPhysicianName", "scheduled performing physician"),
    ("--step-id", "ScheduledProcedureStepID", None),
    ("--step-description", "ScheduledProcedureStepDescription", None),
    ("--charset", "SpecificCharacterSet", "default: ISO_IR 192 (UTF-8)"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``worklist`` command group to the CLI's sub-parsers."""
    wl = sub.add_parser("worklist", help="add, list, remove or import worklist items (.wl files)")
    cmds = wl.add_subparsers(dest="worklist_command", metavar="ACTION", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH",
                       help="the daemon's config: its Worklists.Database is the folder")
        return p

    add = with_config(cmds.add_parser("add", help="write one worklist item"))
    for option, keyword, help_text in ADD_OPTIONS:
        add.add_argument(option, dest=keyword, metavar="VALUE", help=help_text or keyword)
    add.add_argument("--id", metavar="ID", help="the item's ID (file name without .wl); default: a UUID")
    add.add_argument("--force", action="store_true",
                     help="skip the check for a Modality and a scheduled date")
    listing = with_config(cmds.add_parser("list", help="list the items in the folder"))
    listing.add_argument("--json", action="store_true", help="print the items as JSON (Orthanc's format)")
    remove = with_config(cmds.add_parser("remove", help="delete items by ID"))
    remove.add_argument("ids", nargs="+", metavar="ID")
    imp = with_config(cmds.add_parser(
        "import", help="write one item per row of a CSV file",
        description="The first row names the columns with DICOM keywords (PatientName, PatientID, "
                    "PatientBirthDate, PatientSex, AccessionNumber, RequestedProcedureDescription, "
                    "RequestedProcedureID, ScheduledProcedureStepStartDate, "
                    "ScheduledProcedureStepStartTime, Modality, ScheduledStationAETitle, "
                    "ScheduledPerformingPhysicianName, ...); an optional ID column names the "
                    "items (importing again replaces them). Every row is checked before any "
                    "file is written."))
    imp.add_argument("csv", metavar="FILE.csv")
    imp.add_argument("--force", action="store_true",
                     help="skip the check for a Modality and a scheduled date")


def run(args: argparse.Namespace, config) -> int:
    """Run one ``worklist`` command; returns the exit code."""
    folder = config.worklists.database
    if folder is None:
        where = config.source or "the embedded defaults"
        print(f"pacs-appliance: {where}: Worklists.Database is not set: no worklist folder",
              file=sys.stderr)
        return EXIT_CONFIG
    action = {"add": _add, "list": _list, "remove": _remove, "import": _import}[args.worklist_command]
    return action(args, config, Path(folder))


def _add(args: argparse.Namespace, config, folder: Path) -> int:
    from appliance.worklist import authoring

    fields = {keyword: getattr(args, keyword) for _, keyword, _ in ADD_OPTIONS}
    fields["ScheduledProcedureStepStartDate"] = (fields["ScheduledProcedureStepStartDate"]
                                                 or datetime.date.today().strftime("%Y%m%d"))
    fields["Modality"] = fields["Modality"] or "US"
    try:
        ds = authoring.dataset_from_tags(
            authoring.tags_from_flat(fields), force=args.force,
            set_study_instance_uid=config.worklists.set_study_instance_uid_if_missing)
        worklist_id = authoring.write_item(folder, ds, args.id)
    except authoring.AuthoringError as e:
        print(f"pacs-appliance: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:
        print(f"pacs-appliance: {folder}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    print(worklist_id)
    return EXIT_OK


def _list(args: argparse.Namespace, config, folder: Path) -> int:
    from appliance.worklist import authoring

    skipped: list[tuple[str, str]] = []
    items = authoring.list_items(folder, skipped)
    for name, why in skipped:
        # On stderr: --json output stays the served items only.
        print(f"pacs-appliance: worklist: {folder / name} skipped (not served): {why}",
              file=sys.stderr)
    if args.json:
        print(json.dumps([{"ID": i, "Tags": authoring.tags_json(a)} for i, a in items],
                         ensure_ascii=False, indent=2))
        return EXIT_OK
    columns = ("ID", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality",
               "ScheduledStationAETitle", "AccessionNumber", "PatientID", "PatientName")
    titles = ("ID", "DATE", "TIME", "MOD", "STATION", "ACCESSION", "PATIENT ID", "PATIENT NAME")
    rows = [titles] + [tuple(authoring.describe(i, a)[c] for c in columns) for i, a in items]
    widths = [max(len(r[n]) for r in rows) for n in range(len(columns) - 1)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    if skipped:
        print(f"{len(items)} item(s); {len(skipped)} file(s) skipped (listed on stderr)")
    return EXIT_OK


def _remove(args: argparse.Namespace, config, folder: Path) -> int:
    from appliance.worklist import authoring

    status = EXIT_OK
    for worklist_id in args.ids:
        try:
            removed = authoring.delete_item(folder, worklist_id)
        except authoring.AuthoringError as e:
            removed, why = False, str(e)
        else:
            why = "no such worklist item"
        if not removed:
            print(f"pacs-appliance: {worklist_id}: {why}", file=sys.stderr)
            status = EXIT_FAILURE
    return status


def _import(args: argparse.Namespace, config, folder: Path) -> int:
    from appliance.worklist import authoring

    try:
        text = Path(args.csv).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        print(f"pacs-appliance: {args.csv}: cannot read: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        rows = authoring.read_csv(text, extra_columns=("ID",))
    except authoring.AuthoringError as e:
        print(f"pacs-appliance: {args.csv}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    ready, problems = [], []
    for line, row in rows:
        worklist_id = row.pop("ID", "").strip() or None
        try:
            if worklist_id:
                authoring.check_id(worklist_id)
            ds = authoring.dataset_from_tags(
                authoring.tags_from_flat(row), force=args.force,
                set_study_instance_uid=config.worklists.set_study_instance_uid_if_missing)
            ready.append((ds, worklist_id))
        except authoring.AuthoringError as e:
            problems.append(f"{args.csv}: line {line}: {e}")
    if problems:  # all or nothing: a clinic re-runs the import once the file is fixed
        for problem in problems:
            print(f"pacs-appliance: {problem}", file=sys.stderr)
        print(f"pacs-appliance: nothing written ({len(problems)} bad row(s))", file=sys.stderr)
        return EXIT_FAILURE
    for ds, worklist_id in ready:
        print(authoring.write_item(folder, ds, worklist_id))
    print(f"{len(ready)} worklist item(s) written to {folder}", file=sys.stderr)
    return EXIT_OK
