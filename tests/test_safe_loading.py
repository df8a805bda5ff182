"""Safe loading: a weights file that would run code when unpickled is refused by every advkit loader,
and its code never runs (a sentinel file is never created). Weights come only from safetensors or
``torch.load(weights_only=True)``, checked against a SHA-256 where advkit knows one, with no
fallback to full pickle."""

from __future__ import annotations

import builtins
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from advkit.errors import WeightsLoadError
from advkit.models import load_model

#: advkit's refusal of a file that is not safetensors nor a plain state dict (never torch's advice to disable the safety).
REFUSED = "only loads weights saved as safetensors or as a plain state dict"

ROOT = Path(__file__).resolve().parents[1]


class WritesSentinel:
    """Unpickling this calls ``open(path, "w")``: the file appears if the pickle's code runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.fixture
def evil(tmp_path):
    """(sentinel path, writer(path, fmt)) that writes a malicious checkpoint in the torch.save or plain pickle format."""
    sentinel = tmp_path / "SENTINEL_code_ran"

    def write(path: Path, fmt: str = "torch") -> Path:
        payload = {"weight": torch.zeros(2), "evil": WritesSentinel(sentinel)}
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "torch":
            torch.save(payload, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(payload, f)
        return path

    # The payloads really run code when loaded without restrictions.
    with open(write(tmp_path / "probe" / "check.pkl", "pickle"), "rb") as f:
        pickle.load(f)
    assert sentinel.exists()
    sentinel.unlink()
    torch.load(write(tmp_path / "probe" / "check.pt", "torch"), weights_only=False)
    assert sentinel.exists()
    sentinel.unlink()
    yield sentinel, write
    assert not sentinel.exists(), "a loader ran code from a pickle"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_torchvision_loader_refuses_code_in_an_explicit_weights_file(evil, tmp_path, fmt):
    sentinel, write = evil
    path = write(tmp_path / f"mobilenet.{fmt}", fmt)
    with pytest.raises(WeightsLoadError, match=REFUSED) as info:
        load_model("mobilenet_v3_small", weights_path=str(path))
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    assert not sentinel.exists()


def test_torchvision_hub_cache_file_is_hash_checked_before_loading(evil, tmp_path, monkeypatch):
    from advkit.plugins.builtin.imagenet_models import WeightsUnavailableError

    sentinel, write = evil
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ADVKIT_OFFLINE", "1")
    write(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailableError, match="does not match its name"):
        load_model("resnet18")
    assert not sentinel.exists()


@pytest.mark.parametrize("check_hash", [True, False])
def test_efficientnet_lite0_loader_refuses_code(evil, tmp_path, check_hash):
    from advkit.zoo.efficientnet_lite import load_lite0
    from advkit.zoo.weights import WeightsIntegrityError

    sentinel, write = evil
    path = write(tmp_path / "efficientnet-lite0.pth")
    expected = WeightsIntegrityError if check_hash else WeightsLoadError
    with pytest.raises(expected, match="SHA-256" if check_hash else REFUSED):
        load_lite0(path, check_hash=check_hash)
    with pytest.raises(WeightsLoadError, match=REFUSED):
        load_model("efficientnet_lite0", weights_path=str(path))  # a user's own file: not hash-checked, still safe
    assert not sentinel.exists()


@pytest.mark.parametrize("manifest_matches", [False, True])
def test_zoo_loader_refuses_a_pickle_even_when_the_manifest_hash_matches(evil, tmp_path, manifest_matches):
    from advkit.zoo.weights import WEIGHTS_DIR, WeightsIntegrityError, load_zoo_module, sha256_file

    sentinel, write = evil
    shutil.copy(WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    path = write(tmp_path / "cnn.safetensors")
    if manifest_matches:  # an attacker who can also edit the manifest still gets no code run
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["cnn"]["sha256"] = sha256_file(path)
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception) as info:
        load_zoo_module("cnn", weights_dir=tmp_path)
    if not manifest_matches:
        assert isinstance(info.value, WeightsIntegrityError)
    assert not sentinel.exists()


def test_no_loader_can_unpickle_arbitrary_objects():
    """Static guard: every torch.load in advkit passes weights_only=True; no pickle/np.load(allow_pickle) anywhere."""
    sources = [p for folder in ("advkit", "plugins", "model_zoo") for p in (ROOT / folder).rglob("*.py")]
    assert sources
    for path in sources:
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path.name}: {call.group(0)}"
        assert not re.search(r"\bpickle\.loads?\(|allow_pickle\s*=\s*True|joblib\.load|dill\.load", text), path.name
