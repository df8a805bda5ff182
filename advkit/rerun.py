"""Adaptive reruns (``--adaptive``): what a raised flag says to fix, run.

The sanity checks and the indicators of attack failure (:mod:`advkit.sanity`, :mod:`advkit.indicators`) attach to
each raised flag the fix advkit can run: BPDA for zero gradients, EOT for unstable predictions, more steps for
incomplete optimization, a surrogate's gradient when transferred examples beat the white-box attack. Here the
fixes of one (model, attack) are merged (:func:`advkit.indicators.merge_fixes`) and the attack rerun with them:
every eps of a sweep, into ``OUT/adaptive/MODEL--ATTACK/`` (a sweep folder of its own, so a rerun resumes), with its
own checks, whose transfer check still compares against the other models of the original sweep. The report puts
each cell before and after side by side (``adaptive.csv``, ``adaptive.json``, a section of ``index.html``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from advkit.indicators import describe_fix, merge_fixes
from advkit.sweep import SweepResult, _name_part

__all__ = ["ADAPTIVE_COLUMNS", "adaptive_sweep", "raised", "sweep_fixes"]

#: The columns of adaptive.csv: one row per rerun cell.
ADAPTIVE_COLUMNS = (
    "model", "attack", "eps", "eps_01", "fix", "success_before", "success_after", "robust_before", "robust_after",
    "backward_before", "backward_after",
)  # fmt: skip


def raised(flags: list[dict]) -> list[dict]:
    """The raised flags."""
    return [f for f in flags if f.get("status") == "flag"]


def sweep_fixes(result: SweepResult, flags: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, attack) -> the merged fix of the raised flags on that attack and on the model as a whole (a flag with
    no attack, e.g. zero gradients, concerns every attack of its model); only pairs with something to run."""
    fixes = {}
    for ref in result.spec.models:
        for attack in result.spec.attacks:
            mine = [f.get("fix") for f in raised(flags) if f["model"] == ref and f.get("attack") in (attack, None)]
            fix = merge_fixes(mine)
            if fix is not None:
                fixes[(ref, attack)] = fix
    return fixes


def _rerun_spec(result: SweepResult, ref: str, attack: str, fix: dict):
    spec = result.spec
    params = {name: dict(values) for name, values in spec.attack_params.items() if name in (attack, "fmn")}
    params[attack] = {**params.get(attack, {}), **fix.get("params", {})}
    return dataclasses.replace(
        spec, models=[ref], attacks=[attack], attack_params=params, gradient=fix.get("gradient") or spec.gradient
    )


def adaptive_sweep(
    result: SweepResult, flags: list[dict], out: Path, *, dataset: Any = None, device: Any = "cpu",
    batch_size: int | str = "auto", executor: Any = None, progress: bool = True, overwrite: bool = False,
) -> dict:  # fmt: skip
    """Rerun every (model, attack) of ``result`` whose raised flags carry a fix; returns ``{"reruns": [...],
    "table": DataFrame}`` (also written to ``OUT/adaptive.json`` and ``OUT/adaptive.csv``)."""
    from advkit.files import atomic_write_bytes, atomic_write_json
    from advkit.outputs import record
    from advkit.report import write_report
    from advkit.sanity import run_checks
    from advkit.sweep import run_sweep

    out = Path(out)
    reruns, rows = [], []
    for (ref, attack), fix in sweep_fixes(result, flags).items():
        spec = _rerun_spec(result, ref, attack, fix)
        relative = f"adaptive/{_name_part(ref)}--{_name_part(attack)}"
        folder = out / relative
        model = result.models[ref]
        base = model.base if hasattr(model, "estimator") and result.spec.gradient else model
        after = run_sweep(
            spec, folder, device=device, progress=progress, overwrite=overwrite, models={ref: base},
            dataset=dataset, batch_size=batch_size, executor=executor,
        )  # fmt: skip
        after_flags = run_checks(after, others=result)
        record(folder, write_report(after, after_flags, folder))  # the folder's files are advkit's: a rerun resumes
        before_flags = [f for f in raised(flags) if f["model"] == ref and f.get("attack") in (attack, None)]
        reruns.append({
            "model": ref, "attack": attack, "fix": fix, "fix_text": describe_fix(fix), "folder": relative,
            "flags_before": before_flags, "flags_after": after_flags,
        })  # fmt: skip
        for eps in result.spec.eps:
            before_cell, after_cell = result.cells[(ref, attack, eps)], after.cells[(ref, attack, eps)]
            n = len(before_cell.success)
            attacked = int(before_cell.attacked.sum())
            rows.append({
                "model": ref, "attack": attack, "eps": eps, "eps_01": eps / model.range_width,
                "fix": describe_fix(fix),
                "success_before": int(before_cell.success.sum()) / attacked if attacked else float("nan"),
                "success_after": int(after_cell.success.sum()) / attacked if attacked else float("nan"),
                "robust_before": (attacked - int(before_cell.success.sum())) / n,
                "robust_after": (attacked - int(after_cell.success.sum())) / n,
                "backward_before": int(before_cell.backward), "backward_after": int(after_cell.backward),
            })  # fmt: skip
    table = pd.DataFrame(rows, columns=list(ADAPTIVE_COLUMNS))
    atomic_write_bytes(out / "adaptive.csv", table.to_csv(index=False).encode())
    atomic_write_json(out / "adaptive.json", reruns)
    return {"reruns": reruns, "table": table}
