"""Transfer matrix: do adversarial examples made on one model fool another?

For every source model, the chosen attack runs white-box on the source; the examples that
fool the source (success re-checked by the runner's fresh forward pass) are fed to every
target model (a fresh eval-mode forward pass without gradients). Cell (source, target) is the
share of the source's successful examples that the target misclassifies (``pred != y``), with
a 95% Wilson interval.

Fairness: every source attacks the same samples, the first ``n`` (in the order given) that
*every* model involved classifies correctly. So a target's clean error on them is zero and any
misclassification it makes is caused by the perturbation, and the rows are comparable.

The diagonal (source == target) is white-box: it is 1.0 by construction for an untargeted
criterion (and for a targeted one, since reaching the target class is a misclassification).
It is still computed by the same forward pass, kept in the table and flagged ``white_box``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from advkit.constraints import Constraint, build_constraints
from advkit.models import ModelAdapter, input_space_mismatch
from advkit.result import AttackResult
from advkit.stats import wilson_interval

__all__ = ["TransferResult", "check_compatible", "select_common_correct", "transfer_figure", "transfer_matrix"]

#: Columns of :attr:`TransferResult.table` (targeted runs add target_class, n_target_hit, target_hit_rate).
COLUMNS = [
    "source",
    "target",
    "attack",
    "eps",
    "n_attacked",
    "n_source_fooled",
    "n_target_fooled",
    "transfer_rate",
    "ci_low",
    "ci_high",
    "white_box",
]


@dataclass
class TransferResult:
    """The long table, the pivoted matrix and the per-example masks of a transfer study.

    ``indices`` index the selected samples in the ``x`` given to :func:`transfer_matrix`;
    ``x`` and ``y`` are those samples. Per source name: ``results[s]`` (the source's
    :class:`AttackResult`) and ``source_success[s]`` (bool, shape (n,)). Per (source, target)
    pair: ``target_pred[s, t]`` (the target's predicted class on every one of the source's
    adversarial inputs, successful or not) and ``target_fooled[s, t]`` (bool, shape (n,):
    the source was fooled and the target misclassifies).
    """

    table: pd.DataFrame
    matrix: pd.DataFrame
    sources: list[str]
    targets: list[str]
    attack: str
    eps: float | None
    constraints: str
    criterion: str
    target_class: int | None
    seed: int
    indices: Tensor
    x: Tensor
    y: Tensor
    results: dict[str, AttackResult]
    source_success: dict[str, Tensor]
    target_pred: dict[tuple[str, str], Tensor]
    target_fooled: dict[tuple[str, str], Tensor]
    n_candidates: int = 0
    n_common_correct: int | None = 0  # None: the selection stopped at the first n (advkit.studies.transfer)
    #: Positions of the selected samples in the caller's original data set (the CLI reorders the test set first).
    test_indices: Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_attacked(self) -> int:
        return int(self.y.shape[0])

    def counts(self) -> pd.DataFrame:
        """``k/n`` strings in the matrix layout (n = the source's successful examples)."""
        cells = self.table.assign(
            kn=self.table.n_target_fooled.astype(str) + "/" + self.table.n_source_fooled.astype(str)
        )
        return cells.pivot(index="source", columns="target", values="kn").loc[self.sources, self.targets]

    def summary(self) -> dict:
        """A JSON-able summary: settings, per-source attack results, the matrix and every cell (NaN -> None)."""
        sources = {}
        for name, result in self.results.items():
            s = result.summary()
            sources[name] = {
                k: s[k]
                for k in (
                    "success_rate",
                    "n_success",
                    "mean_linf",
                    "max_linf",
                    "mean_l2",
                    "forward_passes",
                    "backward_passes",
                    "seconds",
                    "plugin",
                )
            }
        any_result = next(iter(self.results.values()))
        matrix = {s: {t: _none_if_nan(self.matrix.loc[s, t]) for t in self.targets} for s in self.sources}
        return {
            "sources": self.sources,
            "targets": self.targets,
            "attack": self.attack,
            "attack_params": any_result.attack_params,
            "eps": self.eps,
            "eps_01": None if self.eps is None else self.eps / (any_result.bounds[1] - any_result.bounds[0]),
            "bounds": list(any_result.bounds),
            "constraints": self.constraints,
            "criterion": self.criterion,
            "target_class": self.target_class,
            "seed": self.seed,
            "n_attacked": self.n_attacked,
            "n_candidates": self.n_candidates,
            **({} if self.n_common_correct is None else {"n_common_correct": self.n_common_correct}),
            "selection": "the first n samples (in the order given) that every model classifies correctly; "
            "all sources attack the same samples",
            "cell": "share of the source's successful (re-checked) adversarial examples that the target misclassifies "
            "(pred != y), with a 95% Wilson interval; the diagonal is white-box (1.0 by construction)",
            "source_attacks": sources,
            "matrix": matrix,
            "cells": [{k: _none_if_nan(v) for k, v in row.items()} for row in self.table.to_dict(orient="records")],
            **self.extra,
        }


def _none_if_nan(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def check_compatible(models: Sequence[ModelAdapter]) -> None:
    """Raise ``ValueError`` unless all models share dataset, input shape, classes and bounds (and have distinct names)."""
    if not models:
        raise ValueError("give at least one model")
    names = [m.name for m in models]
    first = models[0]
    for model in models[1:]:
        mismatch = input_space_mismatch(first, model)
        if mismatch is not None:
            raise ValueError(
                f"models {first.name!r} and {model.name!r} differ in {mismatch}: "
                "adversarial examples can only be transferred between models of the same input space and classes"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"two different models share a name among {names}: give each model a distinct name")


def select_common_correct(
    models: Sequence[ModelAdapter], x: Tensor, y: Tensor, n: int | None, batch_size: int | str = "auto"
) -> tuple[Tensor, int]:
    """Indices of the first ``n`` samples (all if None) that every model classifies correctly, and how many there are."""
    keep = torch.ones(y.shape[0], dtype=torch.bool)
    for model in models:
        pred = model.predict(x.to(model.device), batch_size).argmax(1).cpu()
        keep &= pred == y.cpu()
    idx = keep.nonzero().squeeze(1)
    return (idx if n is None else idx[:n]), int(idx.numel())


def _unique(models: Sequence[ModelAdapter]) -> list[ModelAdapter]:
    out: list[ModelAdapter] = []
    for model in models:
        if all(model is not m for m in out):
            out.append(model)
    return out


def _constraint_for(model: ModelAdapter, constraints: Constraint | Sequence[str] | str | None, eps: float | None):
    if constraints is None or isinstance(constraints, Constraint):
        return constraints
    from advkit import registry

    if eps is None:
        raise ValueError("named constraints need eps")
    types = registry.constraints()
    return build_constraints(constraints, eps=eps, bounds=model.bounds, registry=types)


def transfer_matrix(
    sources: Sequence[ModelAdapter],
    targets: Sequence[ModelAdapter] | None,
    x: Tensor,
    y: Tensor,
    *,
    attack: str,
    eps: float | None = None,
    constraints: Constraint | Sequence[str] | str | None = None,
    target_class: int | None = None,
    confidence: float | None = None,
    n: int | None = 100,
    seed: int = 0,
    budget: int | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int | str = "auto",
    attack_params: Mapping[str, Any] | None = None,
    executor: Any = None,
    gradient: str | None = None,
    **more_params: Any,
) -> TransferResult:
    """Attack each source white-box and feed its successful adversarial examples to every target.

    ``x, y`` is a pool of samples; the first ``n`` that every model (sources and targets)
    classifies correctly are attacked (samples of class ``target_class`` are left out for a
    targeted attack). ``constraints`` is a constraint set or constraint names (built per model
    with ``eps``, like ``advkit attack --constraints``); without either, an L-inf ball of radius
    ``eps``; the model's box always applies. ``attack`` is a registered attack name and
    ``attack_params`` (or further keywords) its hyperparameters: each source gets a fresh instance. ``targets=None``
    means the sources. ``progress`` receives one line per step (for stderr). ``batch_size``: samples per chunk of the
    attacks and of the models' predictions (a number or ``"auto"``, see :mod:`advkit.batching`). ``executor``: None (in
    this process) or an executor of :mod:`advkit.executors`: one task per (source, sample shard), attacking the shard
    and feeding it to every target on a worker (models shipped once per worker through the object store); the merged
    results are the in-process ones. ``gradient``: a gradient estimator spec (:mod:`advkit.gradients`) every source is
    attacked through (the targets see the adversarial inputs as they are).

    Raises ``ValueError`` for incompatible models or when no sample is usable.
    """
    from advkit.runner import make_attack

    sources = _unique(sources)
    targets = sources if targets is None else _unique(targets)
    if not sources or not targets:
        raise ValueError("give at least one source and one target model")
    everyone = _unique([*sources, *targets])
    check_compatible(everyone)
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    attack_params = {**(attack_params or {}), **more_params}  # a dict, so a parameter may be named like ours
    make_attack(attack, **attack_params)  # fail early on unknown names or parameters
    y = y.cpu()
    pool = torch.arange(y.shape[0])
    if target_class is not None:
        pool = pool[y != target_class]  # a sample of the target class cannot be turned into it
    chosen, n_common = select_common_correct(everyone, x[pool], y[pool], n, batch_size)
    if chosen.numel() == 0:
        raise ValueError("no sample in the pool is classified correctly by every model")
    indices = pool[chosen]
    x_sel, y_sel = x[indices], y[indices]

    run = dict(
        attack=attack, attack_params=attack_params, constraints=constraints, eps=eps, target_class=target_class,
        confidence=confidence, budget=budget, seed=seed, batch_size=batch_size, gradient=gradient,
    )  # fmt: skip
    if executor is None:
        outcomes = {}
        for source in sources:
            if progress:
                progress(f"attacking {source.name} with {attack} on {len(y_sel)} samples")
            outcomes[source.name] = _attack_and_feed(source, targets, x_sel, y_sel, run)
        where = None
    else:
        outcomes, where = _attack_and_feed_on(executor, sources, targets, x_sel, y_sel, run, progress)

    results: dict[str, AttackResult] = {}
    success: dict[str, Tensor] = {}
    preds: dict[tuple[str, str], Tensor] = {}
    fooled: dict[tuple[str, str], Tensor] = {}
    rows: list[dict] = []
    for source in sources:
        result, target_preds = outcomes[source.name]
        ok = result.success.cpu()
        results[source.name], success[source.name] = result, ok
        if progress:
            progress(
                f"  {source.name}: {int(ok.sum())}/{len(ok)} fooled; feeding them to {', '.join(t.name for t in targets)}"
            )
        for target in targets:
            pred = target_preds[target.name]
            hit = ok & (pred != y_sel)
            preds[source.name, target.name], fooled[source.name, target.name] = pred, hit
            k, m = int(hit.sum()), int(ok.sum())
            low, high = wilson_interval(k, m)
            row = {
                "source": source.name,
                "target": target.name,
                "attack": result.attack,
                "eps": result.eps,
                "n_attacked": len(y_sel),
                "n_source_fooled": m,
                "n_target_fooled": k,
                "transfer_rate": k / m if m else math.nan,
                "ci_low": low,
                "ci_high": high,
                "white_box": target is source,
            }
            if target_class is not None:
                reached = int((ok & (pred == target_class)).sum())
                row.update(
                    target_class=target_class, n_target_hit=reached, target_hit_rate=reached / m if m else math.nan
                )
            rows.append(row)

    table = pd.DataFrame(rows)
    matrix = table.pivot(index="source", columns="target", values="transfer_rate")
    matrix = matrix.loc[[s.name for s in sources], [t.name for t in targets]]
    first = next(iter(results.values()))
    return TransferResult(
        table=table,
        matrix=matrix,
        sources=[s.name for s in sources],
        targets=[t.name for t in targets],
        attack=first.attack,
        eps=first.eps,
        constraints=first.constraints,
        criterion=first.criterion,
        target_class=target_class,
        seed=seed,
        indices=indices,
        x=x_sel,
        y=y_sel,
        results=results,
        source_success=success,
        target_pred=preds,
        target_fooled=fooled,
        n_candidates=int(pool.numel()),
        n_common_correct=n_common,
        extra={
            **({} if where is None else {"executor": where.summary()}),
            **({} if gradient is None else {"gradient": first.extra.get("gradient", gradient)}),
        },
    )


def _attack_and_feed(source: ModelAdapter, targets, x: Tensor, y: Tensor, run: dict) -> tuple[AttackResult, dict]:
    """The source's attack on ``(x, y)`` and every target's predicted class on its adversarial inputs."""
    from advkit.runner import make_attack, run_attack

    device = source.device
    result = run_attack(
        source,
        make_attack(run["attack"], **run["attack_params"]),
        x.to(device),
        y.to(device),
        constraint=_constraint_for(source, run["constraints"], run["eps"]),
        eps=run["eps"],
        target=run["target_class"],
        confidence=run["confidence"],
        budget=run["budget"],
        seed=run["seed"],
        batch_size=run["batch_size"],
        gradient=run.get("gradient"),
    )
    x_adv = result.x_adv.detach()
    preds = {t.name: t.predict(x_adv.to(t.device), run["batch_size"]).argmax(1).cpu() for t in targets}
    return result, preds


def transfer_shard(context, x: Tensor, y: Tensor, *, source: str, targets: list[str], run: dict
                   ) -> tuple[AttackResult, dict]:  # fmt: skip
    """A task of a distributed transfer study (see :mod:`advkit.executors`): one shard's samples attacked on
    ``source`` and fed to ``targets`` (models the worker holds in ``context``), as :func:`transfer_matrix` does."""
    model = context.model(source)
    result, preds = _attack_and_feed(model, [context.model(t) for t in targets], x, y, run)
    return _moved(result, "cpu"), preds


def _moved(result: AttackResult, device: Any) -> AttackResult:
    """``result`` with its tensors on ``device``."""
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return dataclasses.replace(result, **{k: v.to(device) for k, v in fields.items() if isinstance(v, Tensor)})


def _attack_and_feed_on(executor, sources, targets, x: Tensor, y: Tensor, run: dict, progress):
    """:func:`_attack_and_feed` as one task per (source, sample shard) on ``executor``; merged per sample."""
    import time

    from advkit.executors import Task, progress_bar, put_shards, shard_size_for, shards
    from advkit.result import merge_results

    everyone = _unique([*sources, *targets])
    clock = time.perf_counter()
    parts: dict[tuple[str, int], tuple[AttackResult, dict]] = {}
    with executor:
        info = executor.begin_run()
        ranges = shards(len(y), shard_size_for(len(y), executor))
        info.shard_size = ranges[0][1] - ranges[0][0]
        data = put_shards(executor, x, y, ranges)
        shipped = {m.name: executor.put(m) for m in everyone}
        tasks = []
        for source in sources:
            needed = [source.name, *(t.name for t in targets if t.name != source.name)]
            for begin, end in ranges:
                kwargs = dict(
                    source=source.name, targets=[t.name for t in targets], run=run,
                    _adapters={name: shipped[name] for name in needed},
                )  # fmt: skip
                label = f"{source.name} samples {begin}-{end}"
                task = Task(key=(source.name, begin), func=transfer_shard, kwargs=kwargs, label=label)
                task.x, task.y = data[begin]
                tasks.append(task)
        info.tasks = len(tasks)
        if progress:
            progress(f"attacking {', '.join(s.name for s in sources)} with {run['attack']}: {len(tasks)} tasks")
        bar = progress_bar(len(tasks), progress is not None, "transfer")
        for task, out, seconds in executor.run(tasks):
            if info.first_result_seconds is None:
                info.first_result_seconds = time.perf_counter() - clock
            info.task_seconds.append(seconds)
            parts[task.key] = out
            bar.update(1)
        bar.close()
    outcomes = {}
    device = x.device
    for source in sources:
        shard_outs = [parts[(source.name, begin)] for begin, _ in ranges]
        result = merge_results([r for r, _ in shard_outs])
        preds = {t.name: torch.cat([p[t.name] for _, p in shard_outs]) for t in targets}
        outcomes[source.name] = (_moved(result, device), preds)
    info.wall_seconds = time.perf_counter() - clock
    return outcomes, info


def transfer_figure(result: TransferResult, title: str | None = None):
    """Heatmap (a ``matplotlib.figure.Figure``): sources on rows, targets on columns, share and k/n in each cell."""
    import numpy as np
    from matplotlib.figure import Figure

    values = result.matrix.to_numpy(dtype=float)
    counts = result.counts().to_numpy()
    cells = result.table.set_index(["source", "target"])
    hits = None
    if "n_target_hit" in cells.columns:
        hits = np.array([[int(cells.loc[(s, t), "n_target_hit"]) for t in result.targets] for s in result.sources])
    cis = np.array(
        [[(cells.loc[(s, t), "ci_low"], cells.loc[(s, t), "ci_high"]) for t in result.targets] for s in result.sources]
    )
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(7.0, 1.5 * n_cols + 2.8), max(3.6, 1.15 * n_rows + 2.2)), layout="constrained")
    ax = fig.add_subplot()
    shown = np.ma.masked_invalid(values)
    cmap = _cmap()
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            value = values[i, j]
            white_box = result.sources[i] == result.targets[j]
            if math.isnan(value):
                text, color = f"n/a\n{counts[i, j]}\nno source success", "black"
            else:
                low, high = cis[i, j]
                text = f"{value:.2f}\n{counts[i, j]}\n" + ("white-box" if white_box else f"[{low:.2f}, {high:.2f}]")
                if hits is not None and not white_box:
                    text += f"\n{hits[i, j]} read as {result.target_class}"
                color = "white" if value > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=11 if n_cols <= 4 else 9)
            if white_box:
                ax.add_patch(_patch(j, i))
    ax.set_xticks(range(n_cols), result.targets)
    ax.set_yticks(range(n_rows), result.sources)
    ax.set_xlabel("target model (fed the source's adversarial examples)")
    ax.set_ylabel("source model (attacked white-box)")
    ax.tick_params(length=0)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    colorbar.set_label("share of source-fooling examples\nthat also fool the target")
    if title is None:
        title = transfer_title(result)
    fig.suptitle(title, fontsize=10)
    return fig


def transfer_title(result: TransferResult) -> str:
    """Attack, eps (model units and 0-1 scale), constraint set, success criterion and the selection, one per line."""
    first = next(iter(result.results.values()))
    low, high = first.bounds
    eps = "" if result.eps is None else f", eps {result.eps:g} ({result.eps / (high - low):.4g} on the 0-1 scale)"
    goal = "" if result.target_class is None else f" towards class {result.target_class}"
    return (
        f"Transfer of {result.attack}{goal} examples{eps}\n"
        f"constraints: {result.constraints}\n"
        f"source fooled: {result.criterion} (re-checked); target fooled: wrong class\n"
        f"{result.n_attacked} test samples every model classifies correctly; cell: share, k/n, 95% CI"
    )


def _cmap():
    from matplotlib import colormaps

    return colormaps["Reds"].with_extremes(bad="#dddddd")


def _patch(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="#888888", linewidth=0)
