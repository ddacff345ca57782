"""The monitoring report a person reads: one self-contained HTML page and a Markdown summary.

The page shows the verdict (every check with value, threshold, status and why), trends over
the last windows of the history (drift p-value and distance, class shares against the
training prior, accuracy measured and estimated, latency percentiles), the error analysis by
slice and the saliency gallery. Plots are PNGs embedded in the page, so the file opens the
same from the store, a laptop or the Kubeflow UI's HTML viewer.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import threading

from components.monitor.contract import Verdict

#: matplotlib's pyplot (and its mathtext parser) is not thread-safe: runs in threads of one
#: process draw one at a time.
PLOT_LOCK = threading.RLock()

STATUS_COLOURS = {"ok": "#1a7f37", "unknown": "#6e7781", "warning": "#bf8700", "alarm": "#cf222e"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=85)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _when(v: Verdict) -> _dt.datetime:
    return _dt.datetime.fromisoformat(v.window_end.replace("Z", "+00:00"))


def _series(history: list[Verdict], name: str, key: str | None = None):
    xs, ys = [], []
    for v in history:
        c = v.check(name)
        if c is None:
            continue
        value = c.value if key is None else c.extra.get(key)
        if value is None:
            continue
        xs.append(_when(v))
        ys.append(value)
    return xs, ys


def trend_plots(history: list[Verdict]) -> dict[str, str]:
    """Base64 PNGs of the trends over the given windows (oldest first)."""
    with PLOT_LOCK:
        return _trend_plots(history)


def _trend_plots(history: list[Verdict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plots = {}

    def axes(title, ylabel):
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=7)
        return fig, ax

    # Drift: p-values (log scale) and the MMD distance.
    fig, ax = axes("Drift p-values and distance per window", "p-value")
    xs, ps = _series(history, "drift.embedding", "p_val")
    if xs:
        ax.plot(xs, [max(p, 1e-4) for p in ps], "o-", label="embeddings (MMD)")
    xs2, ps2 = _series(history, "drift.statistics")
    if xs2:
        ax.plot(xs2, [max(p, 1e-12) for p in ps2], "s--", label="statistics (smallest KS p)")
    thr = next((v.check("drift.embedding").threshold for v in reversed(history)
                if v.check("drift.embedding") and v.check("drift.embedding").threshold), 0.05)
    ax.axhline(thr, color="red", lw=1, ls=":", label=f"alpha {thr}")
    ax.set_yscale("log")
    xd, ds = _series(history, "drift.embedding", "distance")
    if xd:
        twin = ax.twinx()
        twin.plot(xd, ds, "^-", color="tab:purple", alpha=0.6, label="MMD² distance")
        twin.set_ylabel("MMD²", color="tab:purple")
    _legend(ax, loc="lower left")
    plots["drift"] = _png(fig)

    # Class shares against the prior.
    fig, ax = axes("Predicted class shares per window (dashed: on the reference)", "share")
    shares = [(_when(v), v.check("prediction_drift.class_shares")) for v in history]
    shares = [(t, c) for t, c in shares if c is not None and c.extra.get("shares")]
    if shares:
        for n, cls in enumerate(sorted(shares[-1][1].extra["shares"])):
            colour = f"C{n}"
            ax.plot([t for t, _ in shares], [c.extra["shares"].get(cls, 0) for _, c in shares],
                    "o-", color=colour, label=cls)
            baseline = shares[-1][1].extra.get("baseline") or shares[-1][1].extra["prior"]
            ax.axhline(baseline.get(cls, 0), color=colour, ls="--", lw=1)
        ax.set_ylim(0, 1)
        _legend(ax)
    plots["class_shares"] = _png(fig)

    # Accuracy: measured with its interval, and the estimate.
    fig, ax = axes("Accuracy per window", "accuracy")
    xm, am = _series(history, "performance.accuracy")
    if xm:
        lo = [v.check("performance.accuracy").extra.get("ci_low") for v in history
              if v.check("performance.accuracy") and v.check("performance.accuracy").value
              is not None]
        hi = [v.check("performance.accuracy").extra.get("ci_high") for v in history
              if v.check("performance.accuracy") and v.check("performance.accuracy").value
              is not None]
        ax.errorbar(xm, am, yerr=[[a - lo_ for a, lo_ in zip(am, lo, strict=True)],
                                  [hi_ - a for a, hi_ in zip(am, hi, strict=True)]],
                    fmt="o-", capsize=3, label="measured (labelled, 95% CI)")
    xe, ae = _series(history, "performance.estimated_accuracy")
    if xe:
        ax.plot(xe, ae, "s--", label="estimated from confidence")
    floor = next((v.check("performance.estimated_accuracy").threshold for v in reversed(history)
                  if v.check("performance.estimated_accuracy")), None)
    if floor is not None:
        ax.axhline(floor, color="red", lw=1, ls=":", label=f"floor {floor:.2f}")
    ax.set_ylim(0, 1.02)
    _legend(ax, loc="lower left")
    plots["accuracy"] = _png(fig)

    # Latency percentiles.
    fig, ax = axes("Latency per window (server side)", "ms")
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        xl, yl = _series(history, f"telemetry.{q}_latency")
        if xl:
            ax.plot(xl, yl, style, label=q)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no telemetry in these windows", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    plots["latency"] = _png(fig)
    return plots


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kw)


def _value(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def html_report(verdict: Verdict, history: list[Verdict], explanations: dict,
                telemetry: dict | None = None) -> str:
    """The report page of one run; ``history`` includes this run's verdict last."""
    plots = trend_plots(history)
    rows = "\n".join(
        f"<tr id='{html.escape(c.key)}'><td>{html.escape(c.key)}</td>"
        f"<td style='color:{STATUS_COLOURS[c.status]};"
        f"font-weight:bold'>{c.status}</td><td>{_value(c.value)}</td>"
        f"<td>{_value(c.threshold)}</td><td>{html.escape(c.detail)}</td></tr>"
        for c in verdict.checks)
    slice_html = ""
    for dim, items in (explanations.get("slices") or {}).items():
        if dim.startswith("_"):
            continue
        body = "".join(
            f"<tr{' style=background:#fff1f0' if r['flagged'] else ''}><td>"
            f"{html.escape(str(r['slice']))}</td><td>{r['n']}</td><td>{r['share']:.1%}</td>"
            f"<td>{r['mean_confidence']:.3f}</td><td>{r['n_labelled']}</td>"
            f"<td>{_value(r['accuracy'])}</td><td>{'yes' if r['flagged'] else ''}</td></tr>"
            for r in items)
        slice_html += (f"<h3>By {html.escape(dim)}</h3><table><tr><th>slice</th><th>n</th>"
                       "<th>share</th><th>mean confidence</th><th>labelled</th>"
                       f"<th>accuracy</th><th>flagged</th></tr>{body}</table>")
    gallery = ""
    for entry in explanations.get("gallery", []):
        png = explanations.get("images", {}).get(entry["file"])
        if png:
            gallery += (f"<figure><img src='data:image/png;base64,"
                        f"{base64.b64encode(png).decode()}'><figcaption>"
                        f"{html.escape(entry['group'])}: request "
                        f"{html.escape(str(entry['request_id']))[:18]}/{entry['index']}"
                        "</figcaption></figure>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in explanations.get("notes", []))
    colour = STATUS_COLOURS[verdict.status]
    imgs = "".join(f"<img src='data:image/png;base64,{plots[k]}' alt='{k}'>"
                   for k in ("drift", "class_shares", "accuracy", "latency"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Monitoring: {html.escape(verdict.model)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}
table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;
padding:3px 7px;font-size:13px;text-align:left}}figure{{display:inline-block;margin:4px}}
figcaption{{font-size:11px;color:#555}}img{{max-width:100%}}</style></head><body>
<h1>Monitoring of {html.escape(verdict.model)} version {html.escape(verdict.model_version)}</h1>
<p>Window {verdict.window_start} to {verdict.window_end}: {verdict.n_requests} requests,
{verdict.n_labelled} labelled. Run {html.escape(verdict.run_id)}.</p>
<h2>Verdict: <span style="color:{colour}">{verdict.status.upper()}</span></h2>
<table><tr><th>check</th><th>status</th><th>value</th><th>threshold</th><th>why</th></tr>
{rows}</table>
<h2>Trends over the last {len(history)} windows</h2>{imgs}
<h2>Error analysis by slice</h2>{slice_html or '<p>No traffic to analyse.</p>'}
<h2>Saliency gallery</h2>
<p>Bright pixels changed the predicted class's score most (gradient saliency, Captum).</p>
{gallery or '<p>No captured input images to explain.</p>'}
{f'<ul>{notes}</ul>' if notes else ''}
</body></html>"""


def markdown_summary(verdict: Verdict, explanations: dict | None = None) -> str:
    """A short Markdown summary: the verdict and every check."""
    lines = [f"# Monitoring: {verdict.model} version {verdict.model_version}", "",
             f"**Verdict: {verdict.status}** — window {verdict.window_start} to "
             f"{verdict.window_end}, {verdict.n_requests} requests, {verdict.n_labelled} "
             "labelled.", "", "| check | status | value | threshold | why |",
             "|---|---|---|---|---|"]
    for c in verdict.checks:
        lines.append(f"| {c.key} | {c.status} | {_value(c.value)} | {_value(c.threshold)} | "
                     f"{c.detail.replace('|', '/')} |")
    flagged = [(dim, r["slice"]) for dim, items in ((explanations or {}).get("slices") or {}
                                                     ).items() if not dim.startswith("_")
               for r in items if r["flagged"]]
    if flagged:
        lines += ["", "Slices below the window: " + ", ".join(f"{d} = {s}" for d, s in flagged)]
    if verdict.report_uri:
        lines += ["", f"Report: {verdict.report_uri}"]
    return "\n".join(lines) + "\n"


def explanations_json(explanations: dict) -> bytes:
    """Everything but the PNG bytes, for the report folder."""
    return json.dumps({k: v for k, v in explanations.items() if k != "images"}, indent=2,
                      sort_keys=True, default=str).encode()


def report_files(html_text: str, md: str, explanations: dict, verdict: Verdict | None = None
                 ) -> dict[str, bytes]:
    """The files of a report folder: report.html, summary.md, explanations.json, gallery."""
    files = {"report.html": html_text.encode(), "summary.md": md.encode(),
             "explanations.json": explanations_json(explanations)}
    files.update(explanations.get("images", {}))
    if verdict is not None:
        files["verdict.json"] = json.dumps(verdict.to_dict(), indent=2, default=str).encode()
    return files
