"""Scan reports: text, JSON, Markdown, SARIF 2.1.0 and JUnit XML, all from the same records.

The JSON report is the reference (docs/formats.md, "Scan report"); the others say the same
verdicts where reviewers read them: a PR comment or job summary (Markdown), GitHub code
scanning (SARIF: one result per suspected or unscannable model), GitLab and Jenkins test
reports (JUnit: one test case per model).
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

from audit import __version__
from audit.errors import AuditError
from audit.report import json_default

SCAN_SCHEMA_VERSION = 1
FORMATS = ("text", "json", "markdown", "sarif", "junit")
#: report formats by file extension, for -o files
EXTENSIONS = {".json": "json", ".sarif": "sarif", ".md": "markdown", ".markdown": "markdown",
              ".xml": "junit", ".txt": "text"}
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def summary(records: list[dict], exit_code: int) -> dict:
    counts = {v: 0 for v in ("clean", "suspected", "ownership-lost", "error")}
    for r in records:
        counts[r["verdict"]] += 1
    return {"models": len(records), **counts, "failed": sum(r["fails"] for r in records),
            "exit_code": exit_code}


def to_json(records: list[dict], meta: dict) -> str:
    doc = {"schema_version": SCAN_SCHEMA_VERSION, "tool": f"audit {__version__}", "command": "scan",
           **meta, "results": records}
    return json.dumps(doc, indent=2, default=json_default) + "\n"


def _flag_text(r: dict) -> str:
    if r["verdict"] == "error":
        return r["error"] or "error"
    return "; ".join(r["reasons"]) or "nothing suspected"


def to_text(records: list[dict], meta: dict) -> str:
    width = max([len(r["path"]) for r in records] + [5])
    lines = [f"{'model':<{width}}  {'verdict':<14}  {'gate':<4}  details"]
    for r in records:
        gate = "FAIL" if r["fails"] else "ok"
        lines.append(f"{r['path']:<{width}}  {r['verdict']:<14}  {gate:<4}  {_flag_text(r)}")
    s = meta["summary"]
    lines.append(f"{s['models']} model(s): {s['clean']} clean, {s['suspected']} suspected, "
                 f"{s['ownership-lost']} ownership lost, {s['error']} error(s); exit {s['exit_code']}")
    return "\n".join(lines) + "\n"


def to_markdown(records: list[dict], meta: dict) -> str:
    s = meta["summary"]
    icon = {"clean": "✅", "suspected": "🚩", "ownership-lost": "⚠️", "error": "❌"}
    out = ["## audit scan", "",
           f"**{s['models']} model(s)**: {s['clean']} clean, {s['suspected']} suspected, "
           f"{s['ownership-lost']} ownership lost, {s['error']} error(s). "
           f"Gate: **{'failed' if s['exit_code'] in (1, 2) else 'passed'}** (exit {s['exit_code']}).", "",
           "| Model | Verdict | Gate | Details |", "|---|---|---|---|"]
    for r in records:
        details = _flag_text(r).replace("|", "\\|")
        pics = [f"[trigger {k}]({p})" for k, p in (r.get("pictures") or {}).items()]
        if pics:
            details += " " + " ".join(pics)
        out.append(f"| `{r['path']}` | {icon[r['verdict']]} {r['verdict']} | "
                   f"{'fail' if r['fails'] else 'ok'} | {details} |")
    return "\n".join(out) + "\n"


def to_sarif(records: list[dict], meta: dict) -> str:
    rules = [
        {"id": "audit/backdoor-suspected", "name": "BackdoorSuspected",
         "shortDescription": {"text": "Neural Cleanse found an anomalously small trigger"},
         "defaultConfiguration": {"level": "error"}},
        {"id": "audit/ownership-lost", "name": "OwnershipLost",
         "shortDescription": {"text": "The watermark no longer demonstrates ownership"},
         "defaultConfiguration": {"level": "error"}},
        {"id": "audit/scan-error", "name": "ScanError",
         "shortDescription": {"text": "The model could not be scanned"},
         "defaultConfiguration": {"level": "warning"}},
    ]
    rule_of = {"suspected": 0, "ownership-lost": 1, "error": 2}
    results = []
    for r in records:
        if r["verdict"] not in rule_of:
            continue
        i = rule_of[r["verdict"]]
        results.append({
            "ruleId": rules[i]["id"], "ruleIndex": i,
            "level": "error" if r["fails"] else "note",
            "message": {"text": f"{r['path']}: {_flag_text(r)}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(r["path"])}}}],
            "partialFingerprints": {"modelSha256": r["sha256"] or ""},
            "properties": {"verdict": r["verdict"], "flagged": (r["detect"] or {}).get("flagged", [])},
        })
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "audit", "version": __version__, "rules": rules}},
        "results": results,
        "properties": {"summary": meta["summary"]},
    }]}
    return json.dumps(doc, indent=2, default=json_default) + "\n"


def _uri(path: str) -> str:
    """A model path as a SARIF artifact URI: forward slashes, relative paths as given."""
    uri = path.replace("\\", "/")
    return uri[2:] if uri.startswith("./") else uri


def to_junit(records: list[dict], meta: dict) -> str:
    s = meta["summary"]
    errors = sum(r["verdict"] == "error" for r in records)
    failures = sum(r["verdict"] in ("suspected", "ownership-lost") for r in records)
    suite = ET.Element("testsuite", name="audit scan", tests=str(len(records)),
                       failures=str(failures), errors=str(errors), skipped="0",
                       time=f"{sum(r['seconds'].get('total', 0) for r in records):.3f}")
    for r in records:
        case = ET.SubElement(suite, "testcase", classname="audit.scan", name=r["path"],
                             time=f"{r['seconds'].get('total', 0):.3f}")
        if r["verdict"] == "error":
            ET.SubElement(case, "error", message=r["error"] or "error", type="scan-error")
        elif r["verdict"] != "clean":
            ET.SubElement(case, "failure", message=_flag_text(r), type=r["verdict"])
    root = ET.Element("testsuites", name="audit", tests=str(s["models"]), failures=str(failures),
                      errors=str(errors))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


WRITERS = {"text": to_text, "json": to_json, "markdown": to_markdown, "sarif": to_sarif,
           "junit": to_junit}


def render(fmt: str, records: list[dict], meta: dict) -> str:
    return WRITERS[fmt](records, meta)


def output_format(path: str, fmt: str | None, several: bool) -> str:
    """The format an -o file gets: --format for a single file, else its extension (text when
    it names none)."""
    if fmt and not several:
        return fmt
    ext = EXTENSIONS.get(Path(path).suffix.lower())
    if ext is None:
        if several:
            raise AuditError(f"-o {path}: with several outputs each needs an extension that names "
                             f"its format ({', '.join(EXTENSIONS)})")
        return "text"
    return ext
