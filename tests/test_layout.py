"""Channels-last: measured against the module's own layout by ``auto`` on a CPU, refused for models that assume the
default layout, and the module's own tensors given back after every run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advkit import batching
from advkit.batching import ChunkPlan
from advkit.layout import CHANNELS_LAST, CONTIGUOUS, LayoutSwitch, channels_last_refusal
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


def test_the_plan_measures_channels_last_on_the_first_size_and_keeps_the_faster():
    model = convs()
    faster = ChunkPlan(model, "auto", 1000, mode="window", inputs=inputs(4))
    with faster.running():
        assert faster.window_size() == 64 and faster.layout == CONTIGUOUS
        faster.observe(64, 1.0)  # the module's own layout
        assert faster.window_size() == 64 and faster.layout == CHANNELS_LAST  # the same size again, channels-last
        assert model.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        faster.observe(64, 0.8)
        assert faster.layout == CHANNELS_LAST and faster.window_size() == 96  # kept; the climb goes on
        assert faster.measured == {64: 0.8}
        assert model.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.module.conv1.weight.is_contiguous()  # the module's own tensors after the run
    assert batching.cached_layout(model) == CHANNELS_LAST
    info = faster.to_dict()["layout"]
    assert info["chosen"] == CHANNELS_LAST and info["ms_per_sample_step"] == {CONTIGUOUS: 1000.0, CHANNELS_LAST: 800.0}
    cached = ChunkPlan(model, "auto", 1000, mode="window", inputs=inputs(4))
    assert cached.layout == CHANNELS_LAST and cached.layout_how.startswith("cached")
    with cached.running():  # the next run starts channels-last and measures only sizes
        assert model.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        cached.observe(64, 1.0)
        assert cached.window_size() == 96 and cached.layout_measured == {}
    assert model.module.conv1.weight.is_contiguous()

    batching.clear_cache()
    slower = ChunkPlan(model, "auto", 1000, inputs=inputs(4))  # chunk mode: the same rule
    with slower.running():
        slower.observe(64, 1.0)
        assert slower.next_size(1000) == 64 and slower.layout == CHANNELS_LAST
        slower.observe(64, 1.2)
        assert slower.layout == CONTIGUOUS and model.module.conv1.weight.is_contiguous()
        assert slower.measured == {64: 1.0} and slower.next_size(1000) == 96
    assert batching.cached_layout(model) == CONTIGUOUS


def test_the_plan_keeps_the_module_layout_where_it_does_not_measure(monkeypatch):
    model = convs()
    given = ChunkPlan(model, 64, 1000, mode="window", inputs=inputs(4))
    given.observe(64, 1.0)
    assert given.layout == CONTIGUOUS and given.layout_how == "the module's own"
    refused = convs("view")
    plan = ChunkPlan(refused, "auto", 1000, mode="window", inputs=inputs(4))
    plan.observe(64, 1.0)
    assert plan.layout == CONTIGUOUS and "failed in channels-last" in plan.layout_how and plan.window_size() == 96
    cut_short = ChunkPlan(convs(), "auto", 1000, mode="window", inputs=inputs(4))
    with cut_short.running():
        cut_short.observe(64, 1.0)
        assert cut_short.layout == CHANNELS_LAST
        cut_short.finish()  # the run ended before channels-last was measured: back to the module's own
        assert cut_short.layout == CONTIGUOUS and cut_short.model.module.conv1.weight.is_contiguous()
    assert batching.cached_layout(refused) == CONTIGUOUS and batching.cached_layout(cut_short.model) is None
    batching.clear_cache()
    monkeypatch.setattr(batching, "LAYOUTS_TRIED_ON", ())
    elsewhere = ChunkPlan(convs(), "auto", 1000, mode="window", inputs=inputs(4))
    elsewhere.observe(64, 1.0)
    assert elsewhere.layout == CONTIGUOUS and "measured on a CPU only" in elsewhere.layout_how


@pytest.mark.parametrize("flatten", ["flatten", "view"])
def test_an_auto_run_measures_both_layouts_and_gives_the_module_back(flatten, monkeypatch):
    monkeypatch.setattr(batching, "FIRST_SIZE", {"cpu": 8, "other": 8})
    monkeypatch.setattr(batching, "WHOLE_BELOW", 8)
    model = convs(flatten)
    x = inputs(200)
    y = model.predict(x).argmax(1)
    strides = {name: p.stride() for name, p in model.module.named_parameters()}
    result = run_attack(model, "pgd", x, y, eps=0.05, steps=20, early_stop=False)
    layout = result.extra["batch_size"]["layout"]
    if flatten == "flatten":
        assert set(layout["ms_per_sample_step"]) == {CONTIGUOUS, CHANNELS_LAST}
        assert layout["chosen"] == min(layout["ms_per_sample_step"], key=layout["ms_per_sample_step"].get)
    else:
        assert layout["chosen"] == CONTIGUOUS and "failed in channels-last" in layout["how"]
    assert {name: p.stride() for name, p in model.module.named_parameters()} == strides
    assert result.backward_passes == 200 * 20  # the measurement's steps are the attack's own
