"""Epsilon sweeps over models and attacks: one table, a per-sample success matrix, resumable.

Cells (model, attack, eps) run in increasing eps. Threat models grow with eps, so a sample
fooled at a smaller eps whose adversarial point is still inside the larger set (checked with
``constraint.contains``, so sets that do not nest, such as binary perturbations whose value is
eps, are simply re-attacked) is carried over, re-checked by one fresh forward pass, and not
attacked again; the other samples start from their smaller-eps point (attacks with
``warm_startable = False`` start as usual). Success at eps therefore means "an adversarial
example within eps was found by this attack in this sweep".

``search="descending"`` runs the eps from the largest down instead, for speed: each sample's
point at the larger eps is projected into the smaller set and re-checked by a fresh forward
pass (still fooled: carried); a sample fooled at the larger eps but not after projection is
attacked from the attack's own start (for a deterministic attack: exactly as an independent run
at this eps would attack it); a sample the attack did not fool at the larger eps is not
attacked again and counts as robust at every smaller eps (the monotonicity that
minimal-perturbation evaluations assume). The table's ``inferred`` column counts those samples
per cell, so every number says how it was obtained.

Every finished cell is written atomically (temp file, then ``os.replace``) under
``OUT/cells/``, with ``OUT/config.json`` holding the sweep's fingerprint; a rerun with the same
configuration skips finished cells and ends with identical results, and a different
configuration is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from advkit.constraints import build_constraints
from advkit.models import ModelAdapter
from advkit.stats import wilson_interval


SEARCHES = ("ascending", "descending")


class SweepConfigMismatch(RuntimeError):
    """The output folder holds cells of a sweep with a different configuration."""


@dataclass
class SweepSpec:
    """What to sweep: model references (``name`` or ``name:key=value,...``), attacks, epsilons in model units."""

    models: list[str]
    attacks: list[str]
    eps: list[float]
    constraints: str = "linf"
    n: int = 100
    seed: int = 0
    budget: int | None = None
    confidence: float = 0.0
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reuse: bool = True
    data: str = "auto"
    #: "ascending": every eps attacked (or carried by a checked point) from the smallest up;
    #: "descending": from the largest down, samples not fooled at a larger eps inferred robust.
    search: str = "ascending"

    def __post_init__(self) -> None:
        if not self.models or not self.attacks or not self.eps:
            raise ValueError("a sweep needs at least one model, one attack and one eps")
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; valid: {', '.join(SEARCHES)}")
        if self.search == "descending" and not self.reuse:
            raise ValueError("search='descending' works by reusing the larger eps' results; it needs reuse=True")
        if any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise ValueError(f"eps values must be finite and >= 0, got {self.eps}")
        self.eps = sorted(set(float(e) for e in self.eps))


def parse_model_ref(ref: str) -> tuple[str, dict[str, Any]]:
    """``"bnn:straight_through=false"`` -> ``("bnn", {"straight_through": False})``."""
    name, _, rest = ref.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"model option {pair!r} in {ref!r} is not key=value")
        lowered = raw.strip().lower()
        value: Any = raw.strip()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = float(raw) if "." in raw else int(raw)
            except ValueError:
                pass
        options[key.strip()] = value
    return name.strip(), options


def load_model_ref(ref: str, device: str = "cpu") -> ModelAdapter:
    """Load ``name:key=value`` with its adapter options; the adapter keeps the full reference as its name."""
    from advkit.models import load_model

    name, options = parse_model_ref(ref)
    model = load_model(name, device=device, **options)
    model.name = ref
    return model


# ----------------------------------------------------------------------------- storage


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def tensor_digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: ModelAdapter) -> str:
    """The weight file's sha256 from the adapter's metadata, else a hash of the state dict."""
    if model.metadata.get("sha256"):
        return str(model.metadata["sha256"])
    return tensor_digest(*(v.float() for v in model.module.state_dict().values()))


def fingerprint(spec: SweepSpec, models: dict[str, ModelAdapter], x: Tensor, y: Tensor, source: str) -> dict:
    """Everything that decides the results: weights, data, attacks with parameters, seed, versions."""
    from advkit import __version__
    from advkit.plugins import list_plugins

    return {
        "spec": asdict(spec),
        "models": {ref: model_fingerprint(m) for ref, m in models.items()},
        "data": {"source": source, "n": int(len(y)), "sha256": tensor_digest(x, y)},
        "advkit": __version__,
        "torch": torch.__version__,
        "plugins": {p["name"]: p.get("version") for p in list_plugins()},
    }


def cell_key(model: str, attack: str, eps: float) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in model)
    return f"{safe}__{attack}__{eps:.6g}"


@dataclass
class Cell:
    """One (model, attack, eps) run over the sweep's samples (not-attacked samples are False/NaN)."""

    model: str
    attack: str
    eps: float
    attacked: Tensor  # bool (n,): correctly classified, so attacked
    success: Tensor  # bool (n,)
    pred: Tensor  # long (n,)
    linf: Tensor  # float (n,)
    l2: Tensor  # float (n,)
    x_adv: Tensor  # (n, ...)
    forward: int
    backward: int
    seconds: float
    carried: int
    inferred: int = 0  # samples counted robust because the attack failed at a larger eps (descending search)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save

        key = cell_key(self.model, self.attack, self.eps)
        tensors = {k: getattr(self, k).contiguous() for k in ("attacked", "success", "pred", "linf", "l2", "x_adv")}
        atomic_write_bytes(folder / f"{key}.safetensors", save(tensors))
        meta = {k: getattr(self, k) for k in ("model", "attack", "eps", "forward", "backward", "seconds", "carried", "inferred")}
        atomic_write_json(folder / f"{key}.json", meta)  # written last: its presence marks the cell finished

    @classmethod
    def load(cls, folder: Path, model: str, attack: str, eps: float) -> Cell | None:
        from safetensors.torch import load_file

        key = cell_key(model, attack, eps)
        meta_path, tensor_path = folder / f"{key}.json", folder / f"{key}.safetensors"
        if not meta_path.exists() or not tensor_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return cls(**meta, **load_file(str(tensor_path)))


# ----------------------------------------------------------------------------- running


def select_samples(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first n test samples in class-interleaved order (indices, inputs, labels)."""
    from advkit.commands.attack import class_interleaved_order

    idx = class_interleaved_order(y)[:n]
    return idx, x[idx], y[idx]


def sweep_constraint(spec: SweepSpec, eps: float, model: ModelAdapter):
    """The sweep's named sets at ``eps`` (built-in or registered by a plugin), intersected with the model's box."""
    from advkit import registry

    return build_constraints(spec.constraints, eps=eps, bounds=model.bounds, registry=registry.constraints())


def run_cell(spec: SweepSpec, model: ModelAdapter, attack: str, eps: float, x: Tensor, y: Tensor,
             previous: Cell | None, clean_pred: Tensor | None = None) -> Cell:
    """Attack the correctly classified samples at ``eps``, reusing ``previous`` (the cell of the neighbouring eps
    already run: smaller in an ascending search, larger in a descending one) when allowed.

    ``clean_pred``: the model's predictions on ``x`` (computed here if not given; a sweep computes them once per
    model). Each sample's ``pred`` comes from the forward pass that judged its point, never from an extra one,
    except for the points a descending search moved into this set without attacking them."""
    from advkit.criteria import Misclassified
    from advkit.runner import run_attack

    device = x.device
    n = len(y)
    if clean_pred is None:
        clean_pred = model.predict(x).argmax(1)
    attacked = clean_pred == y
    pred = clean_pred.clone()  # right for the samples not attacked, whose point stays x
    constraint = sweep_constraint(spec, eps, model)
    x_adv = x.clone()
    success = torch.zeros(n, dtype=torch.bool, device=device)
    carry = torch.zeros(n, dtype=torch.bool, device=device)
    inferred = torch.zeros(n, dtype=torch.bool, device=device)
    forward = backward = 0
    start_time = time.perf_counter()
    reuse = spec.reuse and previous is not None
    if reuse:
        start = previous.x_adv.to(device)
        if spec.search == "descending":
            start = x + constraint.project(start - x, x)  # the larger eps' point, moved into this set
            inferred = attacked & ~previous.success.to(device)
            x_adv[inferred] = start[inferred]
            carry = attacked & previous.success.to(device)
        else:
            carry = previous.success.to(device) & constraint.contains(start - x, x)
        if bool(carry.any()):
            x_adv[carry] = start[carry]
            with torch.no_grad():
                logits = model(x_adv[carry])  # a fresh, counted forward pass re-checks carried points
            forward += int(carry.sum())
            success[carry] = Misclassified(spec.confidence).reached(logits, y[carry])
            pred[carry] = logits.argmax(1)
            carry &= success  # descending: a projected point that no longer fools is attacked afresh below
    todo = attacked & ~carry & ~inferred
    if bool(todo.any()):
        # ascending: start from the smaller eps' point; descending: from the attack's own start, so that for a
        # deterministic attack every sample fooled at the larger eps gets exactly the attack an independent run would make
        warm = start[todo] if reuse and spec.search == "ascending" else None
        result = run_attack(model, attack, x[todo], y[todo], constraint=constraint, confidence=spec.confidence,
                            budget=spec.budget, seed=spec.seed, start=warm, **spec.attack_params.get(attack, {}))
        x_adv[todo] = result.x_adv
        success[todo] = result.success
        pred[todo] = result.pred
        forward += result.forward_passes
        backward += result.backward_passes
    delta = (x_adv - x).flatten(1)
    nan = torch.full((n,), float("nan"), device=device)
    if bool(inferred.any()):
        pred[inferred] = model.predict(x_adv[inferred]).argmax(1)
    return Cell(model=model.name, attack=attack, eps=eps, attacked=attacked.cpu(), success=success.cpu(), pred=pred.cpu(),
                linf=torch.where(attacked, delta.abs().amax(1), nan).cpu(), l2=torch.where(attacked, delta.norm(dim=1), nan).cpu(),
                x_adv=x_adv.detach().cpu(), forward=forward, backward=backward,
                seconds=round(time.perf_counter() - start_time, 4), carried=int(carry.sum()), inferred=int(inferred.sum()))


@dataclass
class SweepResult:
    spec: SweepSpec
    table: pd.DataFrame
    matrix: pd.DataFrame
    cells: dict[tuple[str, str, float], Cell]
    sample_index: Tensor
    x: Tensor
    y: Tensor
    config: dict
    models: dict[str, ModelAdapter]


def run_sweep(spec: SweepSpec, out: Path | None = None, *, device: str = "cpu", progress: bool = True,
              data: tuple[Tensor, Tensor, str] | None = None) -> SweepResult:
    """Run (or resume, when ``out`` holds finished cells of the same configuration) the whole sweep."""
    models = {ref: load_model_ref(ref, device) for ref in spec.models}
    datasets = {m.dataset for m in models.values()}
    if data is None:
        if len(datasets) != 1:
            raise ValueError(f"models of different datasets cannot share a sweep: {sorted(map(str, datasets))}")
        from advkit.commands.attack import load_split

        data = load_split(datasets.pop(), "test", spec.data)
    x_all, y_all, source = data
    sample_index, x, y = select_samples(x_all, y_all, spec.n)
    x, y = x.to(device), y.to(device)
    config = fingerprint(spec, models, x, y, source)
    cells_dir, created_config = None, None
    if out is not None:
        cells_dir = Path(out) / "cells"
        cells_dir.mkdir(parents=True, exist_ok=True)
        config_path = Path(out) / "config.json"
        if config_path.exists():
            old = json.loads(config_path.read_text())
            if old != json.loads(json.dumps(config, default=str)):
                changed = sorted(k for k in set(old) | set(config) if json.dumps(old.get(k), sort_keys=True, default=str)
                                 != json.dumps(config.get(k), sort_keys=True, default=str))
                raise SweepConfigMismatch(f"{out} holds a sweep with a different configuration (changed: {', '.join(changed)}); "
                                          "use a new --out folder or delete the old one")
        else:
            atomic_write_json(config_path, config)
            created_config = config_path
    try:
        cells = _run_cells(spec, models, x, y, cells_dir, progress)
    except BaseException:
        # A sweep that fails before finishing any cell (e.g. an attack refusing a parameter) leaves no
        # config.json behind, so rerunning with the mistake fixed into the same folder is not refused.
        if created_config is not None and not any(cells_dir.glob("*.json")):
            created_config.unlink(missing_ok=True)
        raise
    table = results_table(spec, models, cells)
    matrix = success_matrix(spec, cells, sample_index)
    return SweepResult(spec=spec, table=table, matrix=matrix, cells=cells, sample_index=sample_index, x=x.cpu(), y=y.cpu(),
                       config=config, models=models)


def _run_cells(spec: SweepSpec, models: dict[str, ModelAdapter], x: Tensor, y: Tensor, cells_dir: Path | None,
               progress: bool) -> dict[tuple[str, str, float], Cell]:
    """Every (model, attack, eps) cell in order, each loaded from ``cells_dir`` if finished there, else run and saved."""
    from tqdm.auto import tqdm

    cells: dict[tuple[str, str, float], Cell] = {}
    clean_preds: dict[str, Tensor] = {}
    order = spec.eps if spec.search == "ascending" else spec.eps[::-1]
    jobs = [(ref, attack, eps) for ref in spec.models for attack in spec.attacks for eps in order]
    bar = tqdm(jobs, desc="sweep", unit="cell", file=sys.stderr, disable=None if progress else True)  # None: off when not a TTY
    for ref, attack, eps in bar:
        bar.set_postfix_str(f"{ref} {attack} eps={eps:g}")
        previous = cells.get((ref, attack, _previous_eps(order, eps)))
        cell = Cell.load(cells_dir, ref, attack, eps) if cells_dir is not None else None
        if cell is None:
            if ref not in clean_preds:
                clean_preds[ref] = models[ref].predict(x).argmax(1)
            cell = run_cell(spec, models[ref], attack, eps, x, y, previous, clean_preds[ref])
            if cells_dir is not None:
                cell.save(cells_dir)
        cells[(ref, attack, eps)] = cell
    bar.close()
    return cells


def _previous_eps(eps_list: list[float], eps: float) -> float | None:
    i = eps_list.index(eps)
    return eps_list[i - 1] if i > 0 else None


# ----------------------------------------------------------------------------- tables


def _row(model: ModelAdapter, attack: str, eps: float, attacked: Tensor, success: Tensor, linf: Tensor, l2: Tensor,
         forward: int, backward: int, seconds: float, carried: int, inferred: int = 0) -> dict:
    n, n_attacked, fooled = len(attacked), int(attacked.sum()), int(success.sum())
    low, high = wilson_interval(fooled, n_attacked)
    fooled_linf = linf[success]
    return {
        "model": model.name, "attack": attack, "eps": eps, "eps_01": eps / model.range_width, "n": n,
        "n_attacked": n_attacked, "clean_accuracy": n_attacked / n if n else float("nan"), "n_fooled": fooled,
        "success_rate": fooled / n_attacked if n_attacked else float("nan"), "ci_low": low, "ci_high": high,
        "robust_accuracy": (n_attacked - fooled) / n if n else float("nan"),
        "mean_linf": float(fooled_linf.mean()) if fooled else float("nan"),
        "max_linf": float(fooled_linf.max()) if fooled else float("nan"),
        "mean_l2": float(l2[success].mean()) if fooled else float("nan"),
        "forward_passes": forward, "backward_passes": backward, "seconds": seconds, "carried": carried,
        "inferred": inferred,
    }


def results_table(spec: SweepSpec, models: dict[str, ModelAdapter], cells: dict) -> pd.DataFrame:
    """One row per cell, plus a "worst-case" row per (model, eps): a sample counts as fooled if any attack fooled it."""
    rows = []
    for ref in spec.models:
        for eps in spec.eps:
            group = [cells[(ref, a, eps)] for a in spec.attacks]
            for c in group:
                rows.append(_row(models[ref], c.attack, eps, c.attacked, c.success, c.linf, c.l2, c.forward, c.backward,
                                 c.seconds, c.carried, c.inferred))
            if len(group) > 1:
                any_success = torch.stack([c.success for c in group]).any(0)
                linf = torch.stack([torch.where(c.success, c.linf, torch.full_like(c.linf, float("inf"))) for c in group]).amin(0)
                l2 = torch.stack([torch.where(c.success, c.l2, torch.full_like(c.l2, float("inf"))) for c in group]).amin(0)
                rows.append(_row(models[ref], "worst-case", eps, group[0].attacked, any_success, linf, l2,
                                 sum(c.forward for c in group), sum(c.backward for c in group),
                                 round(sum(c.seconds for c in group), 4), 0))
    return pd.DataFrame(rows)


def success_matrix(spec: SweepSpec, cells: dict, sample_index: Tensor) -> pd.DataFrame:
    """Per-sample success: one row per (model, test index), one column per ``attack@eps`` (NaN: not attacked)."""
    frames = []
    for ref in spec.models:
        columns = {}
        for attack in spec.attacks:
            for eps in spec.eps:
                c = cells[(ref, attack, eps)]
                columns[f"{attack}@{eps:g}"] = [int(s) if a else None for s, a in zip(c.success.tolist(), c.attacked.tolist())]
        frame = pd.DataFrame(columns)
        frame.insert(0, "test_index", sample_index.tolist())
        frame.insert(0, "model", ref)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
