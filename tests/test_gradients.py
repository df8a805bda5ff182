"""Gradient estimators (advkit.gradients): EOT over K identity draws is the plain gradient, BPDA's identity surrogate
passes the gradient through Sign unchanged and its clip surrogate is the zoo BNN's own straight-through gradient, a
transfer estimator takes the surrogate's gradient at the model's logits; passes and budgets count every real pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advkit.errors import ParameterError
from advkit.gradients import BPDA, EOT, _row_uniforms, parse_gradient, with_gradient
from advkit.model_specs import load_model
from advkit.models import ModelAdapter
from advkit.runner import run_attack
from advkit.zoo.architectures import Sign


def input_gradient(model: ModelAdapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(point), y, reduction="sum"), point)
    return grad


@pytest.fixture(scope="module")
def digits(mnist_test):
    return mnist_test.x[:12], mnist_test.y[:12]


def test_eot_over_identity_draws_is_the_plain_gradient_at_k_passes_each(digits):
    x, y = digits
    cnn = load_model("cnn").to("cpu")
    cnn.module.eval()
    plain = input_gradient(cnn, x, y)
    for samples in (1, 4):
        eot = with_gradient(cnn, f"eot:identity,samples={samples}")
        before = cnn.counter.snapshot()
        grad = input_gradient(eot, x, y)
        assert torch.allclose(grad, plain, rtol=1e-5, atol=1e-7)
        assert (cnn.counter.forward - before[0], cnn.counter.backward - before[1]) == (samples * 12, samples * 12)
    flipped = input_gradient(with_gradient(cnn, "eot:flip,crop,samples=3"), x, y)
    assert not torch.allclose(flipped, plain)  # real transforms move the gradient


def test_eot_draws_depend_on_each_sample_only_and_change_with_the_draw(digits):
    x, _ = digits
    whole = _row_uniforms(x, 0, 0, 3)
    assert torch.equal(whole[4:9], _row_uniforms(x[4:9], 0, 0, 3))
    assert not torch.equal(whole, _row_uniforms(x, 0, 1, 3)) and not torch.equal(whole, _row_uniforms(x, 1, 0, 3))
    assert float(whole.min()) >= 0 and float(whole.max()) < 1


class SignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.first = nn.Linear(6, 5)
        self.sign = Sign(straight_through=False)  # the true derivative: zero everywhere
        self.second = nn.Linear(5, 3)
        with torch.no_grad():
            for layer in (self.first, self.second):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))

    def forward(self, x):
        return self.second(self.sign(self.first(x)))


def test_bpda_identity_passes_the_gradient_through_sign_unchanged():
    net = ModelAdapter(SignNet(), name="signnet", bounds=(-1.0, 1.0), input_shape=(6,), class_names=list("abc"))
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1
    weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    point = x.clone().requires_grad_(True)
    (masked,) = torch.autograd.grad((net(point) * weights).sum(), point)
    assert torch.count_nonzero(masked) == 0  # what a plain attack sees
    bpda = with_gradient(net, "bpda")
    point = x.clone().requires_grad_(True)
    out = bpda(point)
    (grad,) = torch.autograd.grad((out * weights).sum(), point)
    closed_form = weights @ net.module.second.weight @ net.module.first.weight  # d/dx of c . W2 (W1 x) per row
    assert torch.allclose(grad, closed_form, atol=1e-5)
    assert torch.equal(out, net(x))  # the forward pass is the model's
    assert not net.module.sign._forward_hooks  # the hooks live only inside a call


def test_bpda_clip_on_the_masked_bnn_is_the_zoo_bnns_straight_through_gradient(digits):
    x, y = digits
    masked, ste = load_model("bnn:straight_through=false"), load_model("bnn")
    masked.module.eval(), ste.module.eval()
    assert torch.count_nonzero(input_gradient(masked, x, y)) == 0
    bpda = with_gradient(masked, BPDA(surrogate="clip"))
    assert torch.equal(input_gradient(bpda, x, y), input_gradient(ste, x, y))


def test_bpda_attack_breaks_the_masked_bnn_as_the_ste_model_does(digits, mnist_test):
    x, y = mnist_test.x[:40], mnist_test.y[:40]
    masked = load_model("bnn:straight_through=false")
    plain = run_attack(masked, "pgd", x, y, eps=0.3, steps=10, seed=0)
    adaptive = run_attack(masked, "pgd", x, y, eps=0.3, steps=10, seed=0, gradient="bpda:surrogate=clip")
    ste = run_attack(load_model("bnn"), "pgd", x, y, eps=0.3, steps=10, seed=0)
    assert adaptive.extra["gradient"] == "bpda:modules=Sign,surrogate=clip"
    assert torch.equal(adaptive.success, ste.success) and adaptive.success_rate > plain.success_rate + 0.2


def test_transfer_gradient_is_the_surrogates_at_the_models_logits(digits):
    x, y = digits
    target, surrogate = load_model("bnn:straight_through=false"), load_model("cnn")
    target.module.eval(), surrogate.module.eval()
    estimated = with_gradient(target, "transfer:cnn")
    before = target.counter.snapshot()
    point = x.clone().requires_grad_(True)
    out = estimated(point)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), point)
    assert (target.counter.forward - before[0], target.counter.backward - before[1]) == (24, 12)
    assert torch.equal(out.detach(), target.logits(x))
    probe = x.clone().requires_grad_(True)
    z = surrogate.module(probe)
    weights = (F.softmax(out.detach(), 1) - F.one_hot(y, 10)).detach()  # d CE / d logits at the model's logits
    (expected,) = torch.autograd.grad((z * weights).sum(), probe)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_budgets_count_every_eot_draw(digits):
    x, y = digits
    cnn = load_model("cnn")
    result = run_attack(cnn, "pgd", x, y, eps=0.2, steps=10, budget=8, gradient="eot:identity,samples=4")
    assert result.summary()["max_backward_per_sample"] == 8  # two steps of four draws each
    assert result.backward_passes == int(result.backward_counts.sum()) <= 8 * 12
    with pytest.raises(ParameterError, match="below one call of the gradient estimator"):
        run_attack(cnn, "pgd", x, y, eps=0.2, budget=3, gradient="eot:identity,samples=4")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown estimator 'nope'"),
        ("eot:blur", "unknown transform 'blur'"),
        ("eot:", "at least one transform"),
        ("eot:flip,samples=0", "samples must lie in 1..1024"),
        ("eot:flip,samples=2.5", "samples must be an integer"),
        ("eot:flip,sigma=nan", "must be finite"),
        ("eot:flip,wobble=1", "no option 'wobble'"),
        ("eot:flip,mix=2", "mix must be 0"),
        ("bpda:surrogate=tanh", "must be identity, clip or"),
        ("transfer:", "needs a surrogate model"),
    ],
)
def test_bad_specs_are_refused_precisely(spec, message):
    with pytest.raises(ParameterError, match=message):
        parse_gradient(spec)


def test_the_cli_takes_the_estimator_as_an_option_or_a_parameter_and_refuses_bad_ones():
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    args = ["attack", "--model", "bnn:straight_through=false", "--attack", "pgd", "--eps", "0.3", "-n", "10",
            "--steps", "5", "--json"]  # fmt: skip
    plain = json.loads(CliRunner().invoke(cli, args).output)
    option = CliRunner().invoke(cli, [*args, "--gradient", "bpda:surrogate=clip"])
    param = CliRunner().invoke(cli, [*args, "-p", "gradient=bpda:surrogate=clip"])
    assert option.exit_code == 0 and param.exit_code == 0, (option.output, param.output)
    a, b = json.loads(option.output), json.loads(param.output)
    assert a["gradient"] == b["gradient"] == "bpda:modules=Sign,surrogate=clip" and "gradient" not in plain
    assert a["success_rate"] == b["success_rate"] > plain["success_rate"]
    bad = CliRunner().invoke(cli, [*args, "--gradient", "eot:blur"])
    assert bad.exit_code == 2 and "unknown transform 'blur'" in bad.output and "Traceback" not in bad.output
    twice = CliRunner().invoke(cli, [*args, "--gradient", "bpda", "-p", "gradient=bpda"])
    assert twice.exit_code == 2 and "given twice" in twice.output


def test_eot_averages_a_randomized_models_logits_over_its_draws():
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return self.linear(x + 0.5 * torch.randn_like(x))

    torch.manual_seed(0)
    model = ModelAdapter(Noisy(), name="noisy", bounds=(-1.0, 1.0), input_shape=(4,), class_names=list("abc"))
    x = torch.zeros(3, 4)
    one = with_gradient(model, EOT(("identity",), samples=1))(x)
    many = with_gradient(model, EOT(("identity",), samples=256))(x)
    expected = model.module.linear(x)
    assert (many - expected).abs().max() < (one - expected).abs().max()
    assert (many - expected).abs().max() < 0.2


def test_every_eot_transform_keeps_images_in_bounds_and_differentiable():
    from advkit.gradients import EOT_TRANSFORMS

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = ModelAdapter(net, name="rgb", bounds=(0.0, 1.0), input_shape=(3, 8, 8), class_names=list("abcde"))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []
    for name, (fn, count, _) in EOT_TRANSFORMS.items():
        if name != "identity":
            moved = fn(x, _row_uniforms(x, 0, 0, count), model.bounds, {})
            assert moved.shape == x.shape and float(moved.min()) >= -1e-6 and float(moved.max()) <= 1 + 1e-6, name
            seen.append(not torch.equal(moved, x))
        estimated = with_gradient(model, f"eot:{name},samples=2")
        point = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimated(point).sum(), point)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(seen)  # each transform changed the images of at least one draw
    with pytest.raises(ParameterError, match="grayscale needs 3-channel images"):
        with_gradient(load_model("cnn"), "eot:grayscale")(torch.zeros(2, 1, 28, 28))


def test_a_surrogate_of_another_input_space_is_refused():
    from advkit.gradients import TransferGradient

    other = ModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)), name="other", bounds=(-1.0, 1.0),
                         input_shape=(1, 4, 4), class_names=[str(i) for i in range(10)])  # fmt: skip
    with pytest.raises(ParameterError, match="differs in input shape"):
        with_gradient(load_model("cnn"), TransferGradient(other))


def test_evaluate_takes_an_estimator_and_its_fingerprint_differs_from_the_plain_models():
    import json

    from click.testing import CliRunner

    from advkit.cli import cli
    from advkit.sweep import model_fingerprint

    masked = load_model("bnn:straight_through=false")
    fingerprints = {model_fingerprint(masked), model_fingerprint(with_gradient(masked, "bpda")),
                    model_fingerprint(with_gradient(masked, "bpda:surrogate=clip"))}  # fmt: skip
    assert len(fingerprints) == 3  # a resumed run never mixes estimators
    args = ["evaluate", "--model", "bnn:straight_through=false", "--eps", "0.3", "--version", "fast", "-n", "12",
            "--json"]  # fmt: skip
    plain = CliRunner().invoke(cli, args)
    adaptive = CliRunner().invoke(cli, [*args, "--gradient", "bpda:surrogate=clip"])
    assert plain.exit_code == 0 and adaptive.exit_code == 0, (plain.output, adaptive.output)
    a, b = json.loads(plain.output), json.loads(adaptive.output)
    assert a["gradient"] is None and b["gradient"] == "bpda:modules=Sign,surrogate=clip"
    assert b["robust_accuracy"] < a["robust_accuracy"]  # the masked gradients no longer hide the BNN's weakness
    bad = CliRunner().invoke(cli, [*args, "--gradient", "eot:blur"])
    assert bad.exit_code == 2 and "unknown transform 'blur'" in bad.output


def test_sweep_takes_an_estimator_records_it_and_refuses_to_resume_without_it(tmp_path):
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    base = ["sweep", "--model", "bnn:straight_through=false", "--attack", "pgd", "--eps", "0.2,0.3", "-n", "12",
            "-p", "pgd.steps=5", "--no-checks", "--json"]  # fmt: skip
    plain = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "plain")])
    out = tmp_path / "bpda"
    adaptive = CliRunner().invoke(cli, [*base, "--gradient", "bpda:surrogate=clip", "--out", str(out)])
    assert plain.exit_code == 0 and adaptive.exit_code == 0, (plain.output, adaptive.output)
    a, b = json.loads(plain.output)["rows"], json.loads(adaptive.output)["rows"]
    assert all(rb["success_rate"] >= ra["success_rate"] for ra, rb in zip(a, b))
    assert b[-1]["success_rate"] > a[-1]["success_rate"]
    assert json.loads((out / "config.json").read_text())["spec"]["gradient"] == "bpda:surrogate=clip"
    assert "gradient estimator" in (out / "index.html").read_text()
    again = CliRunner().invoke(cli, [*base, "--out", str(out)])  # the same folder without the estimator
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert "gradient" not in json.loads((tmp_path / "plain" / "config.json").read_text())["spec"]


def test_transfer_attacks_its_sources_through_the_estimator():
    import json

    from click.testing import CliRunner

    from advkit.cli import cli

    args = ["transfer", "--source", "bnn:straight_through=false", "--to", "cnn", "--attack", "pgd", "--eps", "0.3",
            "-n", "12", "-p", "steps=5", "--json"]  # fmt: skip
    plain = CliRunner().invoke(cli, args)
    adaptive = CliRunner().invoke(cli, [*args, "--gradient", "bpda:surrogate=clip"])
    assert plain.exit_code == 0 and adaptive.exit_code == 0, (plain.output, adaptive.output)
    a, b = json.loads(plain.output), json.loads(adaptive.output)
    source = "bnn:straight_through=false"
    assert b["gradient"] == "bpda:modules=Sign,surrogate=clip" and "gradient" not in a
    assert b["source_attacks"][source]["n_success"] > a["source_attacks"][source]["n_success"]


def test_eot_stacks_its_draws_into_few_calls_with_the_same_passes_and_values(digits, monkeypatch):
    import advkit.gradients as gradients

    x, y = digits
    cnn = load_model("cnn").to("cpu")
    cnn.module.eval()
    eot = with_gradient(cnn, "eot:flip,crop,rotate,samples=5")
    grads, calls = {}, {}
    for rows in (1, 12, 24, 64):  # one draw per call, one draw of 12 rows, two draws, all five draws in one call
        monkeypatch.setattr(gradients, "EOT_ROWS", rows)
        seen = []
        hook = cnn.module.register_forward_pre_hook(lambda module, inputs, seen=seen: seen.append(inputs[0].shape[0]))
        before = cnn.counter.snapshot()
        grads[rows] = input_gradient(eot, x, y)
        hook.remove()
        assert (cnn.counter.forward - before[0], cnn.counter.backward - before[1]) == (5 * 12, 5 * 12)
        calls[rows] = seen
    assert calls == {1: [12] * 5, 12: [12] * 5, 24: [24, 24, 12], 64: [60]}
    for rows in (1, 24, 64):
        assert torch.allclose(grads[rows], grads[12], rtol=1e-5, atol=1e-7)
    whole = eot(x)  # a batch draws what its slices draw
    assert torch.allclose(whole[3:7], eot(x[3:7]), rtol=1e-5, atol=1e-6)


def test_eot_mix_applies_one_transform_per_draw():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = ModelAdapter(net, name="rgb", bounds=(0.0, 1.0), input_shape=(3, 8, 8), class_names=list("abcde"))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    one = with_gradient(model, "eot:rotate,samples=6,mix=1")(x)
    assert torch.allclose(one, with_gradient(model, "eot:rotate,samples=6")(x), atol=1e-6)  # one transform: no choice
    before = model.counter.snapshot()
    both = with_gradient(model, "eot:identity,grayscale,samples=64,mix=1")(x)
    assert (model.counter.forward - before[0]) == 64 * 4
    plain, gray = (
        model.logits(x),
        model.logits(x.mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)),
    )
    share = ((both.detach() - plain) / (gray - plain)).mean(1)  # the share of grayscale draws: about 1/2 x 1/2
    assert float(share.min()) > 0.1 and float(share.max()) < 0.4
    assert "mix=1" in with_gradient(model, "eot:flip,crop,mix=1").estimator.describe()


def test_a_plugins_transform_is_drawn_by_eot_with_its_passes_counted(tiny_model, tiny_batch):
    """A plugin registers a transform through ``register_transforms``; ``eot:NAME`` then draws it like a built-in,
    K forward and K backward passes per call; once the plugin is gone, the name is refused again."""
    import advkit
    from advkit import plugins
    from advkit.gradients import EOTTransform, eot_transforms
    from advkit.runner import run_attack

    def invert(x, u, bounds, options):  # every draw: the negative image (the uniforms are not needed)
        return bounds[0] + bounds[1] - x

    class InvertPlugin:
        @advkit.hookimpl
        def register_transforms(self, register):
            register(EOTTransform(name="invert", apply=invert, draws=1, description="the negative image"))

    x, y = tiny_batch
    plugins.register_plugin(InvertPlugin(), name="invert_plugin")
    try:
        assert eot_transforms()["invert"].description == "the negative image"
        model = with_gradient(tiny_model, "eot:invert,samples=3")
        before = tiny_model.counter.snapshot()
        point = x.clone().requires_grad_(True)
        logits = model(point)
        logits.sum().backward()
        assert torch.allclose(logits, tiny_model.logits(-x), atol=1e-6)  # the average of three inverted draws
        forward, backward = (a - b for a, b in zip(tiny_model.counter.snapshot(), before))
        assert (forward, backward) == (3 * len(y), 3 * len(y))
        plain = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=4)
        drawn = run_attack(tiny_model, "pgd", x, y, eps=0.1, steps=4, gradient="eot:invert,samples=2")
        assert drawn.backward_passes == 2 * plain.backward_passes
    finally:
        plugins.unregister_plugin("invert_plugin")
    with pytest.raises(ParameterError, match="unknown transform 'invert'"):
        parse_gradient("eot:invert")


def test_bpda_takes_a_layer_by_name_and_a_surrogate_function(digits):
    """`modules=` names a layer (its name in named_modules()) as well as a type, and in Python the surrogate may be
    any differentiable function of the layer's input: clamp given as a function is the built-in clip surrogate."""
    x, y = digits
    masked = load_model("bnn:straight_through=false")
    masked.module.eval()
    signs = [name for name, m in masked.module.named_modules() if type(m).__name__ == "Sign"]
    by_type = input_gradient(with_gradient(masked, BPDA(surrogate="clip")), x, y)
    by_name = input_gradient(with_gradient(masked, BPDA(modules=tuple(signs), surrogate="clip")), x, y)
    own = input_gradient(with_gradient(masked, BPDA(surrogate=lambda v: torch.clamp(v, -1, 1))), x, y)
    assert torch.equal(by_name, by_type) and torch.equal(own, by_type)
    first_only = input_gradient(with_gradient(masked, BPDA(modules=(signs[0],), surrogate="clip")), x, y)
    assert torch.count_nonzero(first_only) == 0  # the other Sign layers still block: only the named one is replaced
    with pytest.raises(ParameterError, match="no module of type or name nope"):
        input_gradient(with_gradient(masked, "bpda:modules=nope"), x, y)
    with pytest.raises(ParameterError, match="surrogate must be identity, clip"):
        BPDA(surrogate="tanh")
