"""The compliance report of one model version: everything an auditor asks for, in one place.

``mlops govern report MODEL[@alias|version]`` writes ``<model>-v<version>-compliance.html``
(with plots) and ``.md`` (the same tables) from what the registry and the monitoring store
already hold — nothing is re-measured:

1. the model card the package was registered with;
2. full lineage: dataset version → its snapshot and manifest → the lake it came from, code
   commit, pipeline run, architecture, hyperparameters and search trials, parent version, and
   for a retrained version the governance trigger that started it;
3. test results and the bias check (per-class precision, recall, F1; recall gap; gate);
4. the application test (``<registry>/<model>/apptests/<version>/``, where the
   application-test step records it, or a QA report file given with ``--qa-report``);
5. every release decision about the version with its canary measurements;
6. approvals and release holds;
7. the monitoring history of the version since its release (verdicts, with trend plots);
8. alerts and governance actions about the version, and the audit trail.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import re
from pathlib import Path

from components.common.htmldoc import markdown_html, page
from components.common.registry import ModelRegistry, RegistryError
from components.common.storage import StorageError
from components.govern.audit import audit_view
from components.govern.core import history
from components.govern.trace import TraceError, sample_request_ids, trace_request

logger = logging.getLogger(__name__)


def _fmt(v, digits: int = 4) -> str:
    """A cell as text: a mapping as ``key=value`` pairs, a list comma-separated (never JSON)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x, digits)}" for k, x in sorted(v.items(), key=str)) or "–"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x, digits) for x in v) or "–"
    return str(v)


def _cell_html(v) -> str:
    """A cell as HTML: a mapping as a small table of its keys and values, nested as deep as
    it goes, so nothing is cut and no JSON is shown."""
    if isinstance(v, dict) and v:
        return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell_html(x)}</td>"
                                   "</tr>" for k, x in sorted(v.items(), key=str)) + "</table>"
    if isinstance(v, list | tuple) and any(isinstance(x, dict) for x in v):
        return "".join(_cell_html(x) for x in v)
    return html.escape(_fmt(v))


def _table(headers: list[str], rows: list[list]) -> tuple[str, str]:
    """(Markdown, HTML) of a table."""
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
           for r in rows]
    h = ["<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in headers) + "</tr>"]
    h += ["<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(md), "\n".join(h) + "</table>"


class _Doc:
    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2):
        self.md += ["", "#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str):
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, headers, rows, empty: str):
        """A table, or ``empty`` (what was not recorded, by name) where it has no row."""
        if not rows:
            self.para(empty)
            return
        md, h = _table(headers, rows)
        self.md += [md, ""]
        self.html.append(h)

    def markdown(self, text: str, shift: int):
        """A Markdown document (the model card) inside a section, rendered for the page."""
        self.md += [re.sub(r"^(#{1,6})(?=\s)", lambda m: "#" * min(6, len(m.group(1)) + shift),
                           line) for line in text.rstrip().splitlines()] + [""]
        self.html.append(f"<div class='card'>{markdown_html(text, shift=shift)}</div>")

    def figure(self, png: bytes | None, name: str, folder: Path, caption: str):
        if png is None:
            return
        (folder / name).write_bytes(png)
        self.md += [f"![{caption}]({name})", ""]
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;'
                         f'base64,{base64.b64encode(png).decode()}"><figcaption>'
                         f"{html.escape(caption)}</figcaption></figure>")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _monitoring_plot(verdicts) -> bytes | None:
    if not verdicts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"drift.embedding p-value": ("drift.embedding", "p_val"),
              "accuracy (labelled)": ("performance.accuracy", None),
              "accuracy (estimated)": ("performance.estimated_accuracy", None),
              "p95 latency ms": ("telemetry.p95_latency", None)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    x = list(range(len(verdicts)))
    labels = [v.window_end[5:16].replace("T", " ") for v in verdicts]

    def values(name, key):
        out = []
        for v in verdicts:
            c = v.check(name)
            val = None if c is None else (c.extra.get(key) if key else c.value)
            if key and val is None and c is not None:
                val = c.value
            out.append(float(val) if isinstance(val, int | float) else float("nan"))
        return out

    ax = axes[0]
    pvals = [max(v, 1e-6) if v == v else v for v in values(*series["drift.embedding p-value"])]
    ax.plot(x, pvals, "o-", label="embedding drift p")
    c = verdicts[-1].check("drift.embedding")
    if c is not None and c.threshold is not None:
        ax.axhline(c.threshold, color="red", ls="--", lw=1, label="alarm below")
    ax.set_yscale("log")
    ax.set_title("data drift")
    ax.legend(fontsize=7)
    ax = axes[1]
    for key in ("accuracy (labelled)", "accuracy (estimated)"):
        ax.plot(x, values(*series[key]), "o-", label=key)
    c = verdicts[-1].check("performance.accuracy")
    if c is not None and c.threshold is not None:
        ax.axhline(c.threshold, color="red", ls="--", lw=1, label="floor")
    ax.set_ylim(0, 1.02)
    ax.set_title("model performance")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(x, values(*series["p95 latency ms"]), "o-")
    ax.set_title("p95 latency (ms)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    fig.suptitle("Monitoring windows since release", y=1.04)
    return _png(fig)


def _release_plot(releases) -> bytes | None:
    steps = [(f"#{r['seq']} {s['percent']}%", s) for r in releases for s in r.get("steps", [])
             if isinstance(s.get("canary"), dict)]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3))
    names = [n for n, _ in steps]
    x = range(len(steps))
    for role, off in (("canary", -0.2), ("stable", 0.2)):
        p95 = [((s.get(role) or {}).get("p95_ms") or 0) for _, s in steps]
        acc = [((s.get(role) or {}).get("accuracy") or 0) for _, s in steps]
        a1.bar([i + off for i in x], p95, width=0.4, label=role)
        a2.bar([i + off for i in x], acc, width=0.4, label=role)
    a1.set_title("p95 latency per canary step (ms)")
    a2.set_title("probe accuracy per canary step")
    a2.set_ylim(0, 1.05)
    for a in (a1, a2):
        a.set_xticks(list(x))
        a.set_xticklabels(names, fontsize=7)
        a.legend(fontsize=7)
    return _png(fig)


def _reference_text(registry, model: str, version: int, lin: dict) -> str | None:
    """Where the version's monitoring reference is and which images it holds."""
    path = lin.get("monitoring_reference")
    if not path:
        return None
    try:
        sample = json.loads(registry.read_file(model, version, path)).get("sample") or {}
    except (RegistryError, StorageError, ValueError, AttributeError) as exc:
        return f"{path} (not readable: {exc})"
    return f"{path}: {sample.get('n')} images, {sample.get('from')}"


def _trace_rows(model: str, version: int, store_uri: str, registry_uri: str) -> list[list]:
    """One row per instance of a sample of the version's requests (`mlops trace`)."""
    rows = []
    for rid in sample_request_ids(store_uri, model, version):
        try:
            result = trace_request(rid, model, store_uri, registry_uri)
        except TraceError as exc:
            logger.warning("Cannot trace %s: %s", rid, exc)
            continue
        for item in result["instances"]:
            lin, label = item["lineage"], item.get("label")
            rows.append([
                f"{rid}/{item['index']}",
                _dt.datetime.fromtimestamp(item["time"], _dt.UTC).isoformat()[:19]
                if isinstance(item.get("time"), int | float) else item.get("time"),
                item.get("answer"),
                f"{label['label']} by {label.get('by')} ("
                f"{'correct' if label['correct'] else 'wrong'})" if label else None,
                item.get("image") or "not sampled",
                f"{lin.get('dataset_version')} from {lin.get('dataset_source')}",
                lin.get("code_version"), lin.get("pipeline_run"),
                "; ".join(f"{v['run_id']} {v['status']}" + (
                    f" ({', '.join(a['summary'] for a in v['alerts'])})" if v["alerts"] else "")
                    for v in item["verdicts"]) or "none yet"])
    return rows


def build_report(model: str, ref: str | int, registry_uri: str, store_uri: str,
                 figures: Path, qa_report: str = "") -> tuple[str, str, dict]:
    """(HTML, Markdown, facts) of the compliance report; plot PNGs go to ``figures``."""
    registry = ModelRegistry(registry_uri)
    mv = registry.get(model, ref)
    lin, version = mv.lineage, mv.version
    aliases = {a: v for a, v in registry.aliases(model).items() if v == version}
    releases = [r for r in registry.releases(model)
                if r.get("version") == version or r.get("previous_version") == version]
    first_live = next((r["at"] for r in releases if r.get("version") == version
                       and r.get("decision") in ("deployed", "promoted")), None)
    verdicts = [v for _, v in history(store_uri, model) if str(v.model_version) == str(version)
                and (first_live is None or v.window_end >= first_live[:19])]
    audit = [e for e in audit_view(store_uri, model, registry_uri)
             if first_live is None or str(e["at"]) >= first_live]
    doc = _Doc()
    doc.heading(f"Compliance report: {model} version {version}", 1)
    doc.para(f"Registered {lin.get('registered_at')} by {lin.get('registered_by')}; aliases "
             f"now pointing at it: {', '.join(aliases) or 'none'}; in production since "
             f"{first_live or 'never'}. Package: {mv.uri}.")

    doc.heading("1. Model card")
    card = ""
    for name in ("MODEL_CARD.md", "model_card.md"):
        if name in mv.files:
            card = registry.read_file(model, version, name).decode()
            break
    if card:
        doc.markdown(card, shift=1)
    else:
        doc.para("The package has no model card.")

    doc.heading("2. Lineage")
    hp = lin.get("hyperparameters") or {}
    rows = [["dataset version", lin.get("dataset_version")],
            ["dataset snapshot", lin.get("dataset_snapshot")],
            ["dataset manifest", lin.get("dataset_manifest")],
            ["data lake (source)", lin.get("dataset_source")],
            ["code version", lin.get("code_version")],
            ["pipeline run", lin.get("pipeline_run")],
            ["architecture", lin.get("arch")],
            ["hyperparameters", hp or None],
            ["best epoch / validation accuracy",
             f"{(lin.get('training') or {}).get('best_epoch')} / "
             f"{_fmt((lin.get('training') or {}).get('val_accuracy'))}"],
            ["parent version", lin.get("parent_version")],
            ["monitoring reference", _reference_text(registry, model, version, lin)]]
    data = lin.get("production_data") or {}
    if data:
        counts = data.get("counts") or {}
        rows.append(["production data (export)",
                     f"export {data.get('export_id') or 'none'}: {counts.get('exported', 0)} "
                     f"labelled captures new to version {data.get('production_version')} "
                     f"(dataset {data.get('production_dataset')}), under "
                     f"{', '.join(data.get('lake_prefixes') or []) or '-'}; provenance "
                     f"{data.get('manifest_uri') or '-'}"])
    for key in ("trigger", "export", "warm_start"):
        if lin.get(key):
            rows.append([key.replace("_", " "), lin[key]])
    doc.table(["what", "value"], rows, "No lineage recorded.")
    trials = lin.get("search_trials") or []
    if trials:
        doc.para(f"Hyperparameter search: {len(trials)} trials.")
        doc.table(["trial", "parameters", "validation accuracy"],
                  [[t.get("trial", i), t.get("hparams") or t.get("params") or {},
                    t.get("val_accuracy") or t.get("score")] for i, t in enumerate(trials)],
                  "No trial recorded.")

    doc.heading("3. Test results and bias check")
    m = lin.get("metrics") or {}
    doc.table(["metric", "value"], [["accuracy", m.get("accuracy")],
                                    ["macro F1", (m.get("macro") or {}).get("f1")
                                     if isinstance(m.get("macro"), dict) else m.get("macro_f1")],
                                    ["ROC AUC", m.get("roc_auc")],
                                    ["recall gap (bias)", m.get("recall_gap")],
                                    ["gate: blessed", (lin.get("gate") or {}).get("blessed")],
                                    ["champion compared with",
                                     (lin.get("gate") or {}).get("champion_version")]],
              "No test result recorded.")
    per_class = m.get("per_class") or {}
    doc.table(["class", "precision", "recall", "F1", "support"],
              [[c, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support")]
               for c, v in sorted(per_class.items())],
              "No per-class results recorded (the bias check needs them).")

    doc.heading("4. Application test")
    tests = registry.apptests(model, version)
    if qa_report:
        tests.append(json.loads(Path(qa_report).read_text()))
    if tests:
        doc.table(["passed", "live accuracy", "offline accuracy", "error rate", "p95 ms",
                   "images", "reasons"],
                  [[t.get("passed"), t.get("live_accuracy"), t.get("offline_accuracy"),
                    (t.get("load") or {}).get("error_rate"), (t.get("load") or {}).get("p95_ms"),
                    t.get("images"), "; ".join(t.get("reasons") or [])] for t in tests], "")
    else:
        doc.para("Not recorded in the registry: the application test's QA report is an "
                 f"artifact of pipeline run {lin.get('pipeline_run')} (pass it with "
                 "--qa-report).")

    doc.heading("5. Release decisions")
    doc.table(["#", "at", "version", "decision", "previous", "why"],
              [[r["seq"], r["at"][:19], r["version"], r["decision"], r.get("previous_version"),
                "; ".join(r.get("reasons") or []) or r.get("reason", "")] for r in releases],
              "No release decision recorded: the version was never deployed.")
    step_rows = []
    for r in releases:
        for s in r.get("steps", []):
            c, st = s.get("canary") or {}, s.get("stable") or {}
            step_rows.append([r["seq"], f"{s.get('percent')}%", c.get("errors"),
                              c.get("p95_ms"), st.get("p95_ms"), c.get("accuracy"),
                              st.get("accuracy"), "pass" if s.get("passed") else "FAIL"])
    if step_rows:
        doc.table(["release", "traffic", "canary errors", "canary p95 ms", "stable p95 ms",
                   "canary acc", "stable acc", "result"], step_rows, "")
    doc.figure(_release_plot(releases), f"{model}-v{version}-releases.png", figures,
               "Canary measurements")

    doc.heading("6. Approvals and holds")
    approval = registry.approval(model, version)
    doc.table(["approved by", "at", "note"],
              [[approval["by"], approval["at"][:19], approval.get("note")]] if approval else [],
              "No approval recorded.")
    doc.table(["hold record", "at", "by", "reason"],
              [[h["action"], h["at"][:19], h["by"], h["reason"]]
               for h in registry.hold_records(model)], "No release hold recorded.")

    doc.heading("7. Monitoring since release")
    doc.table(["window end", "verdict", "status", "requests", "labelled", "checks not ok"],
              [[v.window_end[:19], v.run_id, v.status, v.n_requests, v.n_labelled,
                ", ".join(f"{c.key}={_fmt(c.value, 3)} ({c.status})" for c in v.checks
                          if c.status not in ("ok", "unknown"))] for v in verdicts],
              "No monitoring window judged this version since its release.")
    doc.figure(_monitoring_plot(verdicts), f"{model}-v{version}-monitoring.png", figures,
               "Drift, accuracy and latency per monitoring window")

    doc.heading("8. Alerts and actions")
    doc.table(["at", "kind", "actor", "subject", "why", "evidence"],
              [[str(e["at"])[:19], e["kind"], e.get("actor"), e.get("subject"),
                e.get("reason"), e.get("evidence")] for e in audit],
              "No alert or governance action about this version.")

    doc.heading("9. Where a sample of answers came from")
    traced = _trace_rows(model, version, store_uri, registry_uri)
    doc.para(f"{len(traced)} requests this version answered, traced through the stores "
             "(`mlops trace REQUEST_ID` shows one in full).")
    doc.table(["request", "at", "answer", "later label", "captured image", "dataset",
               "code", "pipeline run", "monitoring windows (alerts)"], traced,
              "No captured request of this version (production captures its requests "
              "into the monitoring store; `mlops deploy stop` flushes them).")
    facts = {"model": model, "version": version, "releases": len(releases),
             "verdicts": len(verdicts), "audit_entries": len(audit),
             "approved": approval is not None}
    doc_page = page(f"Compliance report: {model} v{version}", "\n".join(doc.html))
    return doc_page, "\n".join(doc.md).lstrip() + "\n", facts


def write_report(model: str, ref: str | int, registry_uri: str, store_uri: str,
                 out_dir: str, qa_report: str = "") -> dict[str, str]:
    """Writes the HTML and Markdown report into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    version = ModelRegistry(registry_uri).resolve(model, ref)
    doc_page, md, _ = build_report(model, ref, registry_uri, store_uri, out, qa_report)
    html_path = out / f"{model}-v{version}-compliance.html"
    md_path = out / f"{model}-v{version}-compliance.md"
    html_path.write_text(doc_page)
    md_path.write_text(md)
    logger.info("Compliance report of %s version %d: %s", model, version, html_path)
    return {"html": str(html_path), "markdown": str(md_path)}
