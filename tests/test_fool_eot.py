"""``advkit fool --eot`` (issue 15, S12 turned around): the targeted attack through EOT, before and after.

The model is a constructed 32 x 32 "ImageNet" classifier whose target logit is 10 x (3 x mean of the left half -
mean of the right half) of the image: on a uniform gray photo, the plain attack brightens the left half and darkens
the right (which a flip turns against the target), while EOT over flips sees the average 10 x (mean of both halves)
and brightens the whole image, which a flip leaves as it is. Each test takes well under a second.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import advkit
from advkit import plugins
from advkit.cli import cli
from advkit.errors import ParameterError
from advkit.images import Preprocessing, imagenet_adapter
from advkit.models import ModelSpec
from advkit.studies.fool import eot_spec, fool_study

SPACE_SHUTTLE = 812


class HalvesNet(nn.Module):
    """Logits: class 0 at 12, the target at 10 x (3 x left-half mean - right-half mean), every other class at 0."""

    def forward(self, x):
        half = x.shape[-1] // 2
        left, right = x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))
        logits = torch.zeros(x.shape[0], 1000, dtype=x.dtype, device=x.device)
        logits = logits + nn.functional.one_hot(torch.tensor(0), 1000).to(x.dtype) * 12.0
        shuttle = nn.functional.one_hot(torch.tensor(SPACE_SHUTTLE), 1000).to(x.dtype)
        return logits + shuttle * (10 * (3 * left - right)).unsqueeze(1)


def halves(name: str = "halves"):
    plain = Preprocessing(crop_size=32, resize_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return imagenet_adapter(HalvesNet(), name=name, preprocessing=plain, description="constructed test model")


@pytest.fixture
def model():
    """The constructed model, also registered as ``halves`` for the CLI."""

    class HalvesPlugin:
        @advkit.hookimpl
        def register_models(self, register):
            register(ModelSpec(name="halves", description="test", load=halves, dataset="imagenet"))

    plugins.register_plugin(HalvesPlugin(), name="halves_plugin")
    try:
        yield halves()
    finally:
        plugins.unregister_plugin("halves_plugin")


@pytest.fixture
def gray(tmp_path):
    """A uniform gray photo: its flip is itself, so the clean photo keeps its class under a flip."""
    path = tmp_path / "gray.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def survival_of(survival: dict, transform: str) -> float:
    return next(row["survival_rate"] for row in survival["table"] if row["transform"] == transform)


def test_eot_examples_survive_the_flip_that_undoes_the_plain_ones(model, gray):
    study = fool_study(model, [gray], target=SPACE_SHUTTLE, eps=0.25, steps=30, eot="flip", eot_samples=32)
    s = study.summary()
    # both fool the untransformed model at p >= 0.9 (EOT's average never reaches its stopping 0.99: all 30 steps)
    assert s["before_eot"]["n_success"] == 1 and s["n_success"] == 1 and s["images"][0]["steps"] == 30
    assert s["criterion"] == "target class with p >= 0.90" and s["eot"]["stop_confidence"] == 0.99
    assert survival_of(s["before_eot"]["survival"], "flip") == 0.0
    assert survival_of(s["survival"], "flip") == 1.0
    plain, eot = study.data["before_eot"][0].delta, study.data["results"][0].delta
    half = plain.shape[-1] // 2
    assert float(plain[..., :half].min()) > 0 > float(plain[..., half:].max())  # left up, right down
    assert float(eot.min()) > 0  # the whole image brighter: the same under a flip


def test_eot_costs_exactly_k_forward_and_backward_passes_per_step(model, gray):
    # p >= 0.999999 is out of reach at eps 1/255, so both attacks take all 5 steps and one last evaluation
    study = fool_study(
        model, [gray], target=SPACE_SHUTTLE, eps=1 / 255, steps=5, confidence=0.999999, eot="flip,crop",
        eot_samples=3, eot_confidence=0.999999, survival=False,
    )  # fmt: skip
    s = study.summary()
    (plain,), (eot,) = s["before_eot"]["images"], s["images"]
    assert (plain["steps"], plain["forward_passes"], plain["backward_passes"]) == (5, 6, 5)
    assert (eot["steps"], eot["forward_passes"], eot["backward_passes"]) == (5, 3 * 6, 3 * 5)
    e = s["eot"]
    assert e["gradient"] == "eot:flip,crop,samples=3,angle=45,crop_area=0.64,mix=1"
    assert e["samples"] == 3 and e["passes_per_step"] == {"forward": 3, "backward": 3}
    assert e["stop_confidence"] == 0.999999
    assert (e["forward_passes"], e["backward_passes"]) == (18, 15)


def test_the_cli_runs_before_and_after_and_records_eot(model, gray, tmp_path):
    out = tmp_path / "out"
    common = ["fool", "--model", "halves", "--image", gray, "--target", "812", "--eps", "64/255", "--steps", "30"]
    result = invoke(*common, "--eot", "flip", "--eot-samples", "32", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["eot"]["transforms"] == ["flip"] and s["eot"]["samples"] == 32
    assert survival_of(s["before_eot"]["survival"], "flip") == 0.0 and survival_of(s["survival"], "flip") == 1.0
    for name in ["fool.png", "survival.png", "survival.csv", "survival_before_eot.png", "survival_before_eot.csv"]:
        assert (out / name).stat().st_size > 100, name
    assert json.loads((out / "summary.json").read_text())["eot"]["gradient"].startswith("eot:flip,samples=32")
    text = invoke(*common, "--eot", "flip,angle=60", "--eot-samples", "32").output
    assert "through EOT over flip" in text and "EOT: logits averaged over 32 draws of flip" in text
    assert "flip       0.00 -> 1.00" in text and "angle 60" in text and "p >= 0.99" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eot", "blur"], "unknown transform 'blur'"),
        (["--eot", ""], "give transforms"),
        (["--eot", "flip", "--eot-samples", "0"], "samples must lie in 1..1024, got 0"),
        (["--eot", "flip", "--eot-samples", "2000"], "samples must lie in 1..1024, got 2000"),
        (["--eot", "flip,samples=4"], "no option 'samples' (give the number of draws as eot_samples / --eot-samples)"),
        (["--eot", "flip,wobble=1"], "no option 'wobble'"),
        (["--eot", "rotate,angle=abc"], "angle='abc' is not a number"),
        (["--eot-samples", "4"], "--eot-samples needs --eot TRANSFORMS"),
        (["--eot-confidence", "0.5"], "--eot-confidence needs --eot TRANSFORMS"),
        (["--eot", "flip", "--eot-confidence", "1"], "--eot-confidence must lie in [0, 1), got 1"),
        (["--eot", "flip", "--eot-samples", "x"], "'x' is not a valid integer"),
    ],
)
def test_bad_eot_values_are_one_line_usage_errors_before_any_pass(model, monkeypatch, args, message):
    import advkit.cli.studies as studies

    def no_model(*_, **__):
        raise AssertionError("the model was opened")

    monkeypatch.setattr(studies, "open_model", no_model)
    result = invoke("fool", "--model", "halves", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert model.counter.snapshot() == (0, 0)


def test_eot_spec_fills_the_ranges_that_cover_s12_and_keeps_given_ones():
    assert (
        eot_spec("flip,crop,rotate,grayscale")
        == "eot:flip,crop,rotate,grayscale,samples=8,angle=45,crop_area=0.64,mix=1"
    )
    assert eot_spec(["rotate", "angle=30"], 4) == "eot:rotate,samples=4,angle=30,crop_area=0.64,mix=1"
    with pytest.raises(ParameterError, match="eot samples must be an integer"):
        eot_spec("flip", 2.5)
