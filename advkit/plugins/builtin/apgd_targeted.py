"""Built-in plugin: a stronger targeted attack (APGD-style) under the same budget (S10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import advkit
from advkit.adaptive import step_for
from advkit.attack import Attack
from advkit.engine import EngineResult, Problem, optimize, select, stream_seed
from advkit.errors import ParameterError
from advkit.objectives import logit_margin, negative_target_cross_entropy
from advkit.params import MAX_RESTARTS, MAX_STEPS, param
from advkit.targets import TARGET_RANKINGS, rank_targets


def target_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """z_target - max_{j != target} z_j: positive exactly when the target is the top class."""
    if target is None:
        raise ValueError("the target-margin objective needs target classes")
    return -logit_margin(logits, target)  # the untargeted margin with the target as the "label", negated


def target_ce_plus_margin(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """-CE(target) + target margin: CE's gradient far from the target, the margin's near the boundary."""
    return negative_target_cross_entropy(logits, y, target) + target_margin(logits, y, target)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor | None = None, x_adv=None, x=None) -> Tensor:
    """Croce & Hein's targeted DLR, maximized: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); scale-invariant."""
    if target is None:
        raise ValueError("the targeted DLR objective needs target classes")
    if logits.shape[1] < 4:
        raise ValueError("the targeted DLR objective needs at least 4 classes")
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


#: How ranked targets are scheduled (see APGDTargeted's ``schedule``).
SCHEDULES = ("sequential", "parallel")

LOSSES = {
    "ce+margin": target_ce_plus_margin,
    "dlr": targeted_dlr,
    "ce": negative_target_cross_entropy,
    "margin": target_margin,
}


@dataclass(kw_only=True)
class APGDTargeted(Attack):
    """Targeted APGD: adaptive step size with momentum, a CE + logit-margin (or DLR) loss, restarts (S10).

    Maximizes -CE(target) + (z_target - max_{j != target} z_j) (``loss="dlr"``: the targeted
    DLR loss) with sign steps of size eta and momentum 0.25 on the previous move (alpha = 0.75).
    eta starts at ``initial_step`` x eps and halves at APGD's checkpoints (22%, 41%, 57%, ... of
    the steps) where the loss stalled; a halving sample restarts from its best point. The budget
    is ``steps`` x ``restarts`` backward passes; later restarts start at random points and run
    only on samples that have not reached the target. Per sample the best point is kept. Croce &
    Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", arXiv:2003.01690.

    Parameters:
        steps (int, 100): steps per restart.
        restarts (int, 1): restarts (total cost at most steps x restarts backward passes).
        initial_step (float, 2.0): first step size as a multiple of the L-inf radius (APGD uses 2).
        alpha (float, 0.75): weight of the new step against momentum.
        rho (float, 0.75): halve eta at a checkpoint if the loss rose in fewer than this share of steps.
        loss (str, "ce+margin"): "ce+margin", "dlr", "ce" or "margin".
        confidence (float, 0.0): success needs the target at probability >= this.
        targets (str, "given"): "given" (the run's target classes), or pick them per sample: "malt" or "logits".
        top_k (int, 3): with targets "malt"/"logits", how many of each sample's ranked classes are attacked.
        candidates (int, 9): with targets "malt", how many top-logit wrong classes MALT ranks (1 backward each).
        schedule (str, "sequential"): with targets "malt"/"logits", "sequential" attacks the ranked targets in turn,
            each only on the samples the earlier ones left (AutoAttack's order: no pass on a sample already fooled);
            "parallel" attacks a sample's top_k targets at once, as one group of rows that stops together when one
            of them reaches its target (the same steps per target; top_k times the rows per model call, so fewer,
            fuller calls; more passes on samples an early target would have fooled). Under a per-sample budget each
            target gets an equal share of what MALT left.
    """

    name = "apgd_targeted"
    targeted = True
    steps: int = param(100, ge=1, le=MAX_STEPS, doc="steps per restart")
    restarts: int = param(1, ge=1, le=MAX_RESTARTS, doc="restarts")
    initial_step: float = param(2.0, gt=0, doc="first step size as a multiple of the L-inf radius")
    alpha: float = param(0.75, gt=0, le=1, doc="weight of the new step against momentum")
    rho: float = param(
        0.75, ge=0, le=1, doc="halve the step at a checkpoint if the loss rose in fewer than this share of steps"
    )
    loss: str = param("ce+margin", choices=lambda: LOSSES, doc="the targeted loss descended")
    confidence: float = param(0.0, ge=0, lt=1, doc="success needs the target at probability >= this")
    targets: str = param("given", choices=("given", *TARGET_RANKINGS), doc="target classes: given, malt or logits")
    top_k: int = param(3, ge=1, le=1000, doc="ranked targets attacked per sample (targets malt/logits)")
    candidates: int = param(9, ge=1, le=1000, doc="top-logit wrong classes MALT ranks (targets malt)")
    schedule: str = param(
        "sequential", choices=SCHEDULES, doc="ranked targets in turn (sequential) or a sample's targets at once"
    )

    @property
    def requires_target(self) -> bool:
        return self.targets == "given"

    @property
    def windowed(self) -> bool:  # type: ignore[override]
        # ranking targets is model work outside optimize(): in turn, the runner chunks the samples; at once, the
        # ranking runs in pieces of the window and one optimize() call attacks every (sample, target) row
        return self.targets == "given" or self.schedule == "parallel"

    def rows_per_sample(self, model) -> int:
        """Targets at once: a sample's top_k ranked classes (of the ``candidates``, or of the classes, there are)."""
        if self.targets == "given" or self.schedule != "parallel":
            return 1
        ranked = self.candidates if self.targets == "malt" else self.top_k
        return max(1, min(self.top_k, ranked, model.num_classes - 1))

    def check_model(self, model) -> None:
        if self.loss == "dlr" and model.num_classes < 4:
            raise ParameterError(
                f"apgd_targeted: the targeted DLR loss needs at least 4 classes, the model has {model.num_classes}; "
                "use loss=ce+margin"
            )

    def run(self, problem: Problem) -> Tensor:
        if self.targets == "given":
            return self._attack(problem).x_adv
        if problem.target is not None:
            raise ParameterError(
                f"apgd_targeted with targets={self.targets!r} picks its own target classes; give no target "
                "(or targets='given' to attack the given ones)"
            )
        if self.schedule == "parallel":
            return self._attack_targets_at_once(problem)
        return self._attack_ranked_targets(problem)

    def _attack(self, problem: Problem) -> EngineResult:
        update = step_for(problem, self.initial_step, self.steps, self.alpha, self.rho)
        return optimize(
            problem,
            update=update,
            objective=LOSSES[self.loss],
            steps=self.steps,
            init="zeros",
            restarts=self.restarts,
            early_stop=True,
        )

    def _attack_ranked_targets(self, problem: Problem) -> Tensor:
        """Untargeted: each sample's ranked classes in turn, each only on samples the earlier ones did not fool."""
        ranked = rank_targets(problem, self.targets, self.candidates if self.targets == "malt" else self.top_k)
        x_adv = problem.x.clone()
        fooled = torch.zeros(problem.n, dtype=torch.bool, device=problem.x.device)
        base = stream_seed(problem.generator)  # one draw, whatever number of targets runs: batch-independent seeds
        for rank in range(min(self.top_k, ranked.shape[1])):
            idx = (~fooled).nonzero().squeeze(1)
            if problem.budget is not None:
                idx = idx[problem.backward_counts[idx] < problem.budget]
            if not len(idx):
                break
            generator = None
            if base is not None:
                generator = torch.Generator(device=problem.x.device).manual_seed((base + rank) % 2**62)
            sub = _rows_of(problem, idx, ranked[idx, rank], generator, problem.backward_counts[idx].clone())
            result = self._attack(sub)
            problem.backward_counts[idx] = sub.backward_counts
            if sub.nonfinite_counts is not None:
                if problem.nonfinite_counts is None:
                    problem.nonfinite_counts = torch.zeros_like(problem.backward_counts)
                problem.nonfinite_counts[idx] += sub.nonfinite_counts
            success = result.success  # the engine's claim on its own evaluated points; the runner re-checks
            x_adv[idx] = torch.where(success.view(-1, *([1] * (x_adv.dim() - 1))), result.x_adv, x_adv[idx])
            fooled[idx] = success
        return x_adv

    def _attack_targets_at_once(self, problem: Problem) -> Tensor:
        """Untargeted: one optimize() call over (sample, target) rows, each sample's top_k targets a group that
        stops when one of its rows reaches its target; a fooled sample returns its lowest-ranked successful row."""
        window = problem.window
        size = None if window is None else (window.window_size() if hasattr(window, "window_size") else int(window))
        ranking = self.candidates if self.targets == "malt" else self.top_k
        ranked = rank_targets(problem, self.targets, ranking, chunk=size)
        n, k = problem.n, min(self.top_k, ranked.shape[1])
        if not n or not k:
            return problem.x.clone()
        rows = torch.arange(n, device=problem.x.device).repeat_interleave(k)
        spent = problem.backward_counts[rows]
        budget = problem.budget
        if budget is not None:  # each target's row gets an equal share of what the sample has left
            spent = budget - ((budget - spent).clamp_min(0) // k)
        base = stream_seed(problem.generator)
        generator = None if base is None else torch.Generator(device=problem.x.device).manual_seed(base)
        sub = _rows_of(problem, rows, ranked[:, :k].reshape(-1), generator, spent.clone(), window=window, group_size=k)
        result = self._attack(sub)
        problem.backward_counts += (sub.backward_counts - spent).view(n, k).sum(1)
        if sub.nonfinite_counts is not None:
            if problem.nonfinite_counts is None:
                problem.nonfinite_counts = torch.zeros_like(problem.backward_counts)
            problem.nonfinite_counts += sub.nonfinite_counts.view(n, k).sum(1)
        success = result.success.view(n, k)  # the engine's claim on its own evaluated points; the runner re-checks
        first = success.to(torch.uint8).argmax(1)  # the lowest rank that succeeded (0 where none did)
        chosen = result.x_adv.view(n, k, *problem.x.shape[1:])[torch.arange(n, device=first.device), first]
        fooled = success.any(1).view(-1, *([1] * (problem.x.dim() - 1)))
        return torch.where(fooled, chosen, problem.x)


def _rows_of(problem: Problem, rows: Tensor, target: Tensor, generator, backward_counts: Tensor, **extra) -> Problem:
    """The sub-problem of ``problem``'s samples ``rows`` (repeats allowed) aimed at ``target``, with its own
    generator and starting backward counts (``extra``: further Problem fields)."""
    return Problem(
        model=problem.model,
        x=problem.x[rows],
        y=problem.y[rows],
        constraint=select(problem.constraint, rows),
        criterion=problem.criterion,
        target=target,
        budget=problem.budget,
        generator=generator,
        backward_counts=backward_counts,
        start=None if problem.start is None else problem.start[rows],
        **extra,
    )


@advkit.hookimpl
def register_attacks(register):
    register(APGDTargeted)
