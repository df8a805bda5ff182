"""Report folders: results as CSV/JSON, the config with its fingerprint, figures, flags, and index.html.

``write_report(result, flags, out)`` writes everything; ``build_index(out)`` rebuilds the figures
and ``index.html`` from the files alone (``advkit report DIR``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from advkit.sweep import SweepResult, atomic_write_bytes, atomic_write_json


def write_report(result: SweepResult, flags: list[dict], out: Path) -> list[Path]:
    """results.csv/json, success_matrix.csv, flags.json (config.json is written by the sweep), figures, index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.csv", result.table.to_csv(index=False).encode())
    atomic_write_json(out / "results.json", {"rows": json.loads(result.table.to_json(orient="records")), "flags": flags})
    atomic_write_bytes(out / "success_matrix.csv", result.matrix.to_csv(index=False).encode())
    atomic_write_json(out / "flags.json", flags)
    if not (out / "config.json").exists():
        atomic_write_json(out / "config.json", result.config)
    return [out / "results.csv", out / "results.json", out / "success_matrix.csv", out / "flags.json", *build_index(out)]


def success_figure(table: pd.DataFrame):
    """Success rate (95% Wilson band) against eps on the 0-1 scale: one panel per model, a line per attack."""
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(table["model"]))
    fig = Figure(figsize=(5.2 * len(models), 4.2), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        rows = table[table["model"] == model]
        for attack in dict.fromkeys(rows["attack"]):
            part = rows[rows["attack"] == attack].sort_values("eps_01")
            style = {"linestyle": "--", "color": "black"} if attack == "worst-case" else {"marker": "o"}
            (line,) = ax.plot(part["eps_01"], part["success_rate"], label=attack, **style)
            ax.fill_between(part["eps_01"], part["ci_low"], part["ci_high"], alpha=0.15, color=line.get_color())
        ax.set_title(f"{model} (n attacked = {int(rows['n_attacked'].iloc[0])})", fontsize=10)
        ax.set_xlabel("eps (0-1 scale)")
        ax.set_ylabel("success rate (95% Wilson band)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("attack success rate versus eps", fontsize=11)
    return fig


def build_index(out: Path) -> list[Path]:
    """Rebuild the figure and ``index.html`` from results.csv, flags.json and config.json in ``out``."""
    from advkit.figures import save_figure

    out = Path(out)
    table = pd.read_csv(out / "results.csv")
    flags = json.loads((out / "flags.json").read_text()) if (out / "flags.json").exists() else []
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    figure = save_figure(success_figure(table), out / "success_vs_eps.png")
    extra_figures = sorted(p.name for p in out.glob("*.png") if p.name != figure.name)
    page = out / "index.html"
    atomic_write_bytes(page, render_html(table, flags, config, [figure.name, *extra_figures]).encode())
    return [figure, page]


STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #202124; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
td, th { border: 1px solid #dadce0; padding: 3px 8px; text-align: left; }
.bad { color: #b3261e; font-weight: 600; } .good { color: #137333; font-weight: 600; }
img { max-width: 100%; border: 1px solid #dadce0; }"""


def build_transfer_index(out: Path) -> Path:
    """``index.html`` of a transfer report, from its transfer.csv, transfer.png and summary.json alone."""
    out = Path(out)
    table = pd.read_csv(out / "transfer.csv")
    summary = json.loads((out / "summary.json").read_text())
    shown = table.copy()
    for column in ("transfer_rate", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    facts = {key: summary.get(key) for key in ("sources", "targets", "attack", "attack_params", "constraints", "eps",
                                                "eps_01", "criterion", "target_class", "n_attacked", "selection",
                                                "data", "seed", "cell")}
    fact_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>advkit transfer report</title>
<style>
{STYLE}
</style></head><body>
<h1>advkit transfer report</h1>
<p>Each source attacks the same samples; a cell is the share of the source's successful (re-checked) examples
that the target misclassifies, with a 95% Wilson interval (the diagonal is white-box).</p>
<figure><img src="transfer.png" alt="transfer matrix"><figcaption>transfer.png</figcaption></figure>
<h2>Pairs</h2>
{shown.to_html(index=False, border=0)}
<p>Files: <a href="transfer.csv">transfer.csv</a>, <a href="transfer_matrix.csv">transfer_matrix.csv</a>,
<a href="summary.json">summary.json</a>, per-sample masks in masks.safetensors.</p>
<h2>Configuration</h2>
<table>{fact_rows}</table>
</body></html>
"""
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def _flag_rows(flags: list[dict]) -> str:
    colors = {"flag": "#fde2e1", "ok": "#e6f4ea", "skipped": "#f1f3f4"}
    rows = []
    order = {"flag": 0, "ok": 1, "skipped": 2}
    for f in sorted(flags, key=lambda f: order.get(f["status"], 3)):  # flags first; stable within a status
        cells = "".join(f"<td>{html.escape(str(f.get(k) or ''))}</td>" for k in ("status", "check", "model", "attack", "reason"))
        rows.append(f'<tr style="background:{colors.get(f["status"], "white")}">{cells}</tr>')
    return "\n".join(rows)


def render_html(table: pd.DataFrame, flags: list[dict], config: dict, figures: list[str]) -> str:
    raised = [f for f in flags if f["status"] == "flag"]
    verdict = (f'<p class="bad">{len(raised)} sanity check(s) raised a flag: read them before trusting the numbers.</p>'
               if raised else '<p class="good">No sanity check raised a flag.</p>')
    shown = table.copy()
    for column in ("success_rate", "ci_low", "ci_high", "robust_accuracy", "clean_accuracy", "eps_01"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    for column in ("mean_linf", "max_linf", "mean_l2"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    spec = config.get("spec", {})
    facts = {
        "models (weights sha256)": ", ".join(f"{k} ({str(v)[:12]})" for k, v in config.get("models", {}).items()),
        "attacks": ", ".join(spec.get("attacks", [])),
        "attack parameters": json.dumps(spec.get("attack_params", {})),
        "constraints": spec.get("constraints", ""),
        "eps (model units)": ", ".join(f"{e:g}" for e in spec.get("eps", [])),
        "samples": f"{spec.get('n')} test samples, class-interleaved; data {config.get('data', {}).get('source', '')} "
                   f"(sha256 {str(config.get('data', {}).get('sha256', ''))[:12]})",
        "seed / budget / confidence": f"{spec.get('seed')} / {spec.get('budget')} / {spec.get('confidence')}",
        "reuse across eps": str(spec.get("reuse")) + (
            ", descending search (samples not fooled at a larger eps inferred robust: see 'inferred')"
            if spec.get("search") == "descending" else ""),
        "versions": f"advkit {config.get('advkit')}, torch {config.get('torch')}",
        "plugins": ", ".join(f"{k} {v or ''}".strip() for k, v in config.get("plugins", {}).items()),
    }
    fact_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    images = "\n".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}'
                       "</figcaption></figure>" for name in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>advkit report</title>
<style>
{STYLE}
</style></head><body>
<h1>advkit robustness report</h1>
{verdict}
<h2>Sanity checks</h2>
<table><tr><th>status</th><th>check</th><th>model</th><th>attack</th><th>reason</th></tr>
{_flag_rows(flags)}
</table>
<h2>Success rate versus eps</h2>
{images}
<h2>Results</h2>
<p>success_rate: share of the correctly classified samples that were fooled (95% Wilson interval);
robust_accuracy: share of all n samples still classified correctly; norms over fooled samples;
"worst-case": fooled by any attack. Per-sample results: <a href="success_matrix.csv">success_matrix.csv</a>,
all rows: <a href="results.csv">results.csv</a>.</p>
{shown.to_html(index=False, border=0)}
<h2>Configuration</h2>
<table>{fact_rows}</table>
<p>Full fingerprint: <a href="config.json">config.json</a>.</p>
</body></html>
"""
