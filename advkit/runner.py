"""Run an attack under a threat model and report what really happened.

The runner owns the guarantees users trust, whatever the plugin does: the model is in eval
mode (its mode restored afterwards, also on exceptions), the attack works on a copy of the
input, the returned points are projected onto the constraint set and checked, pass counts
come from the model adapter, and success is re-checked by a fresh forward pass.

The clean check (which inputs the model already gets wrong) is one pass outside the counter, except where the
attack's own first step evaluated exactly the runner's copy of an input (a zero start): the engine keeps those logits
(:class:`advkit.kernel.CleanLogits`) and the runner passes only the other inputs. Not for a randomized model, nor for
one whose calls are not its logits (a gradient estimator's).

Two failure modes are handled here rather than left to plugins:

* Non-finite outputs. A sample whose re-check logits on ``x_adv`` contain NaN or inf is never
  counted as a success (nor as robust): ``result.nonfinite`` marks it and
  ``result.extra["nonfinite_logits"]`` counts such samples. ``result.extra["nonfinite_gradients"]``
  counts the samples that met a NaN/inf logit or input gradient in at least one engine step
  (None when the attack did not use the engine).
* Out of memory. When the attack (or the re-check) raises ``torch.cuda.OutOfMemoryError`` or a
  RuntimeError whose message says "out of memory", the runner halves the chunk and runs the
  halves in turn (halving again as needed, down to one sample), each with a fresh generator
  seeded with ``seed``. ``result.extra["oom_retries"]`` counts the halvings; the passes of a chunk
  that ran out of memory are not in the counts (they produced nothing).

Per-sample attacks see at most ``batch_size`` samples at once (a number, or ``"auto"``: chosen on
the run's first steps, see :mod:`advkit.batching`; ``result.extra["batch_size"]`` says what was
used): a ``windowed`` attack gets the whole batch and the engine steps a refilled window of that many
rows (out of memory: the window halves and the run starts again); any other attack gets chunks. Since the engine draws its random starts per sample (see :mod:`advkit.rng`), the result
equals that of an unsplit run, up to the floating-point differences batched kernels may show
between batch sizes; the pass counts are the sums over the chunks. Attacks that couple the
samples of a batch (``per_sample = False``, e.g. ``universal``) run whole and are never split:
an out-of-memory error is raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.attack import Attack
from advkit.batching import AUTO, BatchSize, ChunkPlan, check_batch_size, chunked, inference_batch_size, step_rate
from advkit.constraints import Box, Constraint, LinfBall
from advkit.criteria import Criterion, criterion_for
from advkit.devices import free_device_memory, is_out_of_memory
from advkit.engine import CleanLogits, Problem, finite_rows, select
from advkit.errors import AdvkitError, ParameterError, ThreatModelError
from advkit.layout import layout_for_run
from advkit.models import ModelAdapter, load_model
from advkit.params import check_count, check_number, check_seed
from advkit.registry import get_attack
from advkit.result import AttackResult
from advkit.validation import (
    as_targets,
    check_constraint,
    check_eps_in_range,
    check_inputs,
    check_labels,
    check_outputs,
)


class ThreatModelViolation(AdvkitError, RuntimeError):
    """An attack returned points that are not finite or that projection could not make feasible."""


class BudgetExceeded(AdvkitError, RuntimeError):
    """An attack used more backward passes than the budget allows."""


def make_attack(attack: str | Attack, **params: Any) -> Attack:
    """An attack instance from a registered name and hyperparameters (or the instance itself); every value is
    checked against the attack's declared types and ranges."""
    if isinstance(attack, Attack):
        if params:
            raise ParameterError("pass hyperparameters either to the attack instance or to make_attack, not both")
        return attack
    if not isinstance(attack, str):
        raise ParameterError(
            f"attack must be a registered name or an advkit.Attack instance, got {type(attack).__name__}"
        )
    cls = get_attack(attack).obj
    names = {f.name for f in cls.param_fields()}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ParameterError(
            f"attack {attack!r} has no parameter(s) {', '.join(unknown)}; its parameters: "
            f"{', '.join(sorted(names)) or '(none)'}"
        )
    return cls(**params)


def attack_plugin(attack: Attack) -> dict:
    """Name and version of the plugin that registered this attack class (if registered)."""
    from advkit.registry import attacks

    for item in attacks().values():
        if item.obj is type(attack):
            return {"name": item.plugin.name, "distribution": item.plugin.distribution, "version": item.plugin.version}
    return {"name": None, "distribution": None, "version": None}


def _radius_value(radius: Any) -> float | None:
    """A radius as one float (a scalar, or a 0-d tensor), else None (no radius, or per-sample radii)."""
    if isinstance(radius, Tensor):
        return float(radius) if radius.dim() == 0 else None
    return None if radius is None else float(radius)


def enforced_radius(constraint: Constraint) -> float | None:
    """The radius the set enforces, as reported: its L-inf radius (a binary perturbation's value counts), else its
    L2 radius; None for per-sample radii or a set with no ball."""
    linf = _radius_value(constraint.linf_radius)
    return linf if linf is not None else _radius_value(constraint.l2_radius)


def bounds_something(constraint: Constraint) -> bool:
    """Whether the set has a radius (an L-inf or L2 ball, or a binary value) besides the model's box."""
    return constraint.linf_radius is not None or constraint.l2_radius is not None


def threat_model(model: ModelAdapter, constraint: Constraint | None, eps: float | None) -> Constraint:
    """The user's constraint set (or an L-inf ball of radius eps), always intersected with the model's box.

    ``eps`` next to a ``constraint`` must be that set's radius (an eps that bounds nothing, or another radius than
    the one enforced, would be reported for a run it did not describe)."""
    if constraint is not None and not isinstance(constraint, Constraint):
        shown = f" {constraint!r}" if isinstance(constraint, str) else ""
        raise ParameterError(
            f"constraint must be an advkit Constraint (e.g. LinfBall(0.1), or build_constraints('linf,box', eps=0.1, "
            f"bounds=model.bounds)), got {type(constraint).__name__}{shown}"
        )
    if eps is not None:
        eps = check_number(eps, "eps", ge=0, optional=False)
    if constraint is None:
        if eps is None:
            raise ParameterError("give a constraint set or eps")
        constraint = LinfBall(eps)
    elif eps is not None:
        radii = [
            r for r in (_radius_value(constraint.linf_radius), _radius_value(constraint.l2_radius)) if r is not None
        ]
        if not bounds_something(constraint):
            raise ThreatModelError(
                f"eps {eps:g} bounds nothing in the constraint set {constraint.describe()} (it has no L-inf or L2 ball "
                "and no binary value); add a ball (e.g. LinfBall(eps) & ...) or drop eps for a run bounded only by "
                "the set given"
            )
        if not any(abs(r - eps) <= 1e-9 * max(1.0, abs(eps)) for r in radii):
            raise ThreatModelError(
                f"eps {eps:g} is not the radius of the constraint set {constraint.describe()}; the result would "
                "report an eps that was not enforced: give eps equal to the set's radius, or only the set"
            )
    return constraint & Box(*model.bounds)


def run_attack(
    model: ModelAdapter | str,
    attack: Attack | str,
    x: Tensor,
    y: Tensor,
    *,
    constraint: Constraint | None = None,
    eps: float | None = None,
    target: int | Tensor | None = None,
    criterion: Criterion | None = None,
    confidence: float | None = None,
    budget: int | None = None,
    seed: int = 0,
    start: Tensor | None = None,
    batch_size: BatchSize = AUTO,
    gradient: Any = None,
    **attack_params: Any,
) -> AttackResult:
    """Attack ``(x, y)`` on ``model`` and return an independently checked result.

    ``eps`` (model units) builds an L-inf ball when no ``constraint`` is given; the model's box
    always applies. ``confidence`` overrides the attack's default success confidence.
    ``budget`` caps backward passes per sample. ``seed`` seeds the attack's own generator; the
    global RNG is not touched. ``start`` warm-starts the attack (same shape as ``x``, e.g. the
    result of a smaller eps); attacks with ``warm_startable = False`` ignore it. ``batch_size``: the most samples a
    per-sample attack steps at once (its window or chunk), an integer or ``"auto"`` (chosen on the run's first steps and cached, see
    :mod:`advkit.batching`; the result does not depend on it). On out-of-memory errors the window or chunk is
    halved (see the module docstring). ``gradient``: a gradient estimator for adaptive attacks (``"eot:flip,crop,samples=8"``,
    ``"bpda"``, ``"transfer:MODEL"``, see :mod:`advkit.gradients`): the attack differentiates the model through it,
    while the clean check and the re-check use the model itself; ``budget`` counts the estimator's real backward passes.
    On a CPU a conv net runs with its weights channels-last and gets its own tensors back afterwards (see
    :mod:`advkit.layout`; ``result.extra["layout"]`` says which layout ran and why).
    """
    model = load_model(model) if isinstance(model, str) else model
    if not isinstance(model, ModelAdapter):
        raise ParameterError(
            f"model must be a registered name or an advkit ModelAdapter (see advkit.models), got {type(model).__name__}"
        )
    if gradient is not None:
        from advkit.gradients import with_gradient

        model = with_gradient(model, gradient)
    attack = make_attack(attack, **attack_params)
    attack.check_model(model)  # e.g. a loss that needs more classes than the model has: refused before any pass
    seed = check_seed(seed)
    batch_size = check_batch_size(batch_size)
    budget = check_count(budget, "budget (backward passes per sample)", low=1)
    confidence = check_number(confidence, "confidence", ge=0, lt=1)
    cost = getattr(model, "backward_per_call", 1)
    if budget is not None and budget < cost:
        raise ParameterError(f"budget {budget} is below one call of the gradient estimator ({cost} backward passes)")
    constraint = threat_model(model, constraint, eps)
    check_inputs(model, x)
    check_labels(model, y, x.shape[0])
    y = y.to(x.device)
    if attack.requires_target and target is None:
        raise ParameterError(f"attack {attack.name!r} is targeted: give a target class")
    if target is not None and not attack.accepts_target:
        raise ParameterError(
            f"attack {attack.name!r} is untargeted: it ignores target classes, so its success "
            "cannot be judged against one; use a targeted attack (e.g. targeted, pgd, apgd_targeted)"
        )
    targets = None if target is None else as_targets(model, target, y)
    if criterion is None:
        level = attack.success_confidence if confidence is None else confidence
        criterion = criterion_for(targets is not None, level)
    if criterion.targeted and targets is None:
        raise ParameterError("a targeted criterion needs a target class")
    check_constraint(constraint, x)
    check_eps_in_range(model, constraint)
    warm = _warm_start(attack, start, x)
    check_outputs(model, x)
    n = x.shape[0]
    splittable = getattr(attack, "per_sample", True)
    # windowed: one problem, the engine keeps plan.size rows stepping and refills them; else the runner chunks
    mode = "window" if splittable and getattr(attack, "windowed", False) else "chunks"
    # a window's size counts the engine's rows: several per sample for an attack that attacks each sample several
    # ways at once (apgd_targeted's targets at once)
    rows = attack.rows_per_sample(model) if mode == "window" and hasattr(attack, "rows_per_sample") else 1
    plan = ChunkPlan(model, batch_size, n * rows, splittable=splittable, mode=mode, group=rows)
    with model.eval_mode(), layout_for_run(model, x) as layout:  # channels-last on a CPU (see advkit.layout)
        job = _Job(model, attack, x, y, targets, constraint, criterion, budget, seed, warm)
        pieces, retries, lost = _attack_in_chunks(job, plan)
    plan.finish()
    clean_correct = _joined([p.clean_correct for p in pieces])
    logits = _joined([p.logits for p in pieces])
    x_adv = _joined([p.x_adv for p in pieces])
    for piece in pieces:
        piece.x_adv = None  # the joined x_adv is the only copy left
    forward = sum(p.forward for p in pieces)
    backward = sum(p.backward for p in pieces)
    counts = [p.backward_counts for p in pieces]
    per_sample = torch.cat(counts) if all(c is not None for c in counts) else None
    steps_nonfinite = [p.nonfinite_counts for p in pieces]
    nonfinite_steps = torch.cat(steps_nonfinite) if all(c is not None for c in steps_nonfinite) else None
    _merge_history(attack, pieces)
    finite = finite_rows(logits)
    probs = logits.softmax(dim=1)
    confidence_adv, pred = probs.max(dim=1)
    success = criterion.reached(logits, y, targets) & finite  # NaN/inf logits are never a success
    return AttackResult(
        model=model.name,
        attack=attack.name,
        attack_params=attack.params(),
        bounds=model.bounds,
        constraints=constraint.describe(),
        constraints_dict=constraint.to_dict(),
        criterion=criterion.describe(),
        eps=enforced_radius(constraint),  # the radius actually enforced (eps, when given, was checked to be it)
        seed=seed,
        x=x.detach().clone(),  # advkit's own copies: the result never aliases the caller's tensors
        x_adv=x_adv,
        y=y.clone(),
        target=None if targets is None else targets.clone(),
        pred=pred,
        confidence=confidence_adv,
        success=success,
        forward_passes=forward,
        backward_passes=backward,
        budget=budget,
        seconds=sum(p.seconds for p in pieces) + lost,
        plugin=attack_plugin(attack),
        backward_counts=per_sample,
        artifacts=_merge_artifacts(pieces),
        nonfinite=~finite,
        clean_correct=clean_correct,
        extra={
            "nonfinite_logits": int((~finite).sum()),
            "nonfinite_gradients": None if nonfinite_steps is None else int((nonfinite_steps > 0).sum()),
            "oom_retries": retries,
            "batch_size": plan.to_dict(),
            "layout": layout,
            **({"gradient": model.estimator.describe()} if hasattr(model, "estimator") else {}),
        },
    )


@dataclass(frozen=True)
class _Job:
    """One checked run_attack call: what every chunk of it is attacked with."""

    model: ModelAdapter
    attack: Attack
    x: Tensor
    y: Tensor
    targets: Tensor | None
    constraint: Constraint
    criterion: Criterion
    budget: int | None
    seed: int
    warm: Tensor | None


def _attack_in_chunks(job: _Job, plan: ChunkPlan) -> tuple[list[_Piece], int, float]:
    """Attack the rows chunk by chunk as ``plan`` sizes them (eval mode is on), halving a chunk that runs out of
    memory; the pieces, the number of halvings and the seconds the failed attempts took."""
    model, attack, x = job.model, job.attack, job.x
    n = x.shape[0]
    pieces: list[_Piece] = []
    begin, retries, lost = 0, 0, 0.0
    try:
        while begin < n:
            if plan.mode == "window":
                attempt = time.perf_counter()
                try:
                    pieces.append(_attack_rows(job, 0, n, window=plan))
                    plan.chunks = 1
                except Exception as error:
                    if not is_out_of_memory(error) or plan.size <= 1:
                        raise
                    retries += 1  # out of memory: halve the window and attack again (same streams, same results)
                    plan.out_of_memory(plan.size)
                    lost += time.perf_counter() - attempt
                    free_device_memory(x.device)
                    model.module.eval()
                    continue
                break
            stop = begin + plan.next_size(n - begin)
            attempt = time.perf_counter()
            measuring = plan.measuring
            model.call_times = [] if measuring else None
            try:
                piece = _attack_rows(job, begin, stop)
            except Exception as error:
                if not is_out_of_memory(error) or stop - begin <= 1 or not plan.splittable:
                    if is_out_of_memory(error) and not plan.splittable:
                        error.add_note(
                            f"advkit: attack {attack.name!r} couples the samples of a batch, so the runner "
                            "cannot split it; attack fewer samples at once"
                        )
                    raise
                retries += 1  # out of memory: halve the rows still to do and try again
                plan.out_of_memory(stop - begin)
                lost += time.perf_counter() - attempt
                free_device_memory(x.device)
                model.module.eval()  # in case the failed attempt changed it
                continue
            pieces.append(piece)
            plan.observe(stop - begin, _chunk_rate(piece, model.call_times, x.device) if measuring else None)
            begin = stop
    finally:
        model.call_times = None  # the adapter records call times only while a chunk is measured
    return pieces, retries, lost


@dataclass
class _Piece:
    """The outcome of attacking rows [begin, stop) of the batch."""

    x_adv: Tensor | None  # None once run_attack has joined the pieces
    logits: Tensor
    clean_correct: Tensor
    forward: int
    backward: int
    backward_counts: Tensor | None
    nonfinite_counts: Tensor | None
    artifacts: dict
    seconds: float
    history: Tensor | None


def _attack_rows(job: _Job, begin: int, stop: int, window: ChunkPlan | None = None) -> _Piece:
    """Attack rows [begin, stop) with a fresh generator, enforce the threat model and re-check (eval mode is on).
    With ``window`` the engine steps at most ``window.size`` rows at once (and the checks run in chunks)."""
    model, attack, x, y, targets = job.model, job.attack, job.x, job.y, job.targets
    constraint, criterion, budget, seed, warm = job.constraint, job.criterion, job.budget, job.seed, job.warm
    whole = begin == 0 and stop == x.shape[0]
    rows = slice(begin, stop)
    x_rows = x if whole else x[rows]
    constraint = constraint if whole else select(constraint, torch.arange(begin, stop, device=x.device))
    cost = getattr(model, "backward_per_call", 1)  # an EOT model's call costs K backward passes per sample
    problem = Problem(
        model=model,
        x=x_rows.detach().clone(),
        y=y if whole else y[rows],
        constraint=constraint,
        criterion=criterion,
        target=None if targets is None else (targets if whole else targets[rows]),
        budget=None if budget is None else budget // cost,  # the attack counts calls
        generator=torch.Generator(device=x.device).manual_seed(seed),
        start=None if warm is None else (warm if whole else warm[rows]),
        window=window,
    )
    size = x_rows.shape[0] if window is None else inference_batch_size(model, window.requested)
    # what the model says at the inputs (outside the counter; OOM-split with the rows): a zero start's first step says
    # it for its samples (a deterministic model whose calls are its logits), a pass before the attack for the others
    clean = shared = None
    if model.calls_are_logits and not model.metadata.get("stochastic"):
        problem.clean = shared = CleanLogits(model, problem.x, x_rows)
    else:
        clean = chunked(model.logits, x_rows, size)
    forward0, backward0 = model.counter.snapshot()
    clock = time.perf_counter()
    x_adv = attack.run(problem)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)  # the clock stops when the work is done, not when it is queued
    seconds = time.perf_counter() - clock
    if shared is not None:
        shared.x = shared.reference = None
        clean = _clean_logits(model, x_rows, shared, size)
    problem.x = problem.start = problem.clean = None  # the attack's copies go before the projection (peak memory)
    clean_correct = (clean.argmax(1) == problem.y) & finite_rows(clean)
    x_adv = _enforce_threat_model_in_chunks(x_rows, x_adv, constraint, size)
    # the independent re-check: a fresh pass on advkit's own copy, outside the counter
    logits = chunked(model.logits, x_adv, size)
    forward = model.counter.forward - forward0
    backward = model.counter.backward - backward0
    per_sample = _per_sample_backward(problem, backward, cost)
    n = x_rows.shape[0]
    if budget is not None and backward > budget * n:
        raise BudgetExceeded(f"attack {attack.name!r} used {backward} backward passes; budget {budget} x {n} samples")
    if budget is not None and per_sample is not None and int(per_sample.max()) > budget:
        raise BudgetExceeded(
            f"attack {attack.name!r} used {int(per_sample.max())} backward passes on one sample; budget {budget}"
        )
    history = getattr(attack, "history_", None)
    nonfinite = problem.nonfinite_counts
    return _Piece(
        x_adv=x_adv,
        logits=logits,
        clean_correct=clean_correct,
        forward=forward,
        backward=backward,
        backward_counts=per_sample,
        nonfinite_counts=None if nonfinite is None else nonfinite.detach().cpu(),
        artifacts=dict(problem.artifacts),
        seconds=seconds,
        history=history if isinstance(history, Tensor) else None,
    )


def _clean_logits(model: ModelAdapter, x: Tensor, shared: CleanLogits, size: int) -> Tensor:
    """The model's logits at ``x``: those the attack's own steps evaluated at ``x`` itself (``shared``, see
    :class:`advkit.kernel.CleanLogits`), and a fresh pass, in chunks of ``size`` rows, on the other rows."""
    if shared.known is None:
        return chunked(model.logits, x, size)
    missing = (~shared.known).nonzero().squeeze(1)
    logits = shared.logits
    if missing.numel():
        logits[missing] = chunked(model.logits, x[missing], size).to(logits.dtype)
    return logits


def _chunk_rate(piece: _Piece, call_times: list[tuple[float, int]] | None, device: torch.device) -> float | None:
    """Seconds per sample step of a chunk: on a CPU the median time between the model's calls (robust to a stall);
    elsewhere, where calls are queued asynchronously, the chunk's synchronized time per step."""
    if device.type == "cpu" and call_times:
        return step_rate(call_times)
    steps = piece.backward or piece.forward
    return piece.seconds / steps if steps else None


def _joined(parts: list[Tensor]) -> Tensor:
    """The pieces' rows in order (one piece: itself, not a copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _merge_history(attack: Attack, pieces: list[_Piece]) -> None:
    """A split run's per-step ``history_`` (steps x samples) is the pieces' histories side by side."""
    if len(pieces) > 1 and all(p.history is not None and p.history.dim() == 2 for p in pieces):
        if len({p.history.shape[0] for p in pieces}) == 1:
            attack.history_ = torch.cat([p.history for p in pieces], dim=1)


def _merge_artifacts(pieces: list[_Piece]) -> dict:
    """One piece: its artifacts. Several: per-sample tensors concatenated, anything else as a list per piece."""
    if len(pieces) == 1:
        return pieces[0].artifacts
    merged: dict = {}
    for key in dict.fromkeys(k for p in pieces for k in p.artifacts):
        values = [p.artifacts.get(key) for p in pieces]
        sizes = [p.clean_correct.shape[0] for p in pieces]
        if all(isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == m for v, m in zip(values, sizes)):
            merged[key] = torch.cat(values)
        else:
            merged[key] = values
    return merged


def _warm_start(attack: Attack, start: Tensor | None, x: Tensor) -> Tensor | None:
    """A checked copy of the warm start (a finite tensor of x's shape), or None."""
    if start is None:
        return None
    if not isinstance(start, Tensor) or not start.is_floating_point():
        raise ParameterError(
            f"start must be a floating-point tensor of x's shape, got {type(start).__name__}"
            + (f" of dtype {start.dtype}" if isinstance(start, Tensor) else "")
        )
    if start.shape != x.shape:
        raise ParameterError(f"start has shape {tuple(start.shape)}, expected {tuple(x.shape)}")
    if not bool(torch.isfinite(start).all()):
        raise ParameterError("start contains NaN or inf; a warm start must be finite (it is projected onto the set)")
    if not attack.warm_startable:
        return None
    return start.detach().to(device=x.device, dtype=x.dtype).clone()


def _per_sample_backward(problem: Problem, total: int, cost: int = 1) -> Tensor | None:
    """The engine's per-sample backward passes (its differentiated calls x ``cost`` passes each), if they account for
    every pass the model saw."""
    counts = problem.backward_counts
    if counts is None or int(counts.sum()) * cost != total:
        return None  # the attack spent passes outside the engine: only the total is known
    return counts.detach().cpu() * cost


def _enforce_threat_model_in_chunks(x: Tensor, x_adv: Tensor, constraint: Constraint, size: int) -> Tensor:
    """:func:`_enforce_threat_model` on chunks of ``size`` rows (the projection's temporaries stay a chunk's size)."""
    n = x.shape[0]
    if n <= size or not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        return _enforce_threat_model(x, x_adv, constraint)
    enforced = torch.empty_like(x)  # written chunk by chunk: no list of parts beside the joined copy
    for begin in range(0, n, size):
        rows = torch.arange(begin, min(begin + size, n), device=x.device)
        part = x_adv[begin : begin + size]
        enforced[begin : begin + size] = _enforce_threat_model(x[begin : begin + size], part, select(constraint, rows))
    return enforced


def _enforce_threat_model(x: Tensor, x_adv: Tensor, constraint: Constraint) -> Tensor:
    """Project the attack's output onto the constraint set; refuse non-finite or wrongly shaped output."""
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise ThreatModelViolation(f"attack returned shape {getattr(x_adv, 'shape', None)}, expected {tuple(x.shape)}")
    x_adv = x_adv.detach().to(dtype=x.dtype, device=x.device)
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation("attack returned NaN or inf")
    x_adv = x + constraint.project(x_adv - x, x)
    if not bool(constraint.contains(x_adv - x, x).all()):
        raise ThreatModelViolation("projected output is still outside the constraint set")
    return x_adv
