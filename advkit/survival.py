"""The survival evaluator (S12): do adversarial examples survive flips, crops, rotations, grayscale?

``Survival().evaluate(model, x_adv, target=..., labels=..., x=...)`` returns one row per
(sample, transform), the untransformed adversarial example first (transform ``"none"``),
as a pandas DataFrame. A targeted example survives a transform when the model still predicts
its target; an untargeted one when it still predicts a wrong class. Given the clean inputs
``x`` and their labels, each row also says whether the *clean* image, transformed the same
way, is still classified correctly, which separates "the attack broke" from "the transform
alone confuses the model". ``still_fooled`` is the raw answer (still the target / still a wrong
class); ``survived`` counts only where the transformed clean image is still classified correctly
(when the clean images are given): a transform that fools the model on its own proves nothing
about the attack.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from advkit.models import ModelAdapter
from advkit.transforms import applicable_transforms, apply_transform, describe

__all__ = ["Survival"]

COLUMNS = [
    "sample",
    "image",
    "transform",
    "pred",
    "pred_name",
    "probability",
    "target",
    "target_name",
    "target_probability",
    "label",
    "label_name",
    "still_fooled",
    "survived",
    "clean_pred",
    "clean_pred_name",
    "clean_probability",
    "clean_correct",
]


@dataclass(kw_only=True)
class Survival:
    """Survival of adversarial examples under flip, crop, rotation and grayscale (S12)."""

    name: ClassVar[str] = "survival"
    transforms: tuple[str, ...] = ("flip", "crop", "rotate", "grayscale")
    crop_area: float = 0.8
    angle: float = 30.0

    def options(self) -> dict:
        return {"crop_area": self.crop_area, "angle": self.angle}

    def transformed(self, x: Tensor, bounds: tuple[float, float]) -> dict[str, Tensor]:
        """``{"none": x, transform: x transformed}`` for the transforms that apply to x's channels."""
        out = {"none": x}
        for name in applicable_transforms(self.transforms, x.shape[1]):
            out[name] = apply_transform(name, x, bounds, **self.options())
        return out

    def describe(self, name: str) -> str:
        return "adversarial example as attacked" if name == "none" else describe(name, **self.options())

    @torch.no_grad()
    def evaluate(
        self,
        model: ModelAdapter,
        x_adv: Tensor,
        *,
        target: Tensor | None = None,
        labels: Tensor | None = None,
        x: Tensor | None = None,
        names: Sequence[str] | None = None,
        accepted: Sequence[Collection[int]] | None = None,
    ):
        """One row per (sample, transform): predicted class and probability, and whether the attack survived.

        Give ``target`` for targeted examples (still fooled = still the target) or ``labels`` for
        untargeted ones (still fooled = still wrong); ``x`` (with ``labels``) adds the clean columns, and then
        ``survived`` also needs the transformed clean image classified correctly.
        ``accepted`` lists, per sample, the classes that count as a correct clean answer
        (default: its label alone), for photos with several right answers (tabby / tiger cat).
        """
        import pandas as pd

        n = x_adv.shape[0]
        if target is None and labels is None:
            raise ValueError("give target (targeted examples) or labels (untargeted ones)")
        if x is not None and labels is None:
            raise ValueError("the clean columns need the clean labels")
        if x is not None and x.shape != x_adv.shape:
            raise ValueError(f"x has shape {tuple(x.shape)} but x_adv has {tuple(x_adv.shape)}")
        target = None if target is None else torch.as_tensor(target, device=x_adv.device).long().expand(n)
        labels = None if labels is None else torch.as_tensor(labels, device=x_adv.device).long().expand(n)
        names = [str(i) for i in range(n)] if names is None else list(names)
        if accepted is not None and len(accepted) != n:
            raise ValueError(f"accepted has {len(accepted)} entries for {n} samples")
        if accepted is None and labels is not None:
            accepted = [{int(label)} for label in labels]
        classes = model.class_names
        adv = self.transformed(x_adv, model.bounds)
        clean = self.transformed(x, model.bounds) if x is not None else None
        rows = []
        for transform, batch in adv.items():
            probs = model.predict(batch).softmax(1)
            p, pred = probs.max(1)
            if clean is not None:
                clean_probs = model.predict(clean[transform]).softmax(1)
                clean_p, clean_pred = clean_probs.max(1)
            for i in range(n):
                k = int(pred[i])
                still_fooled = k == int(target[i]) if target is not None else k != int(labels[i])
                row = {
                    "sample": i,
                    "image": names[i],
                    "transform": transform,
                    "pred": k,
                    "pred_name": classes[k],
                    "probability": float(p[i]),
                    "target": None if target is None else int(target[i]),
                    "target_name": None if target is None else classes[int(target[i])],
                    "target_probability": None if target is None else float(probs[i, int(target[i])]),
                    "label": None if labels is None else int(labels[i]),
                    "label_name": None if labels is None else classes[int(labels[i])],
                    "still_fooled": bool(still_fooled),
                    "survived": bool(still_fooled),
                    "clean_pred": None,
                    "clean_pred_name": None,
                    "clean_probability": None,
                    "clean_correct": None,
                }
                if clean is not None:
                    c = int(clean_pred[i])
                    row.update(
                        clean_pred=c,
                        clean_pred_name=classes[c],
                        clean_probability=float(clean_p[i]),
                        clean_correct=c in accepted[i],
                        survived=bool(still_fooled) and c in accepted[i],
                    )
                rows.append(row)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return frame.sort_values(["sample"], kind="stable").reset_index(drop=True)

    @staticmethod
    def table(frame):
        """Per transform: share of samples whose attack survived, share still fooled whatever the clean image does
        (and, with clean columns, the clean accuracy under the transform)."""
        frame = frame.assign(survived=frame["survived"].astype(float), still_fooled=frame["still_fooled"].astype(float))
        columns = {"survived": "survival_rate", "still_fooled": "still_fooled_rate"}
        if frame["clean_correct"].notna().all():
            frame = frame.assign(clean_correct=frame["clean_correct"].astype(float))
            columns["clean_correct"] = "clean_accuracy"
        out = frame.groupby("transform", sort=False)[list(columns)].mean().rename(columns=columns)
        return out.reset_index()
