"""The attack study behind ``advkit attack``: the first n correctly classified samples of a data set, attacked under a
threat model, summarized, optionally tested for survival under transforms, and written to a report folder.

Python::

    from advkit import load_dataset, load_model
    from advkit.studies.attack import attack_study

    model = load_model("bnn")
    study = attack_study(model, load_dataset("mnist"), "untargeted", eps=0.1, n=100)
    print(study.format())
    study.write("runs/s2")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advkit.attack import Attack
from advkit.datasets import Dataset, class_interleaved_order
from advkit.errors import AdvkitError, AttackError, ParameterError
from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.result import AttackResult

__all__ = ["AttackStudy", "attack_study", "class_interleaved_order", "format_summary"]


@dataclass
class AttackStudy:
    """An attack on the first n correctly classified samples of a data set, with the survival study if asked."""

    model: ModelAdapter
    dataset: Dataset
    result: AttackResult
    indices: torch.Tensor  # the samples attacked, as indices into the data set
    target: int | None
    label: int | None
    n_requested: int
    survival: Any = None  # the per-(sample, transform) frame of advkit.survival.Survival, when asked
    extra: dict = field(default_factory=dict)
    #: the indicators of attack failure (:mod:`advkit.indicators`), None when not computed
    indicators: list[dict] | None = None
    #: with ``adaptive``: the rerun with the raised flags' fixes (None when nothing was rerun)
    adaptive_result: AttackResult | None = None
    #: with ``adaptive``: the fix run and the indicators after it
    adaptive: dict | None = None

    def summary(self) -> dict:
        """The JSON-able summary ``advkit attack --json`` prints."""
        from advkit.survival import Survival

        summary = self.result.summary()
        summary.update(
            data=self.dataset.source or self.dataset.name,
            data_spec=self.dataset.spec,
            indices=self.indices.tolist(),
            target=self.target,
            label=self.label,
            n_requested=self.n_requested,
            device=str(self.model.device),
            randomized=bool(self.model.metadata.get("stochastic")),
            **{key: self.model.metadata[key] for key in MODEL_PROVENANCE if key in self.model.metadata},
            **self.extra,
        )
        if self.survival is not None:
            table = Survival.table(self.survival).round(3)
            summary["survival"] = table.to_dict(orient="records") if len(self.survival) else None
        if self.indicators is not None:
            summary["indicators"] = self.indicators
        if self.adaptive is not None:
            after = self.adaptive_result
            summary["adaptive"] = {
                **self.adaptive,
                **(
                    {
                        "success_before": self.result.success_rate, "success_after": after.success_rate,
                        "n_success_after": int((after.success & after.correct).sum()),
                        "forward_passes_after": after.forward_passes, "backward_passes_after": after.backward_passes,
                        "seconds_after": after.seconds,
                    }
                    if after is not None
                    else {}
                ),
            }  # fmt: skip
        return summary

    def format(self) -> str:
        """A short human summary."""
        return format_summary(self.summary())

    def write(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """examples.safetensors, examples.png, summary.json (and survival.csv, survival.png) in ``out``, claimed first
        (:mod:`advkit.outputs`: never over files advkit did not write, unless ``overwrite``)."""
        from advkit.figures import example_grid, save_figure
        from advkit.files import write_tensors
        from advkit.outputs import claim, record

        out = claim(out, "attack", overwrite=overwrite)
        r = self.result
        examples = write_tensors(
            {"x": r.x, "x_adv": r.x_adv, "y": r.y, "pred": r.pred, "confidence": r.confidence, "success": r.success},
            out / "examples.safetensors",
        )
        written = [examples, save_figure(example_grid(r, self.model.class_names), out / "examples.png")]
        if self.adaptive_result is not None:
            a = self.adaptive_result
            written.append(write_tensors(
                {"x_adv": a.x_adv, "pred": a.pred, "confidence": a.confidence, "success": a.success},
                out / "adaptive_examples.safetensors",
            ))  # fmt: skip
        if self.survival is not None and len(self.survival):
            written += self._write_survival(out)
        summary_path = out / "summary.json"
        written.append(summary_path)
        write_summary(summary_path, {**self.summary(), "out": [str(p) for p in written]})
        record(out, written)
        return written

    def _write_survival(self, out: Path, max_figure_rows: int = 6) -> list[Path]:
        from advkit.figures import save_figure
        from advkit.studies.fool import survival_figure
        from advkit.survival import Survival

        self.survival.to_csv(out / "survival.csv", index=False, float_format="%.4f")
        fooled = self.result.success.nonzero().squeeze(1)
        evaluator = Survival()
        shown = self.survival[self.survival["sample"] < max_figure_rows]
        images = evaluator.transformed(self.result.x_adv[fooled[:max_figure_rows]], self.model.bounds)
        figure = survival_figure(self.model, shown, images, evaluator, float(self.result.eps or 0))
        return [out / "survival.csv", save_figure(figure, out / "survival.png")]


def attack_study(
    model: ModelAdapter,
    dataset: Dataset,
    attack: str | Attack,
    *,
    eps: float | None,
    constraints: str | list[str] = "linf,box",
    n: int = 100,
    label: int | str | None = None,
    target: int | str | None = None,
    confidence: float | None = None,
    budget: int | None = None,
    seed: int = 0,
    survival: bool = False,
    batch_size: int | str = "auto",
    gradient: Any = None,
    indicators: bool = True,
    adaptive: bool = False,
    **attack_params: Any,
) -> AttackStudy:
    """Attack the first ``n`` samples of ``dataset`` (class-interleaved) that ``model`` classifies correctly.

    ``eps`` sizes the named ``constraints`` (the model's box always applies; ``eps=None`` asks for a run bounded only
    by the named sets). ``gradient``: a gradient estimator spec (see :mod:`advkit.gradients`). ``label`` keeps only samples of that class; a ``target`` (index or class name) makes the
    attack targeted and leaves out samples already of the target class. The data set is checked against the model
    (shape, value range, classes) before anything runs.

    ``indicators``: compute the indicators of attack failure on the first samples (:mod:`advkit.indicators`; not for
    attacks that couple samples, such as ``universal``, whose run on a few samples is another run).
    ``adaptive``: rerun the whole attack with the fixes the raised flags carry (:func:`advkit.indicators.rerun_spec`)
    and compute the indicators again; the summary shows both runs.
    """
    from advkit import registry
    from advkit.classes import resolve_class
    from advkit.constraints import build_constraints
    from advkit.runner import make_attack, run_attack
    from advkit.validation import check_eps_in_range

    attack = make_attack(attack, **attack_params)
    names = model.class_names
    label_index = None if label is None else resolve_class(names, label, what="--label")
    target_index = None if target is None else resolve_class(names, target, what="--target")
    if target_index is not None and target_index == label_index:
        raise ParameterError(f"--target {target_index} equals the true label --label {label_index}")
    if attack.requires_target and target_index is None:
        raise ParameterError(f"attack {attack.name!r} is targeted: give --target")
    if target_index is not None and not attack.accepts_target:
        raise ParameterError(
            f"--target: attack {attack.name!r} is untargeted (it ignores target classes); use a targeted attack, "
            "e.g. --attack targeted or apgd_targeted"
        )
    constraint = build_constraints(constraints, eps=eps, bounds=model.bounds, registry=registry.constraints())
    check_eps_in_range(model, constraint)  # before any data is read: the same rule as sweeps and run_attack
    indices, x, y = dataset.select(model, n, label=label_index, exclude_class=target_index, batch_size=batch_size)
    # the indicators of attack failure read the run's own path on its first samples (a per-sample attack only: one
    # that couples samples, such as universal, would be another run on a few)
    traced = (indicators or adaptive) and attack.per_sample
    run = dict(constraint=constraint, target=target_index, confidence=confidence, budget=budget, seed=seed)
    try:
        if traced:
            from advkit.indicators import traced_run

            targets = None if target_index is None else torch.full_like(y, target_index)
            result, path = traced_run(
                model, attack, x, y, **{**run, "target": targets}, gradient=gradient, batch_size=batch_size
            )  # fmt: skip
        else:
            result = run_attack(model, attack, x, y, eps=eps, batch_size=batch_size, gradient=gradient, **run)
    except AdvkitError:
        raise
    except (ValueError, RuntimeError) as error:  # an attack plugin refusing its problem says so in one line
        raise AttackError(f"attack {attack.name!r}: {error}") from None
    frame = _survival(model, result) if survival else None
    study = AttackStudy(
        model=model,
        dataset=dataset,
        result=result,
        indices=indices,
        target=target_index,
        label=label_index,
        n_requested=n,
        survival=frame,
    )
    if traced:
        from advkit.indicators import indicators_from

        study.indicators = indicators_from(path, model, attack, confidence=confidence, seed=seed, gradient=gradient)
        if adaptive:
            _adaptive(study, model, attack, x, y, gradient=gradient, batch_size=batch_size, **run)
    return study


def _survival(model: ModelAdapter, result: AttackResult):
    """The survival study on the successful examples (an empty frame when none succeeded)."""
    import pandas as pd

    from advkit.survival import COLUMNS, Survival

    fooled = result.success.nonzero().squeeze(1)
    if fooled.numel() == 0:
        return pd.DataFrame(columns=COLUMNS)
    target = None if result.target is None else result.target[fooled]
    names = [f"true {model.class_names[int(c)]}" for c in result.y[fooled]]
    return Survival().evaluate(
        model, result.x_adv[fooled], target=target, labels=result.y[fooled], x=result.x[fooled], names=names
    )


def _adaptive(study: AttackStudy, model, attack: Attack, x, y, *, gradient, batch_size, target, **run) -> None:
    """Rerun the attack with the merged fix of the raised flags, its path traced for the indicators after."""
    from advkit.indicators import describe_fix, fresh_attack, indicators_from, rerun_spec, traced_run

    fix = rerun_spec(study.indicators or [])
    if fix is None:
        study.adaptive = {"fix": None, "fix_text": "", "rerun": False}
        return
    fields = set(attack.params())
    fixed = fresh_attack(attack, {k: v for k, v in fix["params"].items() if k in fields})
    fixed_gradient = fix["gradient"] or gradient
    targets = None if target is None else torch.full_like(y, target)
    after, path = traced_run(
        model, fixed, x, y, target=targets, gradient=fixed_gradient, batch_size=batch_size, **run
    )  # fmt: skip
    study.adaptive_result = after
    study.adaptive = {
        "fix": fix, "fix_text": describe_fix(fix), "rerun": True,
        "indicators_after": indicators_from(
            path, model, fixed, confidence=run["confidence"], seed=run["seed"], gradient=fixed_gradient
        ),
    }  # fmt: skip


#: What the summary records of where a model of your own came from (``advkit.model_specs``).
MODEL_PROVENANCE = ("weights", "weights_sha256", "code_sha256")


def format_summary(s: dict) -> str:
    """A short human summary of an attack run."""
    from advkit.indicators import format_indicators

    low, high = s["bounds"]
    eps01 = s["eps_01"]
    eps_line = (
        f"{s['eps']:g} in model units [{low:g}, {high:g}] = {eps01:.4f} on the 0-1 scale"
        if s["eps"] is not None
        else "none (unbounded: only the sets above bound the perturbation)"
    )
    fewer = f" (only {s['n']} available)" if s["n"] < s["n_requested"] else ""
    source = f" class {s['label']}" if s.get("label") is not None else ""
    target = (
        f"{source} -> target {s['target']}"
        if s["target"] is not None
        else (f" ({source.strip()} only)" if source else "")
    )
    succ_conf = s["mean_confidence_success"]
    lines = [
        f"advkit {s['attack']} on {s['model']}{target}: {s['n']} correctly classified test samples{fewer} [{s['data']}]",
        f"  threat model   {s['constraints']}",
        f"  eps            {eps_line}",
        f"  success        {s['n_success']}/{s['n']} = {100 * s['success_rate']:.1f}%  ({s['criterion']}, re-checked by a fresh forward pass)",
        f"  misclassified  {100 * s['misclassified_rate']:.1f}%   mean confidence {s['mean_confidence']:.3f}"
        + (f" (fooled: {succ_conf:.3f})" if succ_conf is not None else ""),
        f"  perturbation   mean L-inf {s['mean_linf']:.4f}, max L-inf {s['max_linf']:.4f}, mean L2 {s['mean_l2']:.4f}",
        f"  passes         {s['forward_passes']} forward, {s['backward_passes']} backward"
        + (
            f", at most {s['max_backward_per_sample']} per sample"
            if s.get("max_backward_per_sample") is not None
            else ""
        )
        + (f" (budget {s['budget']})" if s["budget"] else "")
        + f"; {s['seconds']:.2f} s; seed {s['seed']}",
        f"  plugin         {s['plugin']['name']} {s['plugin']['version'] or ''}".rstrip(),
    ]
    if s.get("gradient"):
        lines.append(f"  gradient       {s['gradient']} (what the attack differentiated; success judged on the model)")
    if s.get("randomized"):
        lines.append(
            "  randomized     the model's outputs are random: success is one draw per point (advkit evaluate "
            "--version rand counts a sample robust only if it survives k draws)"
        )
    if s.get("weights_sha256"):
        lines.append(f"  weights        {s['weights']} (sha256 {s['weights_sha256']})")
    if s.get("indicators") is not None:
        lines += format_indicators(s["indicators"])
    if s.get("adaptive") is not None:
        a = s["adaptive"]
        if not a["rerun"]:
            lines.append("  adaptive       no raised flag carries a fix: nothing rerun")
        else:
            lines.append(
                f"  adaptive       rerun with {a['fix_text']}: success {100 * a['success_before']:.1f}% -> "
                f"{100 * a['success_after']:.1f}% ({a['n_success_after']}/{s['n']}); {a['forward_passes_after']} "
                f"forward, {a['backward_passes_after']} backward, {a['seconds_after']:.2f} s"
            )
            still = [f for f in a["indicators_after"] if f["status"] == "flag"]
            lines.append(
                "                 after the rerun: "
                + ("no indicator raised" if not still else "; ".join(f"{f['check']}" for f in still) + " still raised")
            )
    if s.get("survival"):
        survived = ", ".join(
            f"{row['transform']} {row['survival_rate']:.2f}"
            + (
                f" (still wrong {row['still_fooled_rate']:.2f}, clean {row['clean_accuracy']:.2f})"
                if "clean_accuracy" in row
                else ""
            )
            for row in s["survival"]
        )
        lines.append(f"  survival       {survived}")
        lines.append(
            "                 share of fooled examples still fooling after each transform while the transformed"
            " clean image is still right (still wrong: whatever the clean image does; clean: accuracy on the"
            " transformed clean images)"
        )
    if s.get("out"):
        lines.append(f"  wrote          {', '.join(s['out'])}")
    return "\n".join(lines)
