"""The report folder of ``advkit evaluate``: per-sample CSV, per-stage CSV, summary JSON, a figure and index.html."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from advkit.evaluation import EvaluationResult
from advkit.provenance import write_summary
from advkit.report import where_it_ran

__all__ = ["write_evaluation_report"]


def write_evaluation_report(result: EvaluationResult, out: Path) -> list[Path]:
    """Write ``samples.csv``, ``stages.csv``, ``summary.json``, ``robust_accuracy.png`` and ``index.html``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    samples = pd.DataFrame(result.per_sample_rows())
    stages = pd.DataFrame([{k: v for k, v in s.items() if k != "params"} for s in result.stages])
    paths = [out / "samples.csv", out / "stages.csv", out / "robust_accuracy.png", out / "index.html"]
    samples.to_csv(paths[0], index=False)
    stages.to_csv(paths[1], index=False)
    paths.append(write_summary(out / "summary.json", summary))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    labels = ["clean"] + [s["label"] for s in result.stages]
    values = [100 * summary["clean_accuracy"]] + [100 * s["robust_after"] for s in result.stages]
    ax.plot(range(len(values)), values, "o-")
    ax.set_xticks(range(len(values)), labels, rotation=20, fontsize=8)
    ax.set(
        ylabel="accuracy (%)",
        title=f"{result.model}: {result.norm} eps {result.eps:g}, robust accuracy after each stage",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    low, high = summary["robust_accuracy_95ci"]
    rows = "".join(
        f"<tr><td>{html.escape(s['label'])}</td><td>{s['attacked']}</td><td>{s['fooled']}</td>"
        f"<td>{100 * s['robust_after']:.1f}%</td><td>{s['forward_passes']}</td><td>{s['backward_passes']}</td>"
        f"<td>{s['seconds']:.1f}</td></tr>"
        for s in result.stages
    )
    checks = "".join(
        f"<li><b>{html.escape(c['check'])}</b>: {html.escape(c['status'])} - {html.escape(c['reason'])}"
        + (f" <i>(fix, --adaptive: {html.escape(c['fix']['text'])})</i>" if c.get("fix") else "")
        + "</li>"
        for c in [*result.checks, *(result.indicators or [])]
    )
    adaptive = ""
    if result.adaptive_fix is not None:
        a = summary["adaptive"]
        if not a["rerun"]:
            adaptive = "<h2>Adaptive rerun</h2><p>No raised flag carried a fix: nothing was rerun.</p>"
        else:
            paths += write_evaluation_report(result.adaptive_result, out / "adaptive")
            still = [f for f in [*a["checks_after"], *(a["indicators_after"] or [])] if f["status"] == "flag"]
            low_b, high_b = a["robust_accuracy_both_95ci"]
            adaptive = (
                f"<h2>Adaptive rerun</h2><p>Rerun with {html.escape(a['fix_text'])}: robust accuracy "
                f"{100 * summary['robust_accuracy']:.1f}% before, {100 * a['robust_accuracy_after']:.1f}% after; "
                f"robust in both runs {100 * a['robust_accuracy_both']:.1f}% (95% Wilson interval {100 * low_b:.1f}-"
                f"{100 * high_b:.1f}%). Flags after the rerun: "
                + (html.escape("; ".join(f["check"] for f in still)) if still else "none")
                + ". <a href='adaptive/index.html'>Its report</a>.</p>"
            )
    paths[3].write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>advkit evaluate {html.escape(result.model)}</title>"
        "</head><body style='font-family:sans-serif;max-width:900px;margin:auto'>"
        f"<h1>{html.escape(result.model)}: robust accuracy {100 * summary['robust_accuracy']:.1f}%</h1>"
        f"<p>{result.norm} eps {result.eps:g} (model units), {result.n} samples, clean accuracy "
        f"{100 * summary['clean_accuracy']:.1f}%, 95% Wilson interval {100 * low:.1f}-{100 * high:.1f}%, "
        f"cascade '{html.escape(result.version)}', seed {result.seed}, {summary['seconds']:.1f} s; ran "
        f"{html.escape(where_it_ran(result.executor))}.</p>"
        f"<p>Evaluated: {html.escape(summary['evaluated'])}.</p>"
        + (
            "<p style='color:#b00'><b>Warning</b>: the model's outputs are random and this robust accuracy counts one "
            "draw per point; it may be too high: rerun with <code>--version rand</code>.</p>"
            if result.randomized and result.reevaluations is None
            else ""
        )
        + "<table border=1 cellpadding=4 style='border-collapse:collapse'><tr><th>stage</th><th>attacked</th>"
        f"<th>fooled</th><th>robust after</th><th>forward</th><th>backward</th><th>seconds</th></tr>{rows}</table>"
        f"<p><img src='robust_accuracy.png' alt='robust accuracy after each stage'></p>"
        f"<h2>Checks and indicators of attack failure</h2><ul>{checks}</ul>{adaptive}"
        "<p>Per sample: <a href='samples.csv'>samples.csv</a> (which stage first broke it); per stage: "
        "<a href='stages.csv'>stages.csv</a>; everything: <a href='summary.json'>summary.json</a>.</p></body></html>"
    )
    return paths
