"""Resume trusts nothing it cannot verify: cell fingerprints, intact and consistent cell files, exact cell keys,
refused duplicates, field-by-field mismatch messages, leftover temp files, eps ranges, and plugin versions.

Every sweep here runs a tiny registered 1x8x8 model on a dozen random inputs, so each takes milliseconds."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save

import advkit
from advkit import plugins, registry
from advkit.errors import ParameterError, ThreatModelError
from advkit.model_specs import parse_model_ref
from advkit.models import ModelAdapter, ModelSpec
from advkit.sweep import (
    Cell,
    SweepConfigMismatch,
    SweepSpec,
    SweepStoreError,
    cell_key,
    config_changes,
    config_digest,
    run_sweep,
)
from tests.conftest import tiny_module

pytestmark = pytest.mark.usefixtures("one_thread", "tiny_models")

MODEL = "store_tiny"


def configuration(out):
    """config.json's configuration: without the record of how the sweep was started (not part of the fingerprint)."""
    config = json.loads((out / "config.json").read_text())
    config.pop("provenance", None)
    return config


def _load_tiny() -> ModelAdapter:
    module = tiny_module(seed=3)
    module.eval()
    return ModelAdapter(
        module,
        name=MODEL,
        bounds=(-1.0, 1.0),
        input_shape=(1, 8, 8),
        class_names=[str(i) for i in range(10)],
        dataset="tiny",
    )


class TinyModels:
    """The tiny model, registered as ``store_tiny`` like any plugin's model."""

    @advkit.hookimpl
    def register_models(self, register):
        register(ModelSpec(name=MODEL, description="tiny 1x8x8 model", load=_load_tiny, dataset="tiny"))


@pytest.fixture(scope="module")
def tiny_models():
    plugins.register_plugin(TinyModels(), name="store_models", version="1.0")
    yield
    plugins.unregister_plugin("store_models")


@pytest.fixture(scope="module")
def data():
    """12 random inputs labelled with the model's own predictions, except two (so two are not attacked)."""
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    y = _load_tiny().predict(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    return x, y, "random"


def spec(**changes) -> SweepSpec:
    options = dict(models=[MODEL], attacks=["pgd"], eps=[0.05, 0.1], n=12, attack_params={"pgd": {"steps": 1}})
    return SweepSpec(**{**options, **changes})


def sweep(out, data, **changes):
    return run_sweep(spec(**changes), out, progress=False, data=data)


def cell_files(out, eps, attack="pgd", model=MODEL):
    return Cell.paths(out / "cells", model, attack, eps)


def same_results(a, b) -> None:
    assert a.table.drop(columns="seconds").equals(b.table.drop(columns="seconds"))
    assert a.matrix.equals(b.matrix)
    for key, cell in a.cells.items():
        assert torch.equal(cell.x_adv, b.cells[key].x_adv) and torch.equal(cell.success, b.cells[key].success)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished sweep folder (copied by each test that tampers with it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    sweep(out, data)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


# ----------------------------------------------------------------------------- fingerprints


def test_deleted_config_and_changed_steps_is_refused_naming_the_cell(copy, data):
    (copy / "config.json").unlink()
    before = sorted(p.name for p in (copy / "cells").iterdir())
    with pytest.raises(SweepConfigMismatch) as caught:
        sweep(copy, data, attack_params={"pgd": {"steps": 20}})
    message = str(caught.value)
    assert str(cell_files(copy, 0.05)[0]) in message
    assert "spec.attack_params.pgd.steps: 1 -> 20" in message and "new --out folder" in message
    assert isinstance(caught.value, SweepStoreError)
    assert sorted(p.name for p in (copy / "cells").iterdir()) == before and not (copy / "config.json").exists()


@pytest.mark.parametrize("search", ["ascending", "descending"])
def test_deleted_config_and_same_config_resumes_to_identical_results(tmp_path, data, search):
    out = tmp_path / "out"
    first = sweep(out, data, search=search, eps=[0.05, 0.1, 0.2])
    config = configuration(out)
    assert json.loads((out / "config.json").read_text())["provenance"]["python_call"] == "advkit.sweep.run_sweep"
    (out / "config.json").unlink()
    last_run = 0.05 if search == "descending" else 0.2  # the eps the search runs last: a run killed before it
    cell_files(out, last_run)[0].unlink()  # its tensors file stays, as after a kill between the two writes
    resumed = sweep(out, data, search=search, eps=[0.05, 0.1, 0.2])
    same_results(first, resumed)
    assert configuration(out) == config  # rewritten, the same (how it was started, its provenance, aside)
    for eps in (0.05, 0.1, 0.2):
        meta = json.loads(cell_files(out, eps)[0].read_text())
        assert meta["fingerprint"] == config_digest(config)
        if eps != last_run:  # loaded, not run again
            assert resumed.cells[(MODEL, "pgd", eps)].seconds == first.cells[(MODEL, "pgd", eps)].seconds


def test_a_cell_of_another_configuration_is_refused_even_with_config_json_present(copy, data, tmp_path):
    other = tmp_path / "other"
    sweep(other, data, seed=1)
    meta, tensors = cell_files(other, 0.1)
    shutil.copy(meta, cell_files(copy, 0.1)[0])
    shutil.copy(tensors, cell_files(copy, 0.1)[1])
    with pytest.raises(
        SweepConfigMismatch,
        match=r"cells/store_tiny@pgd@eps=0\.1\.json was written by a sweep with a "
        r"different configuration \(changed: spec\.seed: 1 -> 0\)",
    ):
        sweep(copy, data)


# ----------------------------------------------------------------------------- damaged or edited files


def test_a_truncated_tensors_file_is_refused_naming_it(copy, data):
    path = cell_files(copy, 0.1)[1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = rf"sweep cell file {re.escape(str(path))} cannot be read \(truncated or corrupt"
    with pytest.raises(SweepStoreError, match=message):
        sweep(copy, data)


def _rewrite(out, eps, change, update_sha=True):
    """Apply ``change`` to a cell's tensors, save the file again and (if update_sha) record its new sha256."""
    meta_path, tensor_path = cell_files(out, eps)
    tensors = load_file(str(tensor_path))
    change(tensors)
    data = save(tensors)
    tensor_path.write_bytes(data)
    if update_sha:
        meta = json.loads(meta_path.read_text())
        meta["tensors_sha256"] = hashlib.sha256(data).hexdigest()
        meta_path.write_text(json.dumps(meta))


def _outside_ball(t):
    t["x_adv"] = t["x_adv"].clone()
    t["x_adv"][5] = (t["x_adv"][5] + 0.3).clamp(-1, 1)  # a correctly classified sample, 0.3 > eps away


def _flip_success(t):
    t["success"] = t["success"].clone()
    t["success"][5] = ~t["success"][5]


def _success_not_attacked(t):
    t["success"] = t["success"].clone()
    t["success"][0] = True  # sample 0's label is wrong: never attacked


def _attacked_flipped(t):
    t["attacked"] = t["attacked"].clone()
    t["attacked"][0] = True


def _nan_point(t):
    t["x_adv"] = t["x_adv"].clone()
    t["x_adv"][5, 0, 0, 0] = float("nan")


def _pred_int32(t):
    t["pred"] = t["pred"].int()


def _short_linf(t):
    t["linf"] = t["linf"][:-1].clone()


def _extra_key(t):
    t["note"] = torch.zeros(1)


def _wrong_linf(t):
    t["linf"] = t["linf"].clone()
    t["linf"][5] = 0.0


def _untouched_moved(t):
    t["x_adv"] = t["x_adv"].clone()
    t["x_adv"][1] = t["x_adv"][1] * 0.999


TAMPERED = [
    ("point outside the ball", _outside_ball, True, r"outside the threat model"),
    ("success flipped, sha256 not updated", _flip_success, False, r"does not match the sha256 recorded in"),
    ("success on a sample not attacked", _success_not_attacked, True, r"successes on samples that were not attacked"),
    (
        "attacked not the correctly classified",
        _attacked_flipped,
        True,
        r"other samples than those the model classifies",
    ),
    ("NaN point", _nan_point, True, r"NaN or inf"),
    ("pred of the wrong dtype", _pred_int32, True, r"pred of dtype torch.int32 .*expected int64"),
    ("linf of the wrong shape", _short_linf, True, r"linf of dtype .* shape \(11,\); expected float \(12,\)"),
    ("an extra tensor", _extra_key, True, r"expected exactly"),
    (
        "linf not the point's distance",
        _wrong_linf,
        True,
        r"linf distances that are not those of its adversarial points",
    ),
    ("a sample not attacked moved", _untouched_moved, True, r"changes samples that were not attacked"),
]


@pytest.mark.parametrize("change, update_sha, message", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_tampered_tensors_are_refused(copy, data, change, update_sha, message):
    _rewrite(copy, 0.1, change, update_sha)
    tensor_path = cell_files(copy, 0.1)[1]
    with pytest.raises(SweepStoreError, match=rf"sweep cell file {re.escape(str(tensor_path))} .*{message}") as caught:
        sweep(copy, data)
    assert "delete store_tiny@pgd@eps=0.1.json and store_tiny@pgd@eps=0.1.safetensors" in str(caught.value)


def _meta_edit(change):
    def edit(meta_path):
        meta = json.loads(meta_path.read_text())
        change(meta)
        meta_path.write_text(json.dumps(meta))

    return edit


def _raw(text):
    return lambda meta_path: meta_path.write_text(text)


TAMPERED_META = [
    ("truncated JSON", lambda p: p.write_text(p.read_text()[:40]), r"is not readable JSON \(truncated or corrupt"),
    ("not an object", _raw("[1, 2]\n"), r"holds a list, not a sweep cell's JSON object"),
    (
        "no fingerprint (older advkit)",
        _meta_edit(lambda m: m.pop("fingerprint")),
        r"carries no configuration fingerprint",
    ),
    (
        "config edited, fingerprint kept",
        _meta_edit(lambda m: m["config"]["spec"].update(seed=5)),
        r"configuration that does not match its own fingerprint",
    ),
    ("negative forward count", _meta_edit(lambda m: m.update(forward=-1)), r"forward = -1; expected an integer >= 0"),
    ("float carried count", _meta_edit(lambda m: m.update(carried=1.5)), r"carried = 1.5; expected an integer >= 0"),
    ("boolean inferred count", _meta_edit(lambda m: m.update(inferred=True)), r"inferred = True"),
    ("seconds NaN", _meta_edit(lambda m: m.update(seconds=float("nan"))), r"seconds = nan; expected a finite number"),
    ("seconds negative", _meta_edit(lambda m: m.update(seconds=-1.0)), r"seconds = -1.0"),
    ("another eps", _meta_edit(lambda m: m.update(eps=0.2)), r"is for eps 0.2, not 0.1"),
    ("another attack", _meta_edit(lambda m: m.update(attack="fgsm")), r"is for attack 'fgsm', not 'pgd'"),
    ("another model", _meta_edit(lambda m: m.update(model="cnn")), r"is for model 'cnn', not 'store_tiny'"),
    ("a key missing", _meta_edit(lambda m: m.pop("backward")), r"lacks the key\(s\) backward"),
    ("an extra key", _meta_edit(lambda m: m.update(note="hi")), r"has unexpected key\(s\) note"),
    ("no tensors sha256", _meta_edit(lambda m: m.update(tensors_sha256=None)), r"tensors_sha256 = None"),
    (
        "more carried than attacked",
        _meta_edit(lambda m: m.update(carried=11)),
        r"counts 11 carried and 0 inferred of 10",
    ),
]


@pytest.mark.parametrize("edit, message", [t[1:] for t in TAMPERED_META], ids=[t[0] for t in TAMPERED_META])
def test_tampered_meta_is_refused(copy, data, edit, message):
    meta_path = cell_files(copy, 0.1)[0]
    edit(meta_path)
    with pytest.raises(SweepStoreError, match=rf"sweep cell file {re.escape(str(meta_path))} .*{message}"):
        sweep(copy, data)


def test_a_cell_without_its_tensors_file_is_refused(copy, data):
    meta_path, tensor_path = cell_files(copy, 0.1)
    tensor_path.unlink()
    message = rf"{re.escape(str(meta_path))} has no tensors file store_tiny@pgd@eps=0\.1\.safetensors"
    with pytest.raises(SweepStoreError, match=message):
        sweep(copy, data)


def test_an_unreadable_config_json_is_refused_naming_it(copy, data):
    from advkit.outputs import record

    (copy / "config.json").write_text('{"spec": ')
    record(copy, [copy / "config.json"])  # corrupted as if on disk, not edited by the user (whose files are never used)
    with pytest.raises(
        SweepStoreError, match=rf"{re.escape(str(copy / 'config.json'))} is not readable JSON .*delete it"
    ):
        sweep(copy, data)


# ----------------------------------------------------------------------------- exact keys, no silent de-duplication


def test_eps_equal_to_six_digits_are_refused_in_one_spec():
    with pytest.raises(
        ParameterError,
        match=r"eps 0\.0313725 and 0\.03137254901960784 are the same to 6 significant "
        r"digits",
    ):
        spec(eps=[8 / 255, 0.0313725])


def test_eps_equal_to_six_digits_never_share_a_cell(tmp_path, data):
    assert cell_key(MODEL, "pgd", 8 / 255) != cell_key(MODEL, "pgd", 0.0313725)
    assert cell_key("bnn:a=1,b=2", "pgd", 0.1) != cell_key("bnn_a=1_b=2", "pgd", 0.1)  # model refs are exact too
    a, b = tmp_path / "a", tmp_path / "b"
    sweep(a, data, eps=[8 / 255])
    sweep(b, data, eps=[0.0313725])
    names = lambda out: sorted(p.name for p in (out / "cells").iterdir())  # noqa: E731
    assert names(a) != names(b) and len(names(a)) == 2
    # the second sweep into the first one's folder, config.json deleted: refused, not silently reused
    (a / "config.json").unlink()
    with pytest.raises(SweepConfigMismatch, match=r"spec\.eps: \[0\.03137254901960784\] -> \[0\.0313725\]"):
        sweep(a, data, eps=[0.0313725])


DUPLICATES = [
    ("eps twice", dict(eps=[0.1, 0.2, 0.1]), r"eps 0\.1 is given twice"),
    ("eps 0 and -0", dict(eps=[0.0, -0.0]), r"eps 0\.0 is given twice"),
    ("model twice", dict(models=["cnn", "cnn"]), r"model 'cnn' is given twice"),
    (
        "model options reordered",
        dict(models=["bnn:a=1,b=true", "bnn: b=TRUE, a=1"]),
        r"model 'bnn: b=TRUE, a=1' and 'bnn:a=1,b=true' are the same model with the same options",
    ),
    ("attack twice", dict(attacks=["pgd", "fgsm", "pgd"]), r"attack 'pgd' is given twice"),
    ("repeated option key", dict(models=["bnn:a=1,a=2"]), r"model option 'a' is given twice in 'bnn:a=1,a=2'"),
]


@pytest.mark.parametrize("changes, message", [d[1:] for d in DUPLICATES], ids=[d[0] for d in DUPLICATES])
def test_duplicates_are_refused(changes, message):
    with pytest.raises(ParameterError, match=message):
        spec(**changes)


def test_distinct_models_and_eps_are_kept_sorted():
    s = spec(models=["bnn:a=1", "bnn:a=1.0", "bnn"], eps=[0.3, 0.1, 0.2])
    assert s.eps == [0.1, 0.2, 0.3] and s.models == ["bnn:a=1", "bnn:a=1.0", "bnn"]
    with pytest.raises(ParameterError, match="option 'a' is given twice"):
        parse_model_ref("bnn:a=1,a=2")


# ----------------------------------------------------------------------------- messages


def test_a_changed_configuration_names_each_field(tmp_path, data):
    out = tmp_path / "out"
    sweep(out, data, eps=[0.1])
    with pytest.raises(SweepConfigMismatch) as caught:
        sweep(out, data, eps=[0.1, 0.2], attack_params={"pgd": {"steps": 20}})
    message = str(caught.value)
    assert "spec.eps: [0.1] -> [0.1, 0.2]; spec.attack_params.pgd.steps: 1 -> 20" in message
    assert f"{out} holds a sweep with a different configuration" in message and "changed: spec)" not in message


def test_change_lists_flatten_paths_and_shorten_long_values():
    assert config_changes({"spec": {"attack_params": {}}}, {"spec": {"attack_params": {"pgd": {"steps": 20}}}}) == [
        "spec.attack_params.pgd.steps: (absent) -> 20"
    ]
    assert config_changes({"a": 1, "b": [1]}, {"a": 1, "b": [1]}) == []
    (change,) = config_changes({"models": {"cnn": "a" * 64}}, {"models": {"cnn": "b" * 64}})
    assert change.startswith('models.cnn: "aaaa') and "..." in change and len(change) < 120


# ----------------------------------------------------------------------------- temp files, eps range


def test_leftover_temp_files_are_removed_by_the_next_run(copy, data):
    dead = 999_999_999  # above any pid_max: no such process
    left = [copy / f".results.csv.{dead}.tmp", copy / "cells" / f".{cell_key(MODEL, 'pgd', 0.1)}.json.{dead}.tmp"]
    live = copy / "cells" / f".x.json.{os.getppid()}.tmp"  # another process's write in progress: kept
    for path in [*left, live]:
        path.write_bytes(b"partial")
    sweep(copy, data)
    assert not any(p.exists() for p in left) and live.exists()


def test_eps_beyond_a_models_range_is_refused_before_out_is_touched(tmp_path, data, monkeypatch):
    import advkit.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "run_cell", lambda *a, **k: pytest.fail("attacked"))
    out = tmp_path / "out"
    with pytest.raises(
        ThreatModelError, match=r"eps 2\.5 exceeds the range of model 'store_tiny' \(\[-1, 1\], width 2\)"
    ):
        sweep(out, data, eps=[0.1, 2.5])
    assert not out.exists()
    with pytest.raises(ThreatModelError, match=r"L2 eps 17 exceeds the diameter"):
        sweep(out, data, eps=[17.0], constraints="l2")  # 2 * sqrt(64) = 16
    assert not out.exists()


# ----------------------------------------------------------------------------- plugins


def test_only_the_plugins_a_sweep_uses_are_in_its_fingerprint(tmp_path, data):
    fgsm = registry.get_attack("fgsm").obj
    mine = type("StoreFGSM", (fgsm,), {"name": "store_fgsm", "__doc__": "fgsm under another name"})
    unused = type("StoreUnused", (fgsm,), {"name": "store_unused", "__doc__": "an attack the sweep does not use"})

    def plugin(attack):
        class Plugin:
            @advkit.hookimpl
            def register_attacks(self, register):
                register(attack)

        return Plugin()

    out = tmp_path / "out"
    plugins.register_plugin(plugin(mine), name="store_attacks", version="1.0")
    try:
        first = sweep(out, data, attacks=["store_fgsm"])
        assert set(first.config["plugins"]) == {"store_models", "store_attacks", "constraints"}
        assert first.config["plugins"]["store_attacks"] == {"distribution": None, "version": "1.0"}
        plugins.register_plugin(plugin(unused), name="store_unrelated", version="0.1")
        try:
            again = sweep(out, data, attacks=["store_fgsm"])  # an unrelated plugin changes nothing
        finally:
            plugins.unregister_plugin("store_unrelated")
        same_results(first, again)
        plugins.unregister_plugin("store_attacks")
        plugins.register_plugin(plugin(mine), name="store_attacks", version="2.0")
        with pytest.raises(SweepConfigMismatch, match=r'changed: plugins\.store_attacks\.version: "1\.0" -> "2\.0"\)'):
            sweep(out, data, attacks=["store_fgsm"])
        (out / "config.json").unlink()
        with pytest.raises(
            SweepConfigMismatch,
            match=r"store_fgsm@eps=0\.05\.json was written by a sweep with a different "
            r'configuration \(changed: plugins\.store_attacks\.version: "1\.0" '
            r'-> "2\.0"\)',
        ):
            sweep(out, data, attacks=["store_fgsm"])
    finally:
        plugins.unregister_plugin("store_attacks")


def test_cells_hold_valid_numbers(finished):
    """The untampered folder's cells: the fields the checks rely on, as written."""
    for path in sorted((finished / "cells").glob("*.json")):
        meta = json.loads(path.read_text())
        assert meta["fingerprint"] == config_digest(configuration(finished))
        assert math.isfinite(meta["seconds"]) and meta["carried"] >= 0
