"""Channels-last: used for conv nets on a CPU during a run, refused for models that assume the default layout, and the
module's own tensors given back after every run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit import layout
from advkit.layout import CHANNELS_LAST, CONTIGUOUS, LayoutSwitch, channels_last_refusal, layout_for_run
from advkit.models import ModelAdapter
from advkit.runner import run_attack


class Convs(nn.Module):
    """Two convolutions and a linear layer; ``flatten`` says how the activations become a vector: "flatten" (any
    layout), "view" (only the default layout: raises on channels-last) or "pointer" (reads the memory as if it were in
    the default layout: silently different numbers on channels-last)."""

    def __init__(self, flatten: str = "flatten") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 10)
        self.flatten = flatten

    def forward(self, x):
        h = self.conv2(self.conv1(x).relu()).relu()
        if self.flatten == "view":
            h = h.view(h.shape[0], -1)
        elif self.flatten == "pointer":
            n, c, height, width = h.shape
            h = h.as_strided((n, c * height * width), (c * height * width, 1))
        else:
            h = h.flatten(1)
        return self.fc(h)


def convs(flatten: str = "flatten") -> ModelAdapter:
    return ModelAdapter(
        Convs(flatten).eval(), name=f"convs-{flatten}", bounds=(0.0, 1.0), input_shape=(3, 6, 6),
        class_names=[str(i) for i in range(10)],
    )  # fmt: skip


def inputs(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def test_a_switch_moves_the_4d_tensors_and_gives_back_the_very_same_ones():
    model = convs()
    before = {name: (p, p.data, p.stride()) for name, p in model.module.named_parameters()}
    switch = LayoutSwitch(model.module)
    switch.use(CHANNELS_LAST)
    assert switch.current == CHANNELS_LAST
    for name, p in model.module.named_parameters():
        assert p is before[name][0]  # the same Parameter objects (an optimizer holding them still works)
        if p.dim() == 4:
            assert p.stride()[1] == 1  # channels last, the 3-channel input layer's weights included
        assert torch.equal(p, before[name][1])  # values never change
    assert not model.module.conv2.weight.is_contiguous()
    switch.restore()
    one_channel = nn.Conv2d(1, 4, 3)  # its weight counts as channels-last already: only .to(memory_format) restrides it
    LayoutSwitch(one_channel).use(CHANNELS_LAST)
    assert one_channel.weight.stride() == (9, 1, 3, 1)  # else oneDNN runs the layer in the default layout
    for name, p in model.module.named_parameters():
        assert p.data.data_ptr() == before[name][1].data_ptr() and p.stride() == before[name][2]
    assert switch.current == CONTIGUOUS


def test_models_that_assume_the_default_layout_are_refused_and_left_as_they_were():
    x = inputs(4)
    fine = convs("flatten")
    assert channels_last_refusal(fine, LayoutSwitch(fine.module), x) is None
    raising = convs("view")
    reason = channels_last_refusal(raising, LayoutSwitch(raising.module), x)
    assert reason is not None and "failed in channels-last (RuntimeError" in reason
    silent = convs("pointer")
    reason = channels_last_refusal(silent, LayoutSwitch(silent.module), x)
    assert reason is not None and "logits differ" in reason
    for model in (fine, raising, silent):
        assert model.module.conv2.weight.is_contiguous()  # the check leaves the module in its own layout
        assert model.counter.snapshot() == (0, 0)  # outside the pass counter


def test_a_run_on_a_cpu_uses_channels_last_checks_once_and_gives_the_module_back(monkeypatch):
    model = convs()
    checks = []
    real_check = layout.channels_last_refusal
    monkeypatch.setattr(layout, "channels_last_refusal", lambda *a: checks.append(1) or real_check(*a))
    before = {name: (p.data.data_ptr(), p.stride()) for name, p in model.module.named_parameters()}
    with layout_for_run(model, inputs(8)) as info:
        assert info["chosen"] == CHANNELS_LAST and model.module.conv2.weight.stride()[1] == 1
    with pytest.raises(KeyError), layout_for_run(model, inputs(8)):
        assert model.module.conv2.weight.stride()[1] == 1
        raise KeyError("an error inside the run")
    assert checks == [1]  # the module's verdict is kept for the process
    assert {name: (p.data.data_ptr(), p.stride()) for name, p in model.module.named_parameters()} == before


def test_a_run_keeps_the_module_layout_where_the_rule_says_so(monkeypatch):
    with layout_for_run(convs("view"), inputs(8)) as info:
        assert info["chosen"] == CONTIGUOUS and "failed in channels-last (RuntimeError" in info["how"]
    with layout_for_run(convs("pointer"), inputs(8)) as info:
        assert info["chosen"] == CONTIGUOUS and "logits differ" in info["how"]
    stochastic = convs()
    stochastic.metadata["stochastic"] = True
    with layout_for_run(stochastic, inputs(8)) as info:
        assert info["chosen"] == CONTIGUOUS and "stochastic" in info["how"]
    mlp = ModelAdapter(
        nn.Sequential(nn.Flatten(), nn.Linear(108, 10)), name="mlp", bounds=(0.0, 1.0), input_shape=(3, 6, 6),
        class_names=[str(i) for i in range(10)],
    )  # fmt: skip
    with layout_for_run(mlp, inputs(8)) as info:
        assert info["chosen"] == CONTIGUOUS and "no 4-D weights" in info["how"]
    monkeypatch.setattr(layout, "CHANNELS_LAST_ON", ())
    model = convs()
    with layout_for_run(model, inputs(8)) as info:
        assert info["chosen"] == CONTIGUOUS and model.module.conv2.weight.is_contiguous()


@pytest.mark.parametrize("flatten", ["flatten", "view"])
def test_run_attack_reports_the_layout_and_gives_the_module_back(flatten):
    model = convs(flatten)
    x = inputs(40)
    y = model.predict(x).argmax(1)
    strides = {name: p.stride() for name, p in model.module.named_parameters()}
    results = [run_attack(model, "pgd", x, y, eps=0.05, steps=10, batch_size=size) for size in (40, 7)]
    chosen = results[0].extra["layout"]["chosen"]
    assert chosen == (CHANNELS_LAST if flatten == "flatten" else CONTIGUOUS)
    first, second = (r.extra["layout"] for r in results)
    assert first.pop("check_forward_passes") == 2 * layout.CHECK_ROWS and second == first  # checked once; a rule
    assert {name: p.stride() for name, p in model.module.named_parameters()} == strides
    assert results[0].success_rate == results[1].success_rate
