"""The ingestion report for people: Markdown (the Kubeflow UI renders it) and the same as an
HTML page (what `mlops run ingest` and `mlops runs show` point a person to)."""

from __future__ import annotations

from components.common.htmldoc import markdown_html, page
from components.common.images import QUARANTINE_REASONS
from components.ingest.core import IngestResult


def report_markdown(result: IngestResult) -> str:
    """The ingestion report for people (rendered by the Kubeflow UI)."""
    r = result.report
    lines = [
        f"# Dataset {r['dataset_version']}",
        "",
        f"Source: `{r['source_uri']}` (layout: {r['layout']})  ",
        f"Snapshot: `{result.snapshot_uri}` ({'new' if result.created else 'already published'})",
        "",
        f"**{r['accounting']}**",
        "",
        "| split | " + " | ".join(r["classes"]) + " | total |",
        "|---|" + "---|" * (len(r["classes"]) + 1),
    ]
    for split in ("train", "test"):
        counts = r["splits"][split]
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in r["classes"])
                     + f" | {sum(counts.values())} |")
    lines += ["", "Test share per class: " + ", ".join(
        f"{c} {v:.1%}" for c, v in r["test_share_per_class"].items()), ""]
    if r["quarantine_reasons"]:
        lines += ["## Quarantined", "", "| reason | objects | meaning |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {QUARANTINE_REASONS.get(k, '')} |"
                  for k, v in r["quarantine_reasons"].items()]
        shown = result.quarantine.head(20)
        lines += ["", "First quarantined keys:", ""]
        lines += [f"- `{k}`: {reason} ({detail})"
                  for k, reason, detail in zip(shown["key"], shown["reason"], shown["detail"], strict=False)]
        lines.append("")
    if r["duplicates"]:
        lines += [f"## Duplicates: {r['duplicates']} removed", ""]
        lines += [f"- `{k}` = `{d}`" for k, d in zip(result.duplicates["key"].head(20),
                                                   result.duplicates["duplicate_of"].head(20), strict=False)]
        lines.append("")
    for name in ("label_rows_rejected", "labels_missing_from_lake"):
        if r[name]:
            lines += [f"## {name.replace('_', ' ').capitalize()}: {len(r[name])}", ""]
            lines += [f"- {item}" for item in r[name][:20]] + [""]
    for split in ("train", "test"):
        s = result.stats[split]
        if s["count"]:
            lines.append(
                f"{split}: brightness mean {s['brightness']['mean']:.3f}, contrast mean "
                f"{s['contrast']['mean']:.3f}, width p50 {s['width']['p50']:.0f}px, height p50 "
                f"{s['height']['p50']:.0f}px  ")
    lines += ["", f"Decoded this run: {r['decoded']}; reused from cache: {r['cache_hits']}."]
    if r.get("parts"):
        p = r["parts"]
        lines.append(f"Fanned out: plan {p['plan_id']}, parts merged {p['merged']}"
                     + (f", parts that wrote nothing (read here) {p['missing']}"
                        if p["missing"] else "") + ".")
    return "\n".join(lines) + "\n"


def report_html(result: IngestResult) -> str:
    """The ingestion report as an HTML page (the Markdown report, rendered)."""
    return page(f"Dataset {result.version}", markdown_html(report_markdown(result)))
