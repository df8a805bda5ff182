"""``advkit fool`` (S11, S12): make photos read as a chosen ImageNet class, then test whether that survives
a flip, a crop, a rotation and grayscale.

S11's update X' <- X' + lambda * dP(y_fool | X')/dX', clipped to [X - eps, X + eps] and to
valid pixels, is what the ``targeted`` attack does with sign steps: since
dP/dX' = P * d log P/dX', the probability and the log-probability (minus the cross-entropy
with the target) have gradients of the same direction, hence the same sign step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from advkit.errors import AdvkitError, AttackError, InputValidationError, ParameterError
from advkit.models import ModelAdapter
from advkit.provenance import write_summary
from advkit.studies import StudyResult


@dataclass
class Photo:
    """A photo ready to attack: its tensor, the label it is attacked from and its clean top-1."""

    name: str
    source: str  # "sample" or the file path
    x: Tensor  # (1, 3, H, W) in the model's bounds
    label: int
    label_from: str  # "expected" (a sample's declared class) or "top-1" (a user photo)
    pred: int
    probability: float
    expected: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)


def eps_text(eps: float) -> str:
    """8/255-style text when eps is a whole number of 8-bit levels, else the number."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-4 and levels >= 1 else f"{eps:.4g}"


def levels_text(value: float) -> str:
    """A perturbation size on the 0-1 scale in 8-bit levels: 0.00706 -> '1.8/255'."""
    return f"{value * 255:.2g}/255"


def prepare_photos(model: ModelAdapter, sources: list[str], device: str | torch.device = "cpu") -> list[Photo]:
    """Load each photo as the model expects and check that the model classifies it correctly.

    A sample photo must get one of its declared classes; a user photo has no declared class,
    so its top-1 class becomes its label.
    """
    from advkit.images import SAMPLES, ImageLoadError, load_image

    photos = []
    for source in sources:
        try:
            x = load_image(source, model).to(device)
        except (ImageLoadError, ValueError) as error:
            raise ParameterError(f"--image {source!r}: {error}") from None
        probs = model.predict(x).softmax(1)[0]
        p, pred = (float(v) for v in probs.max(0))
        pred = int(pred)
        names = model.class_names
        if source in SAMPLES:
            expected = SAMPLES[source].expected
            if pred not in expected:
                wanted = ", ".join(f"{c} {names[c]!r}" for c in expected)
                raise InputValidationError(
                    f"model {model.name!r} classifies sample photo {source!r} as {pred} {names[pred]!r} (p={p:.2f}), "
                    f"but it shows {wanted}; an attack needs a correctly classified photo: pick another photo or model"
                )
            photos.append(Photo(source, "sample", x, pred, "expected", pred, p, expected))
        else:
            photos.append(Photo(Path(source).name, str(source), x, pred, "top-1", pred, p))
    return photos


def fool_photos(
    model: ModelAdapter,
    photos: list[Photo],
    *,
    target: int,
    eps: float,
    attack: str = "targeted",
    steps: int = 100,
    step_size: float | None = None,
    confidence: float | None = None,
    seed: int = 0,
    gradient: str | None = None,
    stop_confidence: float | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Attack each photo on its own (so each gets its own time and step count) through ``run_attack``; ``gradient``:
    an estimator spec (e.g. :func:`eot_spec`'s) the attack differentiates the model through; ``stop_confidence``: the
    probability of the target the attack's model (the EOT average) must reach before a photo's attack stops, while
    success is still judged on the real model at ``confidence``."""
    import dataclasses

    from advkit.criteria import criterion_for
    from advkit.registry import get_attack
    from advkit.runner import run_attack

    attack_cls = get_attack(attack).obj
    fields = {f.name for f in attack_cls.param_fields()}
    params = {"steps": steps, "step_size": eps / 10 if step_size is None else step_size}
    params = {k: v for k, v in params.items() if k in fields}
    results = []
    for photo in photos:
        if photo.label == target:
            raise ParameterError(
                f"photo {photo.name!r} already reads as the target {target} {model.class_names[target]!r}; pick another target"
            )
        y = torch.tensor([photo.label], device=photo.x.device)
        try:
            attack_obj = attack_cls(**params)
            stop = confidence if stop_confidence is None else stop_confidence
            result = run_attack(
                model, attack_obj, photo.x, y, eps=eps, target=target, confidence=stop, seed=seed, gradient=gradient
            )
            if stop_confidence is not None:  # success judged at the reported confidence, on the real model
                criterion = criterion_for(True, attack_obj.success_confidence if confidence is None else confidence)
                reached = criterion.reached(model.predict(result.x_adv), result.y, result.target) & ~result.nonfinite
                result = dataclasses.replace(result, success=reached, criterion=criterion.describe())
        except AdvkitError:
            raise
        except (ValueError, RuntimeError) as error:
            raise AttackError(f"attack on {photo.name!r} failed: {error}") from None
        if progress is not None:
            verdict = "fooled" if bool(result.success[0]) else "not fooled"
            how = "" if gradient is None else " (EOT)"
            progress(f"  {photo.name}{how}: {verdict} in {_steps(result)} steps, {result.seconds:.1f} s")
        results.append(result)
    return results


def _steps(result) -> int:
    """Attack steps: backward passes over the estimator's passes per call (K for EOT over K draws)."""
    from advkit.gradients import EOT, parse_gradient

    spec = result.extra.get("gradient")
    estimator = parse_gradient(spec) if spec and spec.startswith("eot:") else None  # (transfer: would load a model)
    return int(result.backward_passes) // (estimator.samples if isinstance(estimator, EOT) else 1)


def photo_record(model: ModelAdapter, photo: Photo, result) -> dict:
    """The JSON-able before/after record of one attacked photo."""
    names = model.class_names
    after_probs = model.predict(result.x_adv).softmax(1)[0]
    target = int(result.target[0])
    return {
        "image": photo.name,
        "source": photo.source,
        "label": photo.label,
        "label_name": names[photo.label],
        "label_from": photo.label_from,
        "expected": list(photo.expected) if photo.expected else None,
        "before": {"class": photo.pred, "name": names[photo.pred], "probability": round(photo.probability, 4)},
        "after": {
            "class": int(result.pred[0]),
            "name": names[int(result.pred[0])],
            "probability": round(float(result.confidence[0]), 4),
            "target_probability": round(float(after_probs[target]), 4),
        },
        "success": bool(result.success[0]),
        "linf": float(result.linf()[0]),
        "linf_255": round(float(result.linf()[0]) * 255, 4),
        "steps": _steps(result),
        "forward_passes": int(result.forward_passes),
        "backward_passes": int(result.backward_passes),
        "seconds": round(result.seconds, 3),
    }


# ---------------------------------------------------------------- figures


def _plain(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _eot_title(gradient: str | None) -> str:
    if gradient is None:
        return ""
    from advkit.gradients import parse_gradient

    e = parse_gradient(gradient)
    return f"\nattack through EOT: logits averaged over {e.samples} draws of {' + '.join(e.transforms)} per step"


def fooling_figure(model: ModelAdapter, photos: list[Photo], results, eps: float, gradient: str | None = None):
    """S11: one row per photo: original (class, probability), the noise amplified, the adversarial image."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    names = model.class_names
    low, high = model.bounds
    fig = Figure(figsize=(7.6, 2.75 * len(photos) + 0.5), layout="constrained")
    axes = fig.subplots(len(photos), 3, squeeze=False)
    for row, photo, result in zip(axes, photos, results):
        delta = result.delta[0].float().cpu() / (high - low)  # on the 0-1 scale
        peak = float(delta.abs().max())
        gain = 0.5 / peak if peak > 0 else 1.0  # +-peak -> [0, 1]: the largest change becomes black or white
        row[0].imshow(to_image(result.x[0], model.bounds))
        row[0].set_title(f"{photo.name}: {_short(names[photo.pred])}\np = {photo.probability:.2f}", fontsize=10)
        row[1].imshow((0.5 + delta * gain).clamp(0, 1).permute(1, 2, 0).numpy())
        row[1].set_title(f"noise, amplified x{gain:.0f}\nL-inf {levels_text(peak)}", fontsize=10)
        pred = int(result.pred[0])
        color = "darkgreen" if bool(result.success[0]) else "firebrick"
        row[2].imshow(to_image(result.x_adv[0], model.bounds))
        row[2].set_title(
            f"adversarial: {_short(names[pred])}\np = {float(result.confidence[0]):.2f}", fontsize=10, color=color
        )
        for ax in row:
            _plain(ax)
    target = int(results[0].target[0])
    fig.suptitle(
        f"{model.name}: photos made to read as {target} '{names[target]}', L-inf eps = {eps_text(eps)}"
        + _eot_title(gradient),
        fontsize=11,
    )
    return fig


def survival_figure(
    model: ModelAdapter, frame, images: dict[str, Tensor], evaluator, eps: float, gradient: str | None = None
):
    """S12: one row per photo, one column per transform; titles: new top class, probability, survived or not."""
    from matplotlib.figure import Figure

    from advkit.figures import to_image

    transforms = list(images)
    n = images[transforms[0]].shape[0]
    fig = Figure(figsize=(2.2 * len(transforms) + 0.3, 3.0 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, len(transforms), squeeze=False)
    for i in range(n):
        for j, transform in enumerate(transforms):
            ax = axes[i, j]
            row = frame[(frame["sample"] == i) & (frame["transform"] == transform)].iloc[0]
            image = to_image(images[transform][i], model.bounds)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            inconclusive = row["still_fooled"] and not row["survived"]  # the transform alone fools the model
            mark = "survived" if row["survived"] else ("inconclusive: clean also wrong" if inconclusive else "lost")
            color = "darkgreen" if row["survived"] else ("darkorange" if inconclusive else "firebrick")
            head = f"{row['image']}, adversarial" if transform == "none" else transform
            ax.set_title(
                f"{head}\n{_short(row['pred_name'], 18)} {row['probability']:.2f}, {mark}", fontsize=9, color=color
            )
            if row["clean_pred_name"] is not None:
                ax.set_xlabel(f"clean: {_short(row['clean_pred_name'], 16)} {row['clean_probability']:.2f}", fontsize=8)
            _plain(ax)
    target = frame["target_name"].iloc[0]
    kind = "untargeted" if target is None else f"'{target}'"
    fig.suptitle(
        f"{model.name}: do the {kind} examples (L-inf {eps_text(eps)}) survive transforms?\n"
        "title: top class and probability of the transformed adversarial image; below: the transformed clean "
        "image (survived only where it is still classified correctly)" + _eot_title(gradient),
        fontsize=10,
    )
    return fig


# ---------------------------------------------------------------- the whole command


def survival_study(model: ModelAdapter, photos: list[Photo], results, evaluator=None):
    """The S12 table (pandas) and the transformed adversarial images."""
    from advkit.survival import Survival

    evaluator = evaluator or Survival()
    x = torch.cat([r.x for r in results])
    x_adv = torch.cat([r.x_adv for r in results])
    target = torch.cat([r.target for r in results])
    labels = torch.tensor([p.label for p in photos], device=x.device)
    accepted = [set(p.expected) if p.expected else {p.label} for p in photos]
    frame = evaluator.evaluate(
        model, x_adv, target=target, labels=labels, x=x, names=[p.name for p in photos], accepted=accepted
    )
    return frame, evaluator.transformed(x_adv, model.bounds), evaluator


def save_figure(fig, path: Path) -> Path:
    """PNG (advkit's usual figure) or, for a .jpg path, a JPEG a fraction of the size (photos compress badly as PNG)."""
    from advkit.figures import save_figure as save_png

    if path.suffix.lower() in {".jpg", ".jpeg"}:
        fig.savefig(path, dpi=100, pil_kwargs={"quality": 90})
        return path
    return save_png(fig, path)


def write_outputs(
    out: Path, model, photos, results, frame, images, evaluator, eps: float, summary: dict, figure_format: str = "png",
    gradient: str | None = None, extra: Sequence[Path] = (),
) -> list[Path]:  # fmt: skip
    fool = save_figure(fooling_figure(model, photos, results, eps, gradient), out / f"fool.{figure_format}")
    figure = survival_figure(model, frame, images, evaluator, eps, gradient)
    survival_png = save_figure(figure, out / f"survival.{figure_format}")
    survival_csv = out / "survival.csv"
    frame.to_csv(survival_csv, index=False, float_format="%.4f")
    paths = [fool, survival_png, survival_csv, *extra, out / "summary.json"]
    summary["out"] = [str(p) for p in paths]
    write_summary(out / "summary.json", summary)
    return paths


#: EOT in ``advkit fool`` unless ``--eot`` says otherwise: one transform per draw (``mix=1``: S12 tests each transform
#: on its own, and a draw that composes all four never shows the photo as it is nor grayscale alone: measured with
#: ``benchmarks/bench_fool_eot.py`` at 8/255, composing left one photo in four short of the target untransformed,
#: flipped and in grayscale; one transform per draw kept all four there), rotations uniform in +-45 degrees and crops
#: keeping 64-100% of the area, so S12's fixed 30-degree rotation and 80% central crop lie inside the distribution
#: rather than on its edge (``eot:rotate``'s own range is +-30 degrees, its crops 80-100%).
FOOL_EOT_OPTIONS = {"mix": 1.0, "angle": 45.0, "crop_area": 0.64}
#: The probability of the target the EOT-averaged logits must reach before ``advkit fool --eot`` stops a photo's
#: attack. Measured (``benchmarks/bench_fool_eot.py``, EfficientNet-Lite0, the four sample photos, composed draws):
#: stopping at the reported confidence (0.9) left the untransformed photo and its flip short of the target on one
#: photo in four at 8/255; 0.99 made both hold on all four.
EOT_CONFIDENCE = 0.99
#: the EOT options ``--eot`` may set besides the transforms (``samples`` comes from ``--eot-samples``)
EOT_OPTION_NAMES = ("angle", "crop_area", "sigma", "seed", "mix")


def eot_spec(eot: str | Sequence[str], samples: int = 8) -> str:
    """The ``eot:`` gradient spec of ``advkit fool --eot TRANSFORMS --eot-samples K`` (checked: ParameterError).

    ``eot`` is comma-separated (or a list of) transform names and ``option=value`` items (mix, angle, crop_area, sigma,
    seed); the ranges not given are :data:`FOOL_EOT_OPTIONS`."""
    from advkit.gradients import EOT, eot_transforms, parse_gradient

    items = [i.strip() for i in (eot.split(",") if isinstance(eot, str) else eot) if i and i.strip()]
    if not items:
        raise ParameterError(f"eot: give transforms to average over, e.g. flip,crop,rotate,grayscale (got {eot!r})")
    given = {i.partition("=")[0].strip() for i in items if "=" in i}
    for name in given:
        if name not in EOT_OPTION_NAMES:
            hint = " (give the number of draws as eot_samples / --eot-samples)" if name == "samples" else ""
            raise ParameterError(f"eot: no option {name!r}{hint}; options: {', '.join(EOT_OPTION_NAMES)}")
    known = eot_transforms()
    for name in (i for i in items if "=" not in i):
        if name not in known:
            raise ParameterError(f"eot: unknown transform {name!r}; transforms: {', '.join(known)}")
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise ParameterError(f"eot samples must be an integer, got {samples!r}")
    defaults = [f"{k}={v:g}" for k, v in FOOL_EOT_OPTIONS.items() if k not in given]
    estimator = parse_gradient(f"eot:{','.join([*items, f'samples={samples}', *defaults])}")
    assert isinstance(estimator, EOT)
    return estimator.describe()


def eot_record(spec: str, results) -> dict:
    """What ``summary.json`` says about EOT: the spec, transforms, draws, ranges and the passes it cost."""
    from advkit.gradients import eot_transforms, parse_gradient

    e = parse_gradient(spec)
    return {
        "gradient": spec,
        "transforms": list(e.transforms),
        "samples": e.samples,
        "seed": e.seed,
        "options": dict(e.options),
        "described": {t: eot_transforms()[t].description for t in e.transforms},
        "passes_per_step": {"forward": e.samples, "backward": e.samples},
        "forward_passes": sum(int(r.forward_passes) for r in results),
        "backward_passes": sum(int(r.backward_passes) for r in results),
        "stopping": "a photo's attack stops once the EOT-averaged logits give the target stop_confidence; success "
        "is judged on the untransformed photo, re-checked by a fresh forward pass",
    }


def _survival_record(evaluator, frame, images) -> dict:
    return {
        "transforms": {name: evaluator.describe(name) for name in images},
        "table": evaluator.table(frame).round(4).to_dict(orient="records"),
        "rows": json.loads(frame.to_json(orient="records")),
    }


def fool_study(
    model: ModelAdapter,
    sources: list[str],
    *,
    target: int | str,
    eps: float,
    attack: str = "targeted",
    steps: int = 100,
    step_size: float | None = None,
    confidence: float | None = None,
    seed: int = 0,
    survival: bool = True,
    eot: str | Sequence[str] | None = None,
    eot_samples: int = 8,
    eot_confidence: float = EOT_CONFIDENCE,
    figure_format: str = "png",
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """S11 (and S12 unless ``survival=False``) end to end: each photo made to read as ``target``; the survival study.

    With ``eot`` (transforms such as ``"flip,crop,rotate,grayscale"``, see :func:`eot_spec`) the attack differentiates
    the logits averaged over ``eot_samples`` random draws of the transforms (K forward and K backward passes per step)
    and stops once that average gives the target probability ``eot_confidence`` (success is still judged on the
    untransformed photo at ``confidence``); the same attack without EOT runs first at the same eps, so the summary
    (``before_eot``) and the figures show survival before and after."""
    from advkit.classes import resolve_class
    from advkit.params import check_number

    gradient = None if eot is None else eot_spec(eot, eot_samples)  # checked before any pass
    check_number(eot_confidence, "eot_confidence", ge=0, lt=1)
    target = resolve_class(model.class_names, target, what="--target")
    device = model.device
    photos = prepare_photos(model, sources, device)
    options = dict(attack=attack, steps=steps, step_size=step_size, confidence=confidence, seed=seed)
    before = None
    if gradient is not None:
        if progress is not None:
            progress("  without EOT (before):")
        before = fool_photos(model, photos, target=target, eps=eps, progress=progress, **options)
        if progress is not None:
            progress(f"  with EOT ({gradient}):")
    stop = None if gradient is None else eot_confidence
    results = fool_photos(
        model, photos, target=target, eps=eps, gradient=gradient, stop_confidence=stop, progress=progress, **options
    )
    records = [photo_record(model, p, r) for p, r in zip(photos, results)]
    summary: dict = {
        "model": model.name,
        "attack": results[0].attack,
        "attack_params": results[0].attack_params,
        "criterion": results[0].criterion,
        "target": target,
        "target_name": model.class_names[target],
        "eps": eps,
        "eps_text": eps_text(eps),
        "constraints": results[0].constraints,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "images": records,
        "n_success": sum(r["success"] for r in records),
        "seconds_total": round(sum(r["seconds"] for r in records), 3),
    }
    if gradient is not None:
        summary["eot"] = {**eot_record(gradient, results), "stop_confidence": eot_confidence}
        plain = [photo_record(model, p, r) for p, r in zip(photos, before)]
        summary["before_eot"] = {
            "images": plain,
            "n_success": sum(r["success"] for r in plain),
            "seconds_total": round(sum(r["seconds"] for r in plain), 3),
        }
    frame = images = evaluator = None
    plain_survival = None
    if survival:
        frame, images, evaluator = survival_study(model, photos, results)
        summary["survival"] = _survival_record(evaluator, frame, images)
        if before is not None:
            plain_survival = survival_study(model, photos, before, evaluator)
            summary["before_eot"]["survival"] = _survival_record(evaluator, plain_survival[0], plain_survival[1])

    def writer(out: Path) -> list[Path]:
        if not survival:
            paths = [save_figure(fooling_figure(model, photos, results, eps, gradient), out / f"fool.{figure_format}")]
            paths.append(write_summary(out / "summary.json", {**summary, "out": [str(p) for p in paths]}))
            return paths
        extra = []
        if plain_survival is not None:
            frame0, images0, _ = plain_survival
            figure = survival_figure(model, frame0, images0, evaluator, eps)
            extra = [save_figure(figure, out / f"survival_before_eot.{figure_format}")]
            extra.append(out / "survival_before_eot.csv")
            frame0.to_csv(extra[-1], index=False, float_format="%.4f")
        return write_outputs(
            out, model, photos, results, frame, images, evaluator, eps, summary, figure_format, gradient, extra
        )

    return StudyResult("fool", summary, writer, {"photos": photos, "results": results, "before_eot": before})


def format_summary(s: dict) -> str:
    """The human summary of ``advkit fool``."""
    lines = [
        f"advkit fool on {s['model']}: target {s['target']} '{s['target_name']}', L-inf eps {s['eps_text']} "
        f"({s['eps']:.5f}), {s['attack']} attack, {s['criterion']}",
    ]
    width = max(len(r["image"]) for r in s["images"])
    for r in s["images"]:
        b, a = r["before"], r["after"]
        label = "" if r["label_from"] == "expected" else " (no known class: top-1 used as label)"
        verdict = "fooled" if r["success"] else "NOT fooled"
        lines.append(
            f"  {r['image']:<{width}}  {b['name']} (p={b['probability']:.2f}) -> {a['name']} (p={a['probability']:.2f})  "
            f"{verdict}, L-inf {r['linf_255']:.2f}/255, {r['steps']} steps, {r['seconds']:.1f} s{label}"
        )
    lines.append(f"  fooled {s['n_success']}/{len(s['images'])} photos in {s['seconds_total']:.1f} s on {s['device']}")
    if "eot" in s:
        e, b = s["eot"], s["before_eot"]
        ranges = ", ".join(f"{k} {v:g}" for k, v in e["options"].items())
        lines[0] += f", through EOT over {'+'.join(e['transforms'])}"
        lines.insert(
            1,
            f"  EOT: logits averaged over {e['samples']} draws of {', '.join(e['transforms'])}"
            + (f" ({ranges})" if ranges else "")
            + f" per step ({e['samples']} forward + {e['samples']} backward passes), a photo's attack stopping once "
            f"that average gives the target p >= {e['stop_confidence']:.2f}; {e['forward_passes']} forward, "
            f"{e['backward_passes']} backward passes in all; without EOT: fooled {b['n_success']}/{len(b['images'])} "
            f"in {b['seconds_total']:.1f} s",
        )
    if "survival" in s and "eot" in s and "survival" in s["before_eot"]:
        before = {row["transform"]: row for row in s["before_eot"]["survival"]["table"]}
        lines.append(
            "  survival (S12): share of photos still read as the target with the transformed clean photo still right, "
            "without EOT -> with EOT (still read as the target at all, without -> with)"
        )
        for row in s["survival"]["table"]:
            b = before[row["transform"]]
            what = s["survival"]["transforms"][row["transform"]]
            lines.append(
                f"    {row['transform']:<10} {b['survival_rate']:.2f} -> {row['survival_rate']:.2f}   "
                f"({b['still_fooled_rate']:.2f} -> {row['still_fooled_rate']:.2f}; {what})"
            )
    elif "survival" in s:
        has_clean = "clean_accuracy" in s["survival"]["table"][0]
        lines.append(
            "  survival (S12): share of photos still read as the target"
            + (
                " with the transformed clean photo still right / still read as the target at all / clean "
                "accuracy under the same transform"
                if has_clean
                else ""
            )
        )
        for row in s["survival"]["table"]:
            extra = f" / {row['still_fooled_rate']:.2f} / {row['clean_accuracy']:.2f}" if has_clean else ""
            what = s["survival"]["transforms"][row["transform"]]
            lines.append(f"    {row['transform']:<10} {row['survival_rate']:.2f}{extra}   ({what})")
    if s.get("out"):
        lines.append(f"  wrote {', '.join(s['out'])}")
    return "\n".join(lines)
