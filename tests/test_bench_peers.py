"""The peer benchmark's own machinery: pass counting, the [0, 1] wrapper, the plain loop (peers optional)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from advkit.runner import run_attack

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench():
    import sys

    sys.path.insert(0, str(BENCH.parent))  # as `python benchmarks/bench_peers.py` has it: its machine.py
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counted_counts_forward_and_input_gradients(bench, tiny_model, tiny_batch):
    x, y = tiny_batch
    wrapped = bench.Counted(tiny_model.module)
    out, fwd, bwd = wrapped.count(lambda: bench.plain_pgd(wrapped, x, y, 0.1, 0.025, 7, -1.0, 1.0))
    assert (fwd, bwd) == (7 * len(y), 7 * len(y))
    with torch.no_grad():
        wrapped(x)  # counting is off outside count()
    assert (wrapped.forward_passes, wrapped.backward_passes) == (7 * len(y), 7 * len(y))
    assert float((out - x).abs().max()) <= 0.1 + 1e-6


def test_wrapper_on_the_0_1_scale_is_the_same_function(bench, tiny_model, tiny_batch):
    x, _ = tiny_batch
    wrapped = bench.Counted(tiny_model.module, bounds=(-1.0, 1.0))
    with torch.no_grad():
        assert torch.allclose(wrapped((x + 1) / 2), tiny_model.module(x), atol=1e-5)


def test_plain_loop_matches_advkit_pgd_at_zero_start(bench, tiny_model, tiny_batch):
    x, y = tiny_batch
    plain = bench.plain_pgd(tiny_model.module, x, y, 0.2, 0.05, 10, -1.0, 1.0)
    result = run_attack(tiny_model, "pgd", x, y, eps=0.2, steps=10, step_size=0.05, random_start=False)
    plain_fooled = bench.fooled(tiny_model.module, plain, y)
    # advkit keeps each sample's best point, so it fools every sample the last step fools (and maybe more)
    assert bool((result.success.cpu() | ~plain_fooled).all())
    assert result.backward_passes == 10 * len(y)


def test_torchattacks_pgd_on_the_wrapper_is_the_plain_loop(bench, tiny_model, tiny_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = tiny_batch
    wrapped = bench.Counted(tiny_model.module, bounds=(-1.0, 1.0)).eval()
    attack = torchattacks.PGD(wrapped, eps=0.1, alpha=0.025, steps=10, random_start=False)
    adv01, fwd, bwd = wrapped.count(lambda: attack((x + 1) / 2, y))
    assert (fwd, bwd) == (10 * len(y), 10 * len(y))
    plain = bench.plain_pgd(tiny_model.module, x, y, 0.2, 0.05, 10, -1.0, 1.0)
    assert torch.equal(bench.fooled(tiny_model.module, 2 * adv01 - 1, y), bench.fooled(tiny_model.module, plain, y))
