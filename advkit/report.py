"""Report folders: results as CSV/JSON, the config with its fingerprint, figures, flags, and index.html.

``write_report(result, flags, out)`` writes everything; ``build_index(out)`` rebuilds the figures
and ``index.html`` from the files alone (``advkit report DIR``). It checks each file against what
``write_report`` writes (results.csv: a row per model, attack and eps with the columns of
:data:`RESULTS_COLUMNS`; flags.json: a list of objects with a "status"; config.json: the sweep's
fingerprint object) and raises :class:`advkit.errors.ReportError` naming the file and what it
should hold.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from advkit.errors import ReportError
from advkit.files import atomic_write_bytes, atomic_write_json
from advkit.provenance import provenance_html
from advkit.sweep import SweepResult


def write_report(result: SweepResult, flags: list[dict], out: Path) -> list[Path]:
    """results.csv/json, success_matrix.csv, flags.json (config.json is written by the sweep), figures, index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.csv", result.table.to_csv(index=False).encode())
    atomic_write_json(
        out / "results.json", {"rows": json.loads(result.table.to_json(orient="records")), "flags": flags}
    )
    atomic_write_bytes(out / "success_matrix.csv", result.matrix.to_csv(index=False).encode())
    atomic_write_json(out / "flags.json", flags)
    if not (out / "config.json").exists():
        atomic_write_json(out / "config.json", result.config)
    return [
        out / "results.csv",
        out / "results.json",
        out / "success_matrix.csv",
        out / "flags.json",
        *build_index(out),
    ]


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


#: Columns of results.csv that the report needs (the sweep writes more), and those of them that are numbers.
RESULTS_COLUMNS = ("model", "attack", "eps_01", "n_attacked", "success_rate", "ci_low", "ci_high")
_NUMERIC_COLUMNS = (
    "eps_01",
    "n_attacked",
    "success_rate",
    "ci_low",
    "ci_high",
    "robust_accuracy",
    "clean_accuracy",
    "mean_linf",
    "max_linf",
    "mean_l2",
)
_REWRITE = "rerun the `advkit sweep` that made the folder to rewrite it"


def read_results(path: Path) -> pd.DataFrame:
    """results.csv as ``write_report`` writes it; :class:`ReportError` naming the file otherwise."""
    should = (
        f"it should hold the sweep's table: a header row with at least the columns {', '.join(RESULTS_COLUMNS)}, "
        "then a row per model, attack and eps"
    )
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: not an advkit sweep report ({should})") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise ReportError(
            f"{path} is not a readable CSV table ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:160]}); {should}; {_REWRITE}"
        ) from None
    missing = [c for c in RESULTS_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(f"{path} lacks the column(s) {', '.join(missing)}; {should}; {_REWRITE}")
    if table.empty:
        raise ReportError(f"{path} has a header but no rows; {should}; {_REWRITE}")
    for column in _NUMERIC_COLUMNS:
        if column in table.columns and not pd.api.types.is_numeric_dtype(table[column]):
            bad = next(
                (v for v in table[column] if pd.isna(pd.to_numeric(v, errors="coerce")) and not pd.isna(v)),
                table[column].iloc[0],
            )
            raise ReportError(f"{path}: column {column} holds {bad!r}, not a number; {should}; {_REWRITE}")
    for column in ("model", "attack", "n_attacked"):
        if table[column].isna().any():
            row = int(table[column].isna().to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header line
            raise ReportError(f"{path}: column {column} is empty on line {row}; {should}; {_REWRITE}")
    return table


def _read_json(path: Path, default, should: str):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not valid JSON ({error}); {should}; {_REWRITE}, or remove the file") from None


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def read_flags(path: Path) -> list[dict]:
    """flags.json as ``write_report`` writes it (a list of sanity-check objects), [] when absent."""
    should = (
        'it should hold the sanity checks as a JSON list of objects, each with a "status" ("flag", "ok" or '
        '"skipped") and "check", "model", "attack", "reason"'
    )
    flags = _read_json(path, [], should)
    if not isinstance(flags, list):
        raise ReportError(f"{path} holds {_json_kind(flags)}, not a list; {should}; {_REWRITE}, or remove the file")
    for i, flag in enumerate(flags):
        if not isinstance(flag, dict) or not isinstance(flag.get("status"), str):
            what = _json_kind(flag) if not isinstance(flag, dict) else 'an object without a string "status"'
            raise ReportError(f"{path}: item {i} is {what}; {should}; {_REWRITE}, or remove the file")
    return flags


def read_config(path: Path) -> dict:
    """config.json as the sweep writes it (its fingerprint object), {} when absent."""
    should = (
        'it should hold the sweep\'s fingerprint: a JSON object with "spec" (an object with the attacks, eps, '
        'n, seed...), "models" (model -> weights sha256), "data", "advkit", "torch" and "plugins"'
    )
    config = _read_json(path, {}, should)
    if not isinstance(config, dict):
        raise ReportError(f"{path} holds {_json_kind(config)}, not an object; {should}; {_REWRITE}, or remove the file")
    for key in ("spec", "models", "data", "plugins"):
        if key in config and not isinstance(config[key], dict):
            raise ReportError(f'{path}: "{key}" is {_json_kind(config[key])}, not an object; {should}; {_REWRITE}')
    spec = config.get("spec", {})
    if not isinstance(spec.get("attacks", []), list) or not all(isinstance(a, str) for a in spec.get("attacks", [])):
        raise ReportError(f'{path}: "spec"."attacks" should be a list of attack names; {_REWRITE}')
    eps = spec.get("eps", [])
    if not isinstance(eps, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in eps):
        raise ReportError(f'{path}: "spec"."eps" should be a list of numbers; {_REWRITE}')
    return config


def _plugin_text(name: str, info) -> str:
    """``"pgd (advkit 0.1.0)"``; older reports stored only the version."""
    if isinstance(info, dict):
        origin = " ".join(str(v) for v in (info.get("distribution"), info.get("version")) if v)
        return f"{name} ({origin})" if origin else name
    return f"{name} {info or ''}".strip()


def build_index(out: Path) -> list[Path]:
    """Rebuild the figure and ``index.html`` from results.csv, flags.json and config.json in ``out``.

    Raises:
        ReportError: one of the files is not what ``write_report`` writes (the message names it).
    """
    from advkit.figures import save_figure

    out = Path(out)
    table = read_results(out / "results.csv")
    flags = read_flags(out / "flags.json")
    config = read_config(out / "config.json")
    executor = _read_json(out / "executor.json", None, "it records where advkit sweep ran the work")
    adaptive = _read_adaptive(out)
    figure = save_figure(success_figure(table), out / "success_vs_eps.png")
    extra_figures = sorted(p.name for p in out.glob("*.png") if p.name != figure.name)
    page = out / "index.html"
    html_text = render_html(table, flags, config, [figure.name, *extra_figures], executor=executor, adaptive=adaptive)
    atomic_write_bytes(page, html_text.encode())
    return [figure, page]


STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1180px; color: #202124; }
.wide { overflow-x: auto; max-width: 100%; margin-bottom: 1.5em; }
.wide table { margin-bottom: 0; }
code { overflow-wrap: anywhere; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
td, th { border: 1px solid #dadce0; padding: 3px 8px; text-align: left; }
.bad { color: #b3261e; font-weight: 600; } .good { color: #137333; font-weight: 600; }
img { max-width: 100%; border: 1px solid #dadce0; }"""


def where_it_ran(executor: dict | None) -> str:
    """One line for a report's configuration: in process, or the executor, workers, tasks and overheads."""
    from advkit.executors import describe_run

    if not isinstance(executor, dict) or executor.get("executor") in (None, "in process", "local"):
        return "in process"
    return describe_run(executor) or "in process"


def build_transfer_index(out: Path) -> Path:
    """``index.html`` of a transfer report, from its transfer.csv, transfer.png and summary.json alone."""
    out = Path(out)
    table = pd.read_csv(out / "transfer.csv")
    summary = json.loads((out / "summary.json").read_text())
    shown = table.copy()
    for column in ("transfer_rate", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    facts = {
        key: summary.get(key)
        for key in (
            "sources",
            "targets",
            "attack",
            "attack_params",
            "constraints",
            "eps",
            "eps_01",
            "criterion",
            "target_class",
            "n_attacked",
            "selection",
            "data",
            "seed",
            "cell",
        )
    }
    facts["ran on"] = where_it_ran(summary.get("executor"))
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
<div class="wide">{shown.to_html(index=False, border=0)}</div>
<p>Files: <a href="transfer.csv">transfer.csv</a>, <a href="transfer_matrix.csv">transfer_matrix.csv</a>,
<a href="summary.json">summary.json</a>, per-sample masks in masks.safetensors.</p>
<h2>Configuration</h2>
<div class="wide"><table>{fact_rows}</table></div>
{provenance_html(summary.get("provenance"))}
</body></html>
"""
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def _read_adaptive(out: Path) -> tuple[list[dict], pd.DataFrame] | None:
    """An ``--adaptive`` sweep's reruns (adaptive.json) and before/after rows (adaptive.csv); None if it had none."""
    reruns = _read_json(out / "adaptive.json", None, "it lists the adaptive reruns advkit sweep --adaptive made")
    if reruns is None:
        return None
    if not isinstance(reruns, list) or not all(isinstance(r, dict) and {"model", "attack"} <= set(r) for r in reruns):
        raise ReportError(f"{out / 'adaptive.json'} is not a list of reruns as advkit sweep --adaptive writes it")
    path = out / "adaptive.csv"
    try:
        rows = pd.read_csv(path) if reruns else pd.DataFrame()
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is not readable ({error}): rerun the sweep with --adaptive") from None
    return reruns, rows


def _flag_rows(flags: list[dict]) -> str:
    colors = {"flag": "#fde2e1", "ok": "#e6f4ea", "skipped": "#f1f3f4"}
    rows = []
    order = {"flag": 0, "ok": 1, "skipped": 2}
    for f in sorted(flags, key=lambda f: order.get(f["status"], 3)):  # flags first; stable within a status
        cells = "".join(
            f"<td>{html.escape(str(f.get(k) or ''))}</td>"
            for k in ("status", "check", "indicator", "model", "attack", "reason")
        )
        fix = (f.get("fix") or {}).get("text", "")
        cells += f"<td>{html.escape(fix)}</td>"
        rows.append(f'<tr style="background:{colors.get(f["status"], "white")}">{cells}</tr>')
    return "\n".join(rows)


def _adaptive_html(adaptive: tuple[list[dict], pd.DataFrame] | None) -> str:
    """The adaptive section: each rerun's fix, its cells before and after, and its flags after."""
    if adaptive is None:
        return ""
    reruns, rows = adaptive
    if not reruns:
        return '<h2>Adaptive reruns</h2><p class="good">No raised flag carried a fix: nothing was rerun.</p>'
    parts = [
        "<h2>Adaptive reruns</h2>",
        "<p>Each (model, attack) with a raised flag that carries a fix, rerun at every eps with the fixes merged "
        "(success over the correctly classified samples; each rerun is a sweep folder of its own with its full "
        "report).</p>",
    ]
    shown = rows.copy()
    for column in ("eps_01", "success_before", "success_after", "robust_before", "robust_after"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    parts.append(f'<div class="wide">{shown.to_html(index=False, border=0)}</div>')
    for r in reruns:
        after = [f for f in r.get("flags_after", []) if f.get("status") == "flag"]
        link = html.escape(quote(f"{r.get('folder', '')}/index.html"))  # the folder's name has % escapes itself
        verdict = (
            '<span class="good">no flag raised after the rerun</span>'
            if not after
            else f'<span class="bad">{len(after)} flag(s) still raised: '
            + html.escape("; ".join(f"{f['check']}: {f['reason']}" for f in after))
            + "</span>"
        )
        parts.append(
            f"<p><b>{html.escape(r['model'])} {html.escape(r['attack'])}</b>: "
            f'{html.escape((r.get("fix") or {}).get("text", ""))} ({verdict}; <a href="{link}">its report</a>)</p>'
        )
    return "\n".join(parts)


#: The results table's columns on the page (a 1280-px window shows them without scrolling); results.csv has all.
INDEX_COLUMNS = (
    "model",
    "attack",
    "eps",
    "eps_01",
    "n_attacked",
    "success_rate",
    "ci_low",
    "ci_high",
    "robust_accuracy",
    "backward_passes",
    "seconds",
    "inferred",
)


def render_html(
    table: pd.DataFrame, flags: list[dict], config: dict, figures: list[str], executor: dict | None = None,
    adaptive: tuple[list[dict], pd.DataFrame] | None = None,
) -> str:  # fmt: skip
    raised = [f for f in flags if f["status"] == "flag"]
    verdict = (
        f'<p class="bad">{len(raised)} sanity check(s) raised a flag: read them before trusting the numbers.</p>'
        if raised
        else '<p class="good">No sanity check raised a flag.</p>'
    )
    shown = table[[c for c in INDEX_COLUMNS if c in table]].copy()  # the rest is in results.csv
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
        "reuse across eps": str(spec.get("reuse"))
        + (
            ", descending search (samples not fooled at a larger eps inferred robust: see 'inferred')"
            if spec.get("search") == "descending"
            else ""
        ),
        "versions": f"advkit {config.get('advkit')}, torch {config.get('torch')}",
        "plugins": ", ".join(_plugin_text(name, info) for name, info in config.get("plugins", {}).items()),
        "ran on": where_it_ran(executor),
    }
    if spec.get("gradient"):
        facts["gradient estimator"] = spec["gradient"]
    fact_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    images = "\n".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}'
        "</figcaption></figure>"
        for name in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>advkit report</title>
<style>
{STYLE}
</style></head><body>
<h1>advkit robustness report</h1>
{verdict}
<h2>Sanity checks and indicators of attack failure</h2>
<table><tr><th>status</th><th>check</th><th>indicator (Pintor et al.)</th><th>model</th><th>attack</th><th>reason</th>
<th>fix advkit can run (--adaptive)</th></tr>
{_flag_rows(flags)}
</table>
{_adaptive_html(adaptive)}
<h2>Success rate versus eps</h2>
{images}
<h2>Results</h2>
<p>success_rate: share of the correctly classified samples that were fooled (95% Wilson interval);
robust_accuracy: share of all n samples still classified correctly; norms over fooled samples;
"worst-case": fooled by any attack. Per-sample results: <a href="success_matrix.csv">success_matrix.csv</a>,
all rows and columns (norms, forward passes, carried samples): <a href="results.csv">results.csv</a>.</p>
<div class="wide">{shown.to_html(index=False, border=0)}</div>
<h2>Configuration</h2>
<div class="wide"><table>{fact_rows}</table></div>
<p>Full fingerprint: <a href="config.json">config.json</a>.</p>
{provenance_html(config.get("provenance"))}
</body></html>
"""
