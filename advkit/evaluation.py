"""``advkit evaluate``: robust accuracy under a cascade of attacks, each run only on the samples still robust.

A stage is one registered attack with its parameters, run through :func:`advkit.runner.run_attack` (so every stage
gets the runner's guarantees: the threat model enforced, passes counted, success re-checked by a fresh forward pass)
on the samples that the model classifies correctly and that no earlier stage fooled. A sample counts as robust only
if every stage failed on it; a sample any stage fooled is never robust (the final result re-checks every fooled
sample's point once more). The report says which stage first broke each sample and the passes and seconds of each.

Resume: with ``out``, each finished stage is written atomically to ``OUT/stages/NN-NAME.safetensors`` with the
evaluation's fingerprint (model weights, data, eps, norm, cascade, seed) and the indices it attacked; a rerun after
``kill -9`` loads the finished stages (checking the fingerprint, the indices, the points' distance and their success
with a fresh forward pass) and runs the rest, ending with identical results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advkit.batching import AUTO, chunked, inference_batch_size
from advkit.constraints import Constraint, L2Ball, LinfBall
from advkit.errors import AdvkitError, ParameterError
from advkit.files import atomic_write_bytes
from advkit.models import ModelAdapter
from advkit.stats import wilson_interval

__all__ = ["CASCADES", "EvaluationResult", "EvaluationStoreError", "Stage", "cascade", "evaluate"]

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Stage:
    """One attack of a cascade: a registered attack name and its parameters."""

    attack: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = self.params.get("targets")
        return f"{self.attack}[{extra}]" if extra else self.attack


#: The cascades by version. "standard": APGD-CE, then APGD-T (DLR loss) on MALT's 3 most promising targets per sample
#: (advkit's replacement for AutoAttack's nine); "fast": APGD-CE, then APGD-T on MALT's best target. (AutoAttack's
#: FAB-T and Square stages are not in advkit yet: see docs/attacks.md.)
CASCADES: dict[str, list[Stage]] = {
    "standard": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd_targeted", {"targets": "malt", "top_k": 3, "steps": 100, "loss": "dlr"}),
    ],
    "fast": [
        Stage("apgd", {"loss": "ce", "steps": 100}),
        Stage("apgd_targeted", {"targets": "malt", "top_k": 1, "steps": 100, "loss": "dlr"}),
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
            "n": n,
            "clean_accuracy": float(self.clean_correct.float().mean()),
            "robust_accuracy": k / n,
            "robust_accuracy_95ci": [float(low), float(high)],
            "n_robust": k,
            "stages": self.stages,
            "checks": self.checks,
            "forward_passes": sum(s["forward_passes"] for s in self.stages),
            "backward_passes": sum(s["backward_passes"] for s in self.stages),
            "seconds": self.seconds,
        }

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
    if set(tensors) != {"idx", "success", "x_adv"} or not torch.equal(tensors["idx"], idx.cpu()):
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
    progress: bool = False,
) -> EvaluationResult:
    """Robust accuracy of ``model`` on ``(x, y)`` at L-inf or L2 radius ``eps`` (model units) under a cascade.

    ``stages`` replaces the version's cascade (the result's ``version`` is then "custom"). With ``out`` finished stages are stored and a rerun resumes from them.
    """
    from advkit.models import load_model
    from advkit.runner import run_attack
    from advkit.sweep import config_digest, model_fingerprint, tensor_digest
    from advkit.validation import check_inputs, check_labels

    model = load_model(model) if isinstance(model, str) else model
    constraint = _threat(norm, eps)
    check_inputs(model, x)
    check_labels(model, y, x.shape[0])
    if stages is None:
        stages = cascade(version, norm)
    else:
        version = "custom"
    clock = time.perf_counter()
    y = y.to(x.device)
    size = inference_batch_size(model, batch_size)
    with model.eval_mode():
        clean_logits = chunked(model.logits, x, size)
    clean_correct = (clean_logits.argmax(1) == y) & torch.isfinite(clean_logits).all(1)
    robust = clean_correct.clone()
    broken_by = torch.full_like(y, -1)
    x_adv = x.detach().clone()
    fingerprint = config_digest({
        "model": model_fingerprint(model), "data": tensor_digest(x, y), "eps": float(eps), "norm": norm,
        "stages": [(s.attack, s.params) for s in stages], "seed": int(seed),
    })  # fmt: skip
    out = None if out is None else Path(out)
    records = []
    for i, stage in enumerate(stages):
        idx = robust.nonzero().squeeze(1)
        path = None if out is None else _stage_path(out, i, stage)
        stored = None if path is None else _load_stage(path, fingerprint, idx)
        if stored is not None:
            record, tensors = stored
            success, points = tensors["success"].to(x.device), tensors["x_adv"].to(device=x.device, dtype=x.dtype)
            _verify_stored(model, path, x[idx], y[idx], points, success, norm, eps, size)
            record = {**record, "resumed": True}
        else:
            started = time.perf_counter()
            if len(idx):
                result = run_attack(
                    model, stage.attack, x[idx], y[idx], constraint=constraint, seed=seed + i, batch_size=batch_size,
                    **stage.params,
                )  # fmt: skip
                success, points = result.success, result.x_adv
                forward, backward = result.forward_passes, result.backward_passes
            else:
                success = torch.zeros(0, dtype=torch.bool, device=x.device)
                points, forward, backward = x[:0].clone(), 0, 0
            record = {
                "stage": i, "attack": stage.attack, "params": stage.params, "label": stage.label,
                "fingerprint": fingerprint, "attacked": int(len(idx)), "fooled": int(success.sum()),
                "forward_passes": int(forward), "backward_passes": int(backward),
                "seconds": time.perf_counter() - started,
            }  # fmt: skip
            if path is not None:
                _save_stage(path, record, {"idx": idx.cpu(), "success": success.cpu(), "x_adv": points.cpu()})
            record = {**record, "resumed": False}
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
    _final_check(model, x, y, x_adv, robust, clean_correct, norm, eps, size)
    checks = run_checks(model, x, y, clean_correct, records, size)
    return EvaluationResult(
        model=model.name, eps=float(eps), norm=norm, version=version, seed=int(seed),
        y=y, clean_correct=clean_correct, robust=robust, broken_by=broken_by, x_adv=x_adv, stages=records,
        checks=checks, seconds=time.perf_counter() - clock,
    )  # fmt: skip


def _verify_stored(model, path, x, y, points, success, norm, eps, size) -> None:
    """A stored stage's claimed successes hold: points within eps and in the box, misclassified by a fresh pass."""
    low, high = model.bounds
    if points.shape != x.shape or success.shape != y.shape:
        raise EvaluationStoreError(f"{path}: stored tensors have the wrong shapes; delete it to rerun")
    claimed = success.nonzero().squeeze(1)
    if not len(claimed):
        return
    inside = (
        (_distance(norm, points[claimed] - x[claimed]) <= eps + 1e-6)
        & (points[claimed] >= low - 1e-6).flatten(1).all(1)
        & (points[claimed] <= high + 1e-6).flatten(1).all(1)
    )
    with model.eval_mode():
        pred = chunked(model.logits, points[claimed], size).argmax(1)
    if not bool(inside.all()) or not bool((pred != y[claimed]).all()):
        raise EvaluationStoreError(f"{path}: a stored success does not hold on a fresh check; delete it to rerun")


def _final_check(model, x, y, x_adv, robust, clean_correct, norm, eps, size) -> None:
    """Every sample counted as not robust either was misclassified clean or has a point that fools a fresh pass."""
    broken = (clean_correct & ~robust).nonzero().squeeze(1)
    if not len(broken):
        return
    with model.eval_mode():
        pred = chunked(model.logits, x_adv[broken], size).argmax(1)
    within = _distance(norm, x_adv[broken] - x[broken]) <= eps + 1e-6
    if not bool(((pred != y[broken]) & within).all()):
        raise AssertionError("advkit bug: a sample counted as broken has no point that fools the model within eps")


def run_checks(model, x, y, clean_correct, records, size) -> list[dict]:
    """AutoAttack's runtime checks and advkit's: randomness, gradients that vanish, black-box beating white-box."""
    checks = []
    with model.eval_mode():
        first = chunked(model.logits, x[:100], size)
        second = chunked(model.logits, x[:100], size)
    random_outputs = not torch.equal(first, second)
    checks.append({
        "check": "deterministic_outputs", "status": "flag" if random_outputs else "ok",
        "reason": "two forward passes on the same inputs gave different logits: the model is randomized; use EOT "
        "gradients and count a sample robust only if it survives several evaluations" if random_outputs
        else "two forward passes on the same inputs gave identical logits",
    })  # fmt: skip
    idx = clean_correct.nonzero().squeeze(1)[:100]
    if len(idx):
        with model.eval_mode():
            xg = x[idx].detach().clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model.module(xg), y[idx], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg)
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
