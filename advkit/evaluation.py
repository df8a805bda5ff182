"""``advkit evaluate``: robust accuracy under a cascade of attacks, each run only on the samples still robust.

A stage is one registered attack with its parameters, run through :func:`advkit.runner.run_attack` (so every stage
gets the runner's guarantees: the threat model enforced, passes counted, success re-checked by a fresh forward pass)
on the samples that the model classifies correctly and that no earlier stage fooled. A sample counts as robust only
if every stage failed on it; a sample any stage fooled is never robust (the final result re-checks every fooled
sample's point once more). The report says which stage first broke each sample and the passes and seconds of each.

Randomized models (``version="rand"``, AutoAttack's rand version with a worst-of-k verdict): every stage
differentiates the model through ``eot:identity,samples=K`` (the logits averaged over K calls, so K forward and K
backward passes per step and sample, all counted), and a sample counts as robust only if the model classifies its
clean input and every stage's final point correctly in each of k re-evaluations (``reevaluations``); a sample any
stage or any re-evaluation fooled is not robust. Clean accuracy is worst-of-k as well. Each stage, the clean
check, the re-evaluations and the checks run with torch's global RNG forked and seeded from (seed, stage) and with
every ``torch.Generator`` a module of the model holds as ``generator`` seeded the same way (both restored after):
the evaluation, and its resume, are reproducible, and the caller's random state is untouched.

Resume: with ``out``, each finished stage is written atomically to ``OUT/stages/NN-NAME.safetensors`` with the
evaluation's fingerprint (model weights, data, eps, norm, cascade, seed) and the indices it attacked; a rerun after
``kill -9`` loads the finished stages (checking the fingerprint, the indices, the points' distance and their success
with a fresh forward pass) and runs the rest, ending with identical results.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advkit.batching import AUTO, DEFAULT_BATCH_SIZE, chunked, inference_batch_size
from advkit.constraints import Constraint, L2Ball, LinfBall
from advkit.errors import AdvkitError, ParameterError
from advkit.files import atomic_write_bytes
from advkit.models import ModelAdapter
from advkit.stats import wilson_interval

__all__ = ["CASCADES", "EvaluationResult", "EvaluationStoreError", "Stage", "cascade", "evaluate"]

NORMS = ("linf", "l2")
#: ``version="rand"``'s defaults: EOT draws per gradient (AutoAttack's eot_iter) and re-evaluations per point.
RAND_EOT_SAMPLES, RAND_REEVALUATIONS = 20, 10
#: The most re-evaluations per point.
MAX_REEVALUATIONS = 1000


@dataclass(frozen=True)
class Stage:
    """One attack of a cascade: a registered attack name and its parameters."""

    attack: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = self.params.get("targets") or (self.params.get("loss") if self.params.get("loss") != "ce" else None)
        return f"{self.attack}[{extra}]" if extra else self.attack


#: The cascades by version, chosen by measurement (benchmarks/bench_evaluate.py; docs/attacks.md#advkit-evaluate):
#: "standard": APGD-CE; APGD-T (DLR loss) on MALT's 4 most promising targets per sample, 75 steps each (advkit's
#: replacement for AutoAttack's nine targets of 100 steps; the same 300 steps per sample as 3 targets of 100, and on
#: 200 digits it broke every digit that 3 x 100 broke, plus one whose breaking class MALT ranks 4th); Square with 200
#: queries as the black-box check. The 4 targets run at once (``schedule="parallel"``: a sample's targets are one
#: group of rows that stops together), so where few samples are left the model still gets full batches (madry_adv at
#: 0.35, 13 digits left: the stage took 2.4 s instead of 3.3 s, fooling the same 3). On 100 digits of s6_adv and
#: madry_adv at 3 eps each, FAB-T (3 targets) after the APGD stages broke no digit, nor did Square at AutoAttack's
#: 5,000 queries, while the two cost half of the cascade's time. "fast": APGD-CE, then APGD-T on MALT's best target
#: (100 steps). "plus": AutoAttack's four families at its Square budget: standard's gradient stages, FAB-T on the 3
#: top-logit classes (each sample stopping once fooled within eps), Square with 5,000 queries. "rand": AutoAttack's
#: rand version (APGD-CE and untargeted APGD-DLR, one restart each), meant to run with EOT gradients and a worst-of-k
#: verdict (see the module docstring).
CASCADES: dict[str, list[Stage]] = {
    "standard": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd_targeted", {"targets": "malt", "top_k": 4, "steps": 75, "loss": "dlr", "schedule": "parallel"}),
        Stage("square", {"steps": 200}),
    ],
    "fast": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd_targeted", {"targets": "malt", "top_k": 1, "steps": 100, "loss": "dlr"}),
    ],
    "plus": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd_targeted", {"targets": "malt", "top_k": 4, "steps": 75, "loss": "dlr", "schedule": "parallel"}),
        Stage("fab", {"top_k": 3, "steps": 100, "early_stop": True}),
        Stage("square", {"steps": 5000}),
    ],
    "rand": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd", {"loss": "dlr", "steps": 100}),
    ],
}


class EvaluationStoreError(AdvkitError, RuntimeError):
    """A stored stage that does not belong to this evaluation or fails its checks."""


def cascade(version: str, norm: str) -> list[Stage]:
    """The stages of ``version`` for ``norm`` (a ParameterError if a version, a norm or a stage's attack is unknown)."""
    from advkit import registry

    if version not in CASCADES:
        raise ParameterError(f"unknown version {version!r}; valid: {', '.join(CASCADES)}")
    if norm not in NORMS:
        raise ParameterError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    stages = []
    for stage in CASCADES[version]:
        if stage.attack not in registry.attacks():
            raise ParameterError(f"the {version} cascade needs attack {stage.attack!r}, which is not registered")
        params = dict(stage.params)
        fields = {f.name for f in registry.get_attack(stage.attack).obj.param_fields()}
        if "norm" in fields:
            params["norm"] = norm
        stages.append(Stage(stage.attack, params))
    return stages


@dataclass
class EvaluationResult:
    """Per-sample outcome of a cascade, with per-stage costs."""

    model: str
    eps: float
    norm: str
    version: str
    seed: int
    y: Tensor
    clean_correct: Tensor
    robust: Tensor
    #: per sample: index of the stage that first fooled it, -1 if none did (or it was misclassified clean)
    broken_by: Tensor
    x_adv: Tensor
    stages: list[dict]
    checks: list[dict]
    seconds: float
    #: backward passes per sample over the cascade, and the cap on them (None: none)
    backward_counts: Tensor | None = None
    budget: int | None = None
    #: where the work ran (:meth:`advkit.executors.ExecutorInfo.summary`); None: in this process
    executor: dict | None = None
    #: the gradient estimator every stage differentiated the model through (:mod:`advkit.gradients`); None: none
    gradient: str | None = None
    #: EOT draws per gradient over the model's own randomness, and re-evaluations per point (None: single passes)
    eot_samples: int | None = None
    reevaluations: int | None = None
    #: forward passes of the clean check (reevaluations x n with a worst-of-k verdict, else not counted: 0)
    clean_forward_passes: int = 0
    #: the indicators of attack failure of the first stage on samples the cascade left robust (None: not computed)
    indicators: list[dict] | None = None
    #: with ``adaptive``: the rerun with the raised flags' fixes (:meth:`adaptive_summary`); None: not asked
    adaptive_result: EvaluationResult | None = None
    adaptive_fix: dict | None = None

    @property
    def evaluated(self) -> str:
        """How the model was evaluated: gradients and verdicts, in words."""
        if self.reevaluations is not None:
            grads = f"EOT over {self.eot_samples} draws ({self.gradient})" if self.eot_samples else (
                f"gradients through {self.gradient}" if self.gradient else "plain gradients"
            )  # fmt: skip
            return (
                f"{grads} in every stage; robust only if classified correctly in all {self.reevaluations} "
                "re-evaluations of the clean input and of every stage's final point (worst of k; clean accuracy too)"
            )
        grads = f"gradients through {self.gradient}" if self.gradient else "plain gradients"
        verdict = "verdicts from one forward pass per point"
        if self.randomized:
            verdict += " of a randomized model: the robust accuracy may be too high (use version rand)"
        return f"{grads}; {verdict}"

    @property
    def randomized(self) -> bool:
        """Whether the model's outputs were random (the deterministic_outputs check)."""
        return any(c["check"] == "deterministic_outputs" and c.get("randomized") for c in self.checks)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def summary(self) -> dict:
        k, n = int(self.robust.sum()), self.n
        low, high = wilson_interval(k, n)
        return {
            "model": self.model,
            "eps": self.eps,
            "norm": self.norm,
            "version": self.version,
            "seed": self.seed,
            "gradient": self.gradient,
            "eot_samples": self.eot_samples,
            "reevaluations": self.reevaluations,
            "evaluated": self.evaluated,
            "budget": self.budget,
            "max_backward_per_sample": (
                None if self.backward_counts is None or not n else int(self.backward_counts.max())
            ),
            "n": n,
            "clean_accuracy": float(self.clean_correct.float().mean()),
            "robust_accuracy": k / n,
            "robust_accuracy_95ci": [float(low), float(high)],
            "n_robust": k,
            "stages": self.stages,
            "checks": self.checks,
            "forward_passes": sum(s["forward_passes"] for s in self.stages),
            "clean_forward_passes": self.clean_forward_passes,
            "backward_passes": sum(s["backward_passes"] for s in self.stages),
            "seconds": self.seconds,
            "executor": self.executor,
            **({"indicators": self.indicators} if self.indicators is not None else {}),
            **({"adaptive": self.adaptive_summary()} if self.adaptive_fix is not None else {}),
        }

    def adaptive_summary(self) -> dict:
        """The adaptive rerun: its fix, its robust accuracy, and the robust accuracy of both runs together (a sample
        either run broke is not robust)."""
        after = self.adaptive_result
        if after is None:
            return {"fix": None, "fix_text": "", "rerun": False}
        from advkit.indicators import describe_fix

        both = self.robust & after.robust
        k = int(both.sum())
        low, high = wilson_interval(k, self.n)
        return {
            "fix": self.adaptive_fix, "fix_text": describe_fix(self.adaptive_fix), "rerun": True,
            "robust_accuracy_after": float(after.robust.float().mean()),
            "robust_accuracy_both": k / self.n, "robust_accuracy_both_95ci": [float(low), float(high)],
            "evaluated_after": after.evaluated, "seconds_after": after.seconds,
            "forward_passes_after": sum(s["forward_passes"] for s in after.stages),
            "backward_passes_after": sum(s["backward_passes"] for s in after.stages),
            "checks_after": after.checks, "indicators_after": after.indicators,
        }  # fmt: skip

    def per_sample_rows(self) -> list[dict]:
        labels = [s["label"] for s in self.stages]
        rows = []
        for i in range(self.n):
            stage = int(self.broken_by[i])
            rows.append({
                "sample": i,
                "label": int(self.y[i]),
                "clean_correct": bool(self.clean_correct[i]),
                "robust": bool(self.robust[i]),
                "broken_by": labels[stage] if stage >= 0 else "",
            })  # fmt: skip
        return rows


def _threat(norm: str, eps: float) -> Constraint:
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ParameterError(f"eps must be a number > 0, got {eps!r}")
    return LinfBall(float(eps)) if norm == "linf" else L2Ball(float(eps))


def _distance(norm: str, delta: Tensor) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _stage_path(out: Path, i: int, stage: Stage) -> Path:
    return out / "stages" / f"{i:02d}-{stage.attack}.safetensors"


def _save_stage(path: Path, record: dict, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    data = save(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata={"record": json.dumps(record)}
    )
    atomic_write_bytes(path, data)


def _load_stage(path: Path, fingerprint: str, idx: Tensor) -> tuple[dict, dict[str, Tensor]] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads(f.metadata()["record"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # a truncated or foreign file: refuse, never guess
        raise EvaluationStoreError(
            f"{path} is not a readable advkit evaluation stage ({error}); delete it to rerun"
        ) from None
    if record.get("fingerprint") != fingerprint:
        raise EvaluationStoreError(
            f"{path} belongs to another evaluation (model, data, eps, norm, cascade or seed differ); use another --out "
            "or delete the folder's stages/"
        )
    if set(tensors) != {"idx", "success", "x_adv", "backward"} or not torch.equal(tensors["idx"], idx.cpu()):
        raise EvaluationStoreError(f"{path} attacked other samples than this evaluation would; delete it to rerun")
    return record, tensors


def evaluate(
    model: ModelAdapter | str,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    seed: int = 0,
    out: str | Path | None = None,
    batch_size: int | str = AUTO,
    stages: list[Stage] | None = None,
    budget: int | None = None,
    progress: bool = False,
    executor: Any = None,
    eot_samples: int | None = None,
    reevaluations: int | None = None,
    indicators: bool = True,
    adaptive: bool = False,
) -> EvaluationResult:
    """Robust accuracy of ``model`` on ``(x, y)`` at L-inf or L2 radius ``eps`` (model units) under a cascade.

    ``stages`` replaces the version's cascade (the result's ``version`` is then "custom"). ``budget``: backward
    passes per sample over the whole cascade; each stage gets, per sample, what the earlier stages left of it (a
    sample with nothing left is not attacked by later stages, and stays robust unless an earlier stage broke it).
    With ``out`` finished stages are stored and a rerun resumes from them. ``executor``: None (this process) or an
    executor of :mod:`advkit.executors`: one task per sample shard runs the whole cascade; the merged result is the
    in-process one (per-sample results), and finished shards are stored under ``OUT/shards/`` for a rerun.

    ``eot_samples`` (K): every stage differentiates the model through ``eot:identity,samples=K`` (the logits averaged
    over K calls: K forward and K backward passes per step and sample). ``reevaluations`` (k): a sample is robust only
    if its clean input and every stage's final point are classified correctly in all k further forward passes (clean
    accuracy is worst-of-k too). ``version="rand"`` (AutoAttack's rand cascade) sets them to 20 and 10 unless given;
    any cascade takes them. A randomized model (``metadata["stochastic"]``) with ``batch_size="auto"`` runs in chunks
    of :data:`~advkit.batching.DEFAULT_BATCH_SIZE` (its draws depend on which rows share a call).

    ``indicators``: the indicators of attack failure (:mod:`advkit.indicators`) of the first stage, read off its
    recorded path on its first 20 samples (rerun on the first 20 samples the cascade left robust when the stage was
    resumed or ran on an executor). ``adaptive``: rerun the
    evaluation (into ``OUT/adaptive/``) with the merged fix of every raised check and indicator (a gradient estimator
    for every stage, EOT with worst-of-k re-evaluations for a randomized model, parameters for every stage that has
    them); the result's :meth:`~EvaluationResult.adaptive_summary` gives both runs, and a sample either run broke.
    """
    from advkit.gradients import MAX_SAMPLES, with_gradient
    from advkit.models import load_model
    from advkit.params import check_batch_size, check_count
    from advkit.sweep import config_digest, model_fingerprint, tensor_digest
    from advkit.validation import check_inputs, check_labels

    budget = check_count(budget, "budget (backward passes per sample)", low=1)
    if version == "rand":
        eot_samples = RAND_EOT_SAMPLES if eot_samples is None else eot_samples
        reevaluations = RAND_REEVALUATIONS if reevaluations is None else reevaluations
    eot_samples = check_count(eot_samples, "eot_samples (EOT draws per gradient)", low=1, high=MAX_SAMPLES)
    reevaluations = check_count(
        reevaluations, "reevaluations (forward passes per point)", low=1, high=MAX_REEVALUATIONS
    )
    spec_ref = model if isinstance(model, str) else None  # else workers get the adapter through the object store
    model = load_model(model) if isinstance(model, str) else model
    if eot_samples is not None:
        if model.metadata.get("gradient"):
            raise ParameterError(
                f"eot_samples: the model already differentiates through {model.metadata['gradient']}; EOT over the "
                "model's own randomness replaces it: give one of the two"
            )
        model = with_gradient(model, f"eot:identity,samples={eot_samples}")
        spec_ref = None  # the workers get the wrapped adapter
    if model.metadata.get("stochastic") and check_batch_size(batch_size) == AUTO:
        batch_size = DEFAULT_BATCH_SIZE  # a measured size would make the draws depend on timing
    constraint = _threat(norm, eps)
    check_inputs(model, x)
    check_labels(model, y, x.shape[0])
    if stages is None:
        stages = cascade(version, norm)
    else:
        version = "custom"
    _check_stages(model, stages)
    clock = time.perf_counter()
    y = y.to(x.device)
    size = inference_batch_size(model, batch_size)
    fingerprint = config_digest({
        "model": model_fingerprint(model), "data": tensor_digest(x, y), "eps": float(eps), "norm": norm,
        "stages": [(s.attack, s.params) for s in stages], "seed": int(seed), "budget": budget,
        # only where they matter (earlier fingerprints unchanged): a random model's draws follow its chunks
        **({"reevaluations": reevaluations} if reevaluations is not None else {}),
        **({"batch_size": size} if model.metadata.get("stochastic") else {}),
    })  # fmt: skip
    run = dict(
        stages=stages, constraint=constraint, seed=seed, batch_size=batch_size, budget=budget, norm=norm, eps=eps,
        fingerprint=fingerprint, reevaluations=reevaluations,
    )  # fmt: skip
    info = None
    if executor is None:
        from advkit.indicators import PROBE_SAMPLES

        state = run_cascade(
            model, x, y, out=None if out is None else Path(out), progress=progress,
            trace=PROBE_SAMPLES if indicators or adaptive else 0, **run,
        )  # fmt: skip
    else:
        state, info = _cascade_on(executor, model, spec_ref, x, y, out, run, progress)
    clean_correct, robust, broken_by = state["clean_correct"], state["robust"], state["broken_by"]
    x_adv, spent, records = state["x_adv"], state["spent"], state["records"]
    _final_check(model, x, y, x_adv, robust, clean_correct, norm, eps, size)
    with _random_scope(model, x.device, seed, "checks"):
        checks = run_checks(model, x, y, clean_correct, records, size, reevaluations=reevaluations)
        _attach_fixes(model, x, y, clean_correct, checks)
        found = (
            _indicators(model, stages[0], x, y, robust, constraint, seed, state.get("path"))
            if indicators or adaptive
            else None
        )
    result = EvaluationResult(
        model=model.name, eps=float(eps), norm=norm, version=version, seed=int(seed),
        y=y, clean_correct=clean_correct, robust=robust, broken_by=broken_by, x_adv=x_adv, stages=records,
        checks=checks, seconds=time.perf_counter() - clock, backward_counts=spent, budget=budget,
        executor=None if info is None else info.summary(), gradient=model.metadata.get("gradient"),
        eot_samples=eot_samples, reevaluations=reevaluations,
        clean_forward_passes=0 if reevaluations is None else reevaluations * len(y), indicators=found,
    )  # fmt: skip
    if adaptive:
        _adaptive_rerun(
            result, model, x, y, eps=eps, norm=norm, version=version, seed=seed, out=out, batch_size=batch_size,
            stages=stages, budget=budget, progress=progress, executor=executor,
        )  # fmt: skip
    return result


def _attach_fixes(model: ModelAdapter, x: Tensor, y: Tensor, clean_correct: Tensor, checks: list[dict]) -> None:
    """The fix advkit can run for each raised check: EOT with worst-of-k for random outputs, BPDA around the modules
    that block the gradient for zero gradients or a black-box stage beating the white-box ones."""
    from advkit.indicators import bpda_fix, make_fix

    idx = clean_correct.nonzero().squeeze(1)[:100]
    for check in checks:
        check.setdefault("fix", None)
        if check["status"] != "flag":
            continue
        if check["check"] == "deterministic_outputs":
            check["fix"] = make_fix(
                f"rerun as --version rand does: EOT over {RAND_EOT_SAMPLES} draws, worst of {RAND_REEVALUATIONS}",
                gradient=f"eot:identity,samples={RAND_EOT_SAMPLES}",
            )
        elif check["check"] in ("zero_gradients", "black_box_after_white_box") and len(idx):
            base = getattr(model, "base", model)
            check["fix"] = bpda_fix(base, x[idx], y[idx], check["check"].replace("_", " "))


def _indicators(model, stage: Stage, x, y, robust: Tensor, constraint, seed: int, path=None) -> list[dict]:
    """The indicators of attack failure of the first stage: from its recorded path on its first samples when it ran
    in this process, else (a resumed stage, shards on an executor) from a rerun on the first samples the cascade left
    robust."""
    from advkit.indicators import INDICATORS, PROBE_SAMPLES, attack_indicators, flag, fresh_attack, indicators_from

    if path is not None:
        return indicators_from(path, model, fresh_attack(stage.attack, stage.params), seed=seed)
    idx = robust.nonzero().squeeze(1)[:PROBE_SAMPLES]
    if not len(idx):
        return [flag(name, name, model.name, stage.attack, True, "no sample left robust: nothing to doubt",
                     skipped=True) for name in INDICATORS]  # fmt: skip
    return attack_indicators(model, stage.attack, x[idx], y[idx], constraint=constraint, params=stage.params, seed=seed)


def _adaptive_rerun(result: EvaluationResult, model, x, y, *, out, stages, **run) -> None:
    """Rerun the evaluation with the merged fix of the raised checks and indicators (into ``OUT/adaptive``)."""
    from advkit.gradients import with_gradient
    from advkit.indicators import merge_fixes
    from advkit.registry import get_attack

    flags = [c for c in [*result.checks, *(result.indicators or [])] if c.get("status") == "flag"]
    fix = merge_fixes([f.get("fix") for f in flags])
    result.adaptive_fix = fix or {}
    if fix is None:
        return
    gradient = fix.get("gradient")
    unwrap = gradient is not None or result.eot_samples is not None  # evaluate wraps the model again
    base = model.base if unwrap and hasattr(model, "estimator") else model
    options: dict[str, Any] = {"eot_samples": result.eot_samples, "reevaluations": result.reevaluations}
    if gradient and gradient.startswith("eot:identity") and base.metadata.get("stochastic"):
        options = {"eot_samples": result.eot_samples or RAND_EOT_SAMPLES,
                   "reevaluations": result.reevaluations or RAND_REEVALUATIONS}  # fmt: skip
    elif gradient:
        options["eot_samples"] = None  # the fix's estimator replaces EOT; the worst-of-k verdict stays
        base = with_gradient(base, gradient)
    fixed = [
        Stage(s.attack, {
            **s.params,
            **{k: v for k, v in fix["params"].items() if k in {f.name for f in get_attack(s.attack).obj.param_fields()}},
        })
        for s in stages
    ]  # fmt: skip
    result.adaptive_result = evaluate(
        base, x, y, out=None if out is None else Path(out) / "adaptive", stages=fixed, indicators=True,
        **{**run, **options},
    )  # fmt: skip


def run_cascade(
    model: ModelAdapter, x: Tensor, y: Tensor, *, stages: list[Stage], constraint: Constraint, seed: int,
    batch_size, budget: int | None, norm: str, eps: float, fingerprint: str, out: Path | None = None,
    progress: bool = False, reevaluations: int | None = None, trace: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The cascade on ``(x, y)`` (stored per stage under ``out``): per-sample outcome and the stage records; with
    ``reevaluations`` (k) the clean check takes k passes and a last record re-evaluates the survivors' points."""
    size = inference_batch_size(model, batch_size)
    clean_correct = torch.ones_like(y, dtype=torch.bool)
    with _random_scope(model, x.device, seed, "clean"), model.eval_mode():
        for _ in range(reevaluations or 1):  # worst of k: correct in every pass
            clean_logits = chunked(model.logits, x, size)
            clean_correct &= (clean_logits.argmax(1) == y) & torch.isfinite(clean_logits).all(1)
    robust = clean_correct.clone()
    broken_by = torch.full_like(y, -1)
    spent = torch.zeros_like(y)  # backward passes per sample so far
    x_adv = x.detach().clone()
    records = []
    finals = []  # per stage: the samples it attacked and its final points (what the re-evaluations look at)
    traced = None  # the first stage's recorded path (advkit.indicators.Probe), when it ran here with ``trace``
    cost = getattr(model, "backward_per_call", 1)  # an EOT step's backward passes: a sample with less left is done
    for i, stage in enumerate(stages):
        idx = (robust & (spent + cost <= budget if budget is not None else True)).nonzero().squeeze(1)
        path = None if out is None else _stage_path(out, i, stage)
        stored = None if path is None else _load_stage(path, fingerprint, idx)
        if stored is not None:
            record, tensors = stored
            success, points = tensors["success"].to(x.device), tensors["x_adv"].to(device=x.device, dtype=x.dtype)
            backward = tensors["backward"].to(device=x.device, dtype=spent.dtype)
            with _random_scope(model, x.device, seed, f"stage {i}"):
                _verify_stored(model, path, x[idx], y[idx], points, success, norm, eps, size)
            if backward.shape != idx.shape or (budget is not None and bool((spent[idx] + backward > budget).any())):
                raise EvaluationStoreError(f"{path}: its pass counts do not fit this evaluation; delete it to rerun")
            record = {**record, "resumed": True}
        else:
            started = time.perf_counter()
            runs_on = model
            if i == 0 and trace:  # the first stage's path on its first samples, for the indicators of attack failure
                from advkit.indicators import Traced
                from advkit.runner import threat_model

                runs_on = tracer = Traced(model, x[idx][:trace], threat_model(model, constraint, None))
            with _random_scope(model, x.device, seed, f"stage {i}"):
                success, points, backward, forward = _run_stage(
                    runs_on, stage, x[idx], y[idx], constraint, seed + i, batch_size,
                    None if budget is None else budget - spent[idx],
                )  # fmt: skip
            if runs_on is not model:
                traced = _traced_path(tracer, stage, y[idx], success, points, constraint)
            record = {
                "stage": i, "attack": stage.attack, "params": stage.params, "label": stage.label,
                "fingerprint": fingerprint, "attacked": int(len(idx)), "fooled": int(success.sum()),
                "forward_passes": int(forward), "backward_passes": int(backward.sum()),
                "seconds": time.perf_counter() - started,
            }  # fmt: skip
            if path is not None:
                _save_stage(
                    path, record,
                    {"idx": idx.cpu(), "success": success.cpu(), "x_adv": points.cpu(), "backward": backward.cpu()},
                )  # fmt: skip
            record = {**record, "resumed": False}
        spent[idx] += backward.to(spent.device)
        if reevaluations is not None:
            finals.append((idx, points))
        fooled = idx[success]
        x_adv[fooled] = points[success]
        broken_by[fooled] = i
        robust[fooled] = False
        record = {k: v for k, v in record.items() if k != "fingerprint"}
        record["robust_after"] = float(robust.float().mean())
        records.append(record)
        if progress:
            print(f"  stage {i} {stage.label}: fooled {record['fooled']} of {record['attacked']}, robust after "
                  f"{100 * record['robust_after']:.1f}% ({record['seconds']:.1f} s)", flush=True)  # fmt: skip
    if reevaluations is not None:
        state = {"robust": robust, "broken_by": broken_by, "x_adv": x_adv}
        record = _reevaluate(model, y, finals, state, reevaluations, len(stages), seed, size)
        if progress:
            print(f"  {record['label']}: fooled {record['fooled']} of {record['attacked']}, robust after "
                  f"{100 * record['robust_after']:.1f}% ({record['seconds']:.1f} s)", flush=True)  # fmt: skip
        records.append(record)
    return {
        "clean_correct": clean_correct, "robust": robust, "broken_by": broken_by, "x_adv": x_adv, "spent": spent,
        "records": records, **({"path": traced} if traced is not None else {}),
    }  # fmt: skip


def _traced_path(tracer, stage: Stage, y: Tensor, success: Tensor, points: Tensor, constraint):
    """The recorded path of the first stage's watched samples (:class:`advkit.indicators.Probe`)."""
    from types import SimpleNamespace

    from advkit.criteria import criterion_for
    from advkit.runner import make_attack

    criterion = criterion_for(False, make_attack(stage.attack, **stage.params).success_confidence)
    run = SimpleNamespace(attack=stage.attack, success=success, x_adv=points)
    return tracer.probe(run, y, None, criterion, constraint)


def _reevaluate(model, y, finals, state, k: int, index: int, seed: int, size: int) -> dict:
    """Worst of k: every final point of the samples the stages left robust, through k forward passes; a sample
    misclassified (or non-finite) in any pass is fooled, with that point (``state`` updated in place). Every pass on
    every (sample, stage) pair is made and counted: k x pairs forward passes."""
    robust, broken_by, x_adv = state["robust"], state["broken_by"], state["x_adv"]
    started = time.perf_counter()
    survivors = int(robust.sum())
    pairs = [(idx[robust[idx]], points[robust[idx]]) for idx, points in finals]  # fixed before any pass
    with _random_scope(model, y.device, seed, "reevaluate"), model.eval_mode():
        for rows, points in pairs:
            if not len(rows):
                continue
            for _ in range(k):
                logits = chunked(model.logits, points, size)
                wrong = (logits.argmax(1) != y[rows]) | ~torch.isfinite(logits).all(1)
                hit = wrong & robust[rows]  # first pass that fools a sample keeps its point
                x_adv[rows[hit]] = points[hit]
                broken_by[rows[hit]] = index
                robust[rows[hit]] = False
    return {
        "stage": index, "attack": "reevaluate", "params": {"reevaluations": k}, "label": f"worst-of-{k}",
        "attacked": survivors, "fooled": survivors - int(robust.sum()),
        "forward_passes": k * sum(len(rows) for rows, _ in pairs), "backward_passes": 0,
        "seconds": time.perf_counter() - started, "resumed": False, "robust_after": float(robust.float().mean()),
    }  # fmt: skip


@contextmanager
def _random_scope(model: ModelAdapter, device: torch.device, seed: int, label: str) -> Iterator[None]:
    """Seed, for the block, torch's global RNG (forked: the caller's state comes back) and every ``torch.Generator`` a
    module of the model holds as ``generator`` (restored after) from ``(seed, label)``: a randomized model draws the
    same in a rerun or a resume, whatever ran before. No effect on a deterministic model."""
    key = int.from_bytes(hashlib.blake2b(f"{int(seed)}:{label}".encode(), digest_size=8).digest(), "little") >> 1
    own = [
        (m, m.generator, m.generator.get_state())
        for m in model.module.modules()
        if isinstance(getattr(m, "generator", None), torch.Generator)
    ]
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(key)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(key)
        for _, generator, _ in own:
            generator.manual_seed(key)
        try:
            yield
        finally:
            for module, generator, saved in own:
                if module.generator is generator:  # not replaced (e.g. moved to another device) meanwhile
                    generator.set_state(saved)


def evaluate_shard(context, x: Tensor, y: Tensor, *, ref: str, run: dict) -> dict[str, Any]:
    """A task of a distributed evaluation (see :mod:`advkit.executors`): the cascade on one shard's samples."""
    model = context.model(ref)
    state = run_cascade(model, x.to(model.device), y.to(model.device), **run)
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in state.items()}


_SHARD_TENSORS = ("clean_correct", "robust", "broken_by", "x_adv", "spent")


def _cascade_on(executor, model: ModelAdapter, spec_ref: str | None, x: Tensor, y: Tensor, out, run: dict, progress):
    """:func:`run_cascade` as one task per sample shard on ``executor``; shards finished are stored under
    ``OUT/shards/`` as they arrive (and reused on a rerun, after a fresh check of their broken samples)."""
    from advkit.executors import Task, progress_bar, put_shards, shard_size_for, shards

    out = None if out is None else Path(out)
    clock = time.perf_counter()
    parts: dict[int, dict] = {}
    with executor:
        info = executor.begin_run()
        ranges = shards(len(y), shard_size_for(len(y), executor))
        info.shard_size = ranges[0][1] - ranges[0][0]
        shipped = spec_ref is None
        ref = model.name if shipped else spec_ref
        adapter = executor.put(model) if shipped else None
        tasks = []
        for begin, end in ranges:
            path = None if out is None else out / "shards" / f"{begin}-{end}.safetensors"
            stored = (
                None if path is None else _load_shard(path, run["fingerprint"], model, x[begin:end], y[begin:end], run)
            )
            if stored is not None:
                parts[begin] = stored
                info.resumed_tasks += 1
                continue
            kwargs = dict(ref=ref, run=run)
            if shipped:
                kwargs["_adapters"] = {ref: adapter}
            tasks.append(Task(key=(begin, end), func=evaluate_shard, kwargs=kwargs, label=f"samples {begin}-{end}"))
        data = put_shards(executor, x, y, [task.key for task in tasks])
        for task in tasks:
            task.x, task.y = data[task.key[0]]
        info.tasks = len(tasks)
        bar = progress_bar(len(tasks), progress, "evaluate")
        for task, state, seconds in executor.run(tasks):
            if info.first_result_seconds is None:
                info.first_result_seconds = time.perf_counter() - clock
            info.task_seconds.append(seconds)
            begin, end = task.key
            if out is not None:
                _save_shard(out / "shards" / f"{begin}-{end}.safetensors", run["fingerprint"], state)
            parts[begin] = state
            bar.update(1)
        bar.close()
    ordered = [parts[begin] for begin, _ in ranges]
    device = x.device
    merged = {k: torch.cat([p[k] for p in ordered]).to(device) for k in _SHARD_TENSORS}
    merged["x_adv"] = merged["x_adv"].to(dtype=x.dtype)
    records = []
    for i, first in enumerate(ordered[0]["records"]):
        record = dict(first)
        for key in ("attacked", "fooled", "forward_passes", "backward_passes", "seconds"):
            record[key] = sum(p["records"][i][key] for p in ordered)
        record["resumed"] = all(p.get("resumed", False) for p in ordered)
        broken = (merged["broken_by"] >= 0) & (merged["broken_by"] <= i)
        record["robust_after"] = float((merged["clean_correct"] & ~broken).float().mean())
        records.append(record)
    merged["records"] = records
    info.wall_seconds = time.perf_counter() - clock
    return merged, info


def _save_shard(path: Path, fingerprint: str, state: dict) -> None:
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"record": json.dumps({"fingerprint": fingerprint, "records": state["records"]})}
    data = save({k: state[k].detach().cpu().contiguous().clone() for k in _SHARD_TENSORS}, metadata=meta)
    atomic_write_bytes(path, data)


def _load_shard(path: Path, fingerprint: str, model, x: Tensor, y: Tensor, run: dict) -> dict | None:
    """A stored shard of this evaluation, its broken samples re-checked by a fresh forward pass; None if absent."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads(f.metadata()["record"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # a truncated or foreign file: refuse, never guess
        raise EvaluationStoreError(f"{path} is not a readable advkit evaluation shard ({error}); delete it") from None
    if record.get("fingerprint") != fingerprint:
        raise EvaluationStoreError(f"{path} belongs to another evaluation; use another --out or delete its shards/")
    if set(tensors) != set(_SHARD_TENSORS) or tensors["x_adv"].shape != x.shape or tensors["robust"].shape != y.shape:
        raise EvaluationStoreError(f"{path} does not hold this shard's samples; delete it to rerun")
    state = {k: v.to(x.device) for k, v in tensors.items()}
    try:
        _final_check(
            model, x, y, state["x_adv"].to(x.dtype), state["robust"], state["clean_correct"], run["norm"], run["eps"],
            inference_batch_size(model, run["batch_size"]),
        )  # fmt: skip
    except AssertionError:
        raise EvaluationStoreError(f"{path}: a stored success does not hold on a fresh check; delete it") from None
    return {**state, "records": record["records"], "resumed": True}


def _check_stages(model: ModelAdapter, stages: list[Stage]) -> None:
    """AutoAttack warns when the DLR loss cannot work; advkit refuses every stage the model cannot take (each attack's
    :meth:`~advkit.attack.Attack.check_model`) before any pass (ParameterError)."""
    from advkit.runner import make_attack

    for stage in stages:
        try:
            make_attack(stage.attack, **stage.params).check_model(model)
        except ParameterError as error:
            raise ParameterError(f"stage {stage.label}: {error} (or another cascade)") from None


def _run_stage(model, stage: Stage, x, y, constraint, seed: int, batch_size, left: Tensor | None):
    """One stage on the samples still robust: success, points, backward passes per sample, forward passes in all.

    ``left``: per sample, the backward passes the cascade's budget leaves (None: no budget); samples with the same
    amount left run together with it as their budget (an attack's result on a sample does not depend on the others)."""
    from advkit.runner import run_attack

    n = len(y)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    points, backward, forward = x.detach().clone(), torch.zeros(n, dtype=torch.int64, device=x.device), 0
    groups = [(None, torch.arange(n, device=x.device))] if left is None else [
        (int(amount), (left == amount).nonzero().squeeze(1)) for amount in torch.unique(left).tolist()
    ]  # fmt: skip
    for amount, rows in groups:
        if not len(rows):
            continue
        result = run_attack(
            model, stage.attack, x[rows], y[rows], constraint=constraint, seed=seed, batch_size=batch_size,
            budget=amount, **stage.params,
        )  # fmt: skip
        success[rows], points[rows] = result.success, result.x_adv
        forward += result.forward_passes
        counts = result.backward_counts
        if counts is None:  # the attack spent passes outside the engine: charge each sample its share, rounded up
            share = -(-result.backward_passes // len(rows))
            counts = torch.full((len(rows),), share if amount is None else min(share, amount), dtype=torch.int64)
        backward[rows] = counts.to(device=x.device, dtype=torch.int64)
    return success, points, backward, forward


def _verify_stored(model, path, x, y, points, success, norm, eps, size) -> None:
    """A stored stage's claimed successes hold: points within eps and in the box, misclassified by a fresh pass (for
    a randomized model, whose misclassification at a point is a random event, within eps and in the box only; the
    fingerprint ties the file to this evaluation)."""
    low, high = model.bounds
    if points.shape != x.shape or success.shape != y.shape:
        raise EvaluationStoreError(f"{path}: stored tensors have the wrong shapes; delete it to rerun")
    claimed = success.nonzero().squeeze(1)
    if not len(claimed):
        return
    stochastic = bool(model.metadata.get("stochastic"))
    inside = (
        (_distance(norm, points[claimed] - x[claimed]) <= eps + 1e-6)
        & (points[claimed] >= low - 1e-6).flatten(1).all(1)
        & (points[claimed] <= high + 1e-6).flatten(1).all(1)
    )
    if stochastic:
        pred = None
    else:
        with model.eval_mode():
            pred = chunked(model.logits, points[claimed], size).argmax(1)
    if not bool(inside.all()) or (pred is not None and not bool((pred != y[claimed]).all())):
        raise EvaluationStoreError(f"{path}: a stored success does not hold on a fresh check; delete it to rerun")


def _final_check(model, x, y, x_adv, robust, clean_correct, norm, eps, size) -> None:
    """Every sample counted as not robust either was misclassified clean or has a point within eps that fools a fresh
    pass (a randomized model's point: within eps; the pass that it fooled was one draw, which another need not
    repeat)."""
    broken = (clean_correct & ~robust).nonzero().squeeze(1)
    if not len(broken):
        return
    if model.metadata.get("stochastic"):
        if not bool((_distance(norm, x_adv[broken] - x[broken]) <= eps + 1e-6).all()):
            raise AssertionError("advkit bug: a sample counted as broken has no point within eps")
        return
    with model.eval_mode():
        pred = chunked(model.logits, x_adv[broken], size).argmax(1)
    within = _distance(norm, x_adv[broken] - x[broken]) <= eps + 1e-6
    if not bool(((pred != y[broken]) & within).all()):
        raise AssertionError("advkit bug: a sample counted as broken has no point that fools the model within eps")


def run_checks(model, x, y, clean_correct, records, size, *, reevaluations: int | None = None) -> list[dict]:
    """AutoAttack's runtime checks and advkit's: randomness, too few classes for the DLR loss or the targets, gradients
    that vanish, black-box beating white-box. (AutoAttack's probabilities-for-logits warning is a refusal in advkit:
    the runner's input validation stops such a model before any attack.) ``reevaluations``: the evaluation's
    worst-of-k verdict, which (with EOT gradients) is what a randomized model needs."""
    checks = []
    with model.eval_mode():
        runs = [chunked(model.logits, x[:100], size) for _ in range(5)]
    unit = [r / r.norm(dim=1, keepdim=True).clamp_min(1e-10) for r in runs]
    drift = max(float((u - unit[0]).norm(dim=1).max()) for u in unit[1:]) if len(x) else 0.0
    flips = len({int((r.argmax(1) == y[:100]).sum()) for r in runs}) > 1
    declared = bool(model.metadata.get("stochastic"))
    random_outputs = drift > 1e-4 or flips or declared
    seen = (
        f"five forward passes on the same {min(len(x), 100)} inputs differ (normalized logits by up to {drift:.2g}"
        f"{', and the number classified correctly changed' if flips else ''})"
        if drift > 1e-4 or flips else "the model is declared stochastic (metadata)"
    )  # fmt: skip
    eot = str(model.metadata.get("gradient") or "").startswith("eot:")
    if not random_outputs:
        status, reason = (
            "ok",
            "five forward passes on the same inputs gave the same logits (AutoAttack's tolerance 1e-4)",
        )
    elif reevaluations is not None and eot:
        status = "ok"
        reason = (
            f"{seen}: the model is randomized, and this evaluation accounted for it (gradients averaged over "
            f"{model.metadata['gradient']}, a sample robust only if it survived {reevaluations} re-evaluations)"
        )
    else:
        status = "flag"
        missing = "EOT gradients (eot_samples)" if reevaluations is not None else (
            "a worst-of-k verdict" + ("" if eot else " and EOT gradients")
        )  # fmt: skip
        reason = (
            f"{seen}: the model is randomized and this evaluation lacks {missing}, so its robust accuracy may be too "
            "high; rerun with --version rand (version='rand': EOT gradients in every stage, a sample robust only if "
            "it survives k re-evaluations)"
        )
    checks.append({
        "check": "deterministic_outputs", "status": status, "reason": reason, "randomized": random_outputs,
    })  # fmt: skip
    classes = model.num_classes
    wide = [r["label"] for r in records if (r.get("params") or {}).get("top_k", 0) > classes - 1]
    checks.append({
        "check": "enough_classes", "status": "flag" if wide else "ok",
        "reason": f"{', '.join(wide)} asked for more targets than the {classes - 1} other classes; each was attacked, "
        "so the stage ran with fewer targets than configured" if wide
        else f"{classes} classes: every stage's targets fit",
    })  # fmt: skip
    idx = clean_correct.nonzero().squeeze(1)[:100]
    if len(idx):
        from advkit.indicators import input_gradient

        grad = input_gradient(model, x[idx], y[idx])  # as the stages saw it: through their gradient estimator
        zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
        checks.append({
            "check": "zero_gradients", "status": "flag" if zero > 0 else "ok",
            "reason": f"{100 * zero:.1f}% of {len(idx)} correctly classified samples have an all-zero input gradient "
            "(gradient masking: gradient attacks cannot move them; BPDA or a black-box attack can)",
        })  # fmt: skip
    white = [r for r in records if r["attack"] != "square"]
    black = [r for r in records if r["attack"] == "square"]
    if black and white:
        fooled = sum(r["fooled"] for r in black)
        attacked = black[0]["attacked"]
        checks.append({
            "check": "black_box_after_white_box", "status": "flag" if fooled > 0 else "ok",
            "reason": f"Square fooled {fooled} of the {attacked} samples every gradient attack left robust"
            + (": the gradients mislead the white-box stages (masking); trust the cascade, not a gradient attack alone"
               if fooled else ""),
        })  # fmt: skip
    return checks
