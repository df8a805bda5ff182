"""A sweep study: the sweep, its sanity checks and its report in one call, and the parsing of a sweep's eps list and
per-attack parameters (shared by the CLI and Python callers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advkit.errors import AdvkitError, ModelLoadError, ParameterError

if TYPE_CHECKING:
    from advkit.datasets import Dataset
    from advkit.models import ModelAdapter


def parse_eps_list(values: tuple[str, ...], convert: Callable[[str], float]) -> list[float]:
    """``("0.1,8/255", "0.3")`` -> [0.1, 0.0314, 0.3] (each item may hold several comma-separated values)."""
    out = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            out.append(convert(item))
    if not out:
        raise ParameterError("give at least one --eps")
    return out


def split_params(
    pairs: tuple[str, ...], attacks: list[str], parse: Callable[[tuple[str, ...], Any], dict]
) -> dict[str, dict]:
    """``-p pgd.steps=40`` sets a parameter of one attack; ``-p steps=40`` of every attack that has it."""
    from advkit import registry

    per_attack: dict[str, dict] = {a: {} for a in attacks}
    for pair in pairs:
        key = pair.partition("=")[0]
        name, dot, _ = key.partition(".")
        if dot:
            if name not in per_attack:
                raise ParameterError(f"-p {pair!r}: attack {name!r} is not in this sweep ({', '.join(attacks)})")
            per_attack[name].update(parse((pair[len(name) + 1 :],), registry.get_attack(name).obj))
            continue
        owners = [
            a
            for a in attacks
            if key.strip().replace("-", "_") in {f.name for f in registry.get_attack(a).obj.param_fields()}
        ]
        if not owners:
            raise ParameterError(f"-p {pair!r}: no attack in this sweep has a parameter {key!r}")
        for a in owners:
            per_attack[a].update(parse((pair,), registry.get_attack(a).obj))
    return {a: p for a, p in per_attack.items() if p}


def sweep_study(
    spec,
    out: Path,
    device: str = "cpu",
    checks: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    *,
    models: Mapping[str, ModelAdapter] | None = None,
    dataset: Dataset | None = None,
    batch_size: int | str = "auto",
    executor=None,
    adaptive: bool = False,
) -> dict:
    """Run the sweep into ``out``, then the sanity checks and the report; returns a JSON-able summary.

    ``models`` (adapters keyed by the names in ``spec.models``) and ``dataset`` are what is swept; without them the
    names are loaded as model specs and the data from ``spec.data`` (see :func:`advkit.sweep.run_sweep`).
    ``adaptive``: rerun every (model, attack) whose raised flags carry a fix with that fix (:mod:`advkit.rerun`);
    the summary's ``adaptive`` lists the reruns, and the report shows each cell before and after."""
    from advkit.outputs import record
    from advkit.report import INDEX_COLUMNS, write_report
    from advkit.sanity import run_checks
    from advkit.sweep import run_sweep

    try:
        result = run_sweep(
            spec, out, device=device, progress=progress, overwrite=overwrite, models=models, dataset=dataset,
            batch_size=batch_size, executor=executor,
        )  # fmt: skip
    except AdvkitError:
        raise  # the CLI prints it in one line
    except OSError as error:  # e.g. a model whose weights are not on this machine (the message says where to put them)
        raise ModelLoadError(str(error)) from None
    if adaptive and not checks:
        raise ParameterError("adaptive reruns need the checks: they rerun what the checks flag")
    flags = run_checks(result) if checks else []
    from advkit.files import atomic_write_json

    # where the work ran (executor, workers, shard size, per-task seconds, overhead), before the report that shows it;
    # written for an in-process run too, so a folder a Ray run used never keeps that run's record
    where = Path(out) / "executor.json"
    atomic_write_json(where, result.executor or {"executor": "in process"})
    rerun = None
    if adaptive:
        from advkit.rerun import adaptive_sweep

        record(out, [], folders=("adaptive",))  # the reruns' folders are the sweep's own, not the user's
        rerun = adaptive_sweep(
            result, flags, Path(out), dataset=dataset, device=device, batch_size=batch_size, executor=executor,
            progress=progress, overwrite=overwrite,
        )  # fmt: skip
    else:
        for stale in ("adaptive.json", "adaptive.csv"):  # an earlier --adaptive run's before/after, not this one's
            (Path(out) / stale).unlink(missing_ok=True)
    files = [where, *write_report(result, flags, out)]
    if rerun is not None:
        files[1:1] = [Path(out) / "adaptive.json", Path(out) / "adaptive.csv"]
    record(out, files, folders=("adaptive",) if adaptive else ())
    columns = [c for c in INDEX_COLUMNS if c != "inferred" or spec.search == "descending"]
    return {
        "rows": result.table[columns].round(4).to_dict(orient="records"),
        "flags": flags,
        "out": [str(p) for p in files],
        "executor": result.executor,
        "table": result.table[columns],
        **(
            {"adaptive": rerun["reruns"], "adaptive_rows": rerun["table"].round(4).to_dict(orient="records")}
            if rerun is not None
            else {}
        ),
    }
