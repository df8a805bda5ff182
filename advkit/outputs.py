"""Output folders: advkit writes only where it may, and never over files it did not write.

Every command that writes a folder (``--out``) first *claims* it and afterwards *records* what it
wrote, in a small manifest (:data:`MANIFEST_NAME`: the command, and each entry with its sha256).
A claim is refused with :class:`~advkit.errors.OutputFolderError`, before any work, when the
folder holds

* files advkit did not write there, or files it wrote that were changed since (a user's own
  ``index.html`` or ``results.csv``, a folder made by something else), or
* the files of a previous run that this command would not continue (``attack --out`` into the
  folder of an earlier attack, say); a sweep continues its own folder (resume) and ``report``
  rebuilds a sweep's or transfer's,

unless ``overwrite=True`` (``--overwrite``): the previous run's own files are then removed, so no
stale file survives next to the new ones, while the user's files are kept (those with the name
of a new output are replaced).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from advkit.errors import OutputFolderError
from advkit.files import atomic_write_json, sha256_file

MANIFEST_NAME = ".advkit-outputs.json"
#: An entry that is a folder advkit owns as a whole (its content is checked by whoever wrote it, e.g. the sweep's
#: cell store), rather than a file with a sha256.
FOLDER = "folder"


def _is_temporary(name: str) -> bool:
    """advkit's own atomic-write temporaries (``.NAME.PID.tmp``), removed by whoever writes there next."""
    return name.startswith(".") and name.endswith(".tmp")


def read_manifest(folder: Path) -> dict:
    """The folder's manifest (``{"command": ..., "files": {name: sha256 | "folder"}}``), or an empty one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return {"command": None, "files": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("not a manifest")
        return data
    except (OSError, ValueError) as error:
        raise OutputFolderError(
            f"{path} is not a readable advkit manifest ({error}); advkit cannot tell which files "
            "in that folder it wrote: choose a new folder, or pass --overwrite"
        ) from None


def _write_manifest(folder: Path, manifest: dict) -> None:
    path = folder / MANIFEST_NAME
    atomic_write_json(path, manifest)


def _changed_since(folder: Path, name: str, recorded: str) -> bool:
    entry = folder / name
    if recorded == FOLDER:
        return not entry.is_dir()
    return not entry.is_file() or sha256_file(entry) != recorded


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim(
    folder: str | os.PathLike, command: str, *, overwrite: bool = False, continues: Iterable[str] = (),
    rebuilds: bool = False,
) -> Path:  # fmt: skip
    """Make ``folder`` ready for ``command``'s outputs (see the module docstring); returns it as a Path.

    ``continues``: the commands whose folders this one may carry on (a sweep resumes a sweep; a report rebuilds a
    sweep's). ``rebuilds``: the command reads a continued run's files (``advkit report``), so ``overwrite`` only lets
    it write next to files advkit did not write and removes none of that run's. Raises OutputFolderError when the
    folder is not writable, is a file, holds files advkit did not write, or (unless continued) a previous run's
    files, and ``overwrite`` is not set.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"--out {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".advkit-write-test.{os.getpid()}.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputFolderError(f"--out {str(folder)!r} is not writable: {error.strerror or error}") from None
    try:
        manifest = read_manifest(folder)
    except OutputFolderError:
        if not overwrite:
            raise
        manifest = {"command": None, "files": {}}  # every entry counts as the user's: kept, unless overwritten
    owned: dict[str, str] = manifest.get("files", {})
    entries = [p.name for p in folder.iterdir() if p.name != MANIFEST_NAME and not _is_temporary(p.name)]
    foreign = [name for name in entries if name not in owned or _changed_since(folder, name, owned[name])]
    previous = [name for name in entries if name not in foreign]
    continued = manifest.get("command") in set(continues)
    if not overwrite:
        if foreign:
            raise OutputFolderError(
                f"--out {str(folder)!r} holds files advkit did not write there ({_listing(foreign)}); choose an empty "
                "or new folder, or pass --overwrite to write over them (your other files are kept)"
            )
        if previous and not continued:
            raise OutputFolderError(
                f"--out {str(folder)!r} holds the files of a previous `advkit {manifest.get('command')}` run "
                f"({_listing(previous)}); choose a new folder, or pass --overwrite to replace them"
            )
    if overwrite and not (rebuilds and continued):
        for name in previous:  # the previous run's own files go, so none of them is mistaken for this run's
            path = folder / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        owned = {}
    elif not continued:
        owned = {}
    _write_manifest(folder, {"command": command, "files": dict(owned)})
    return folder


def record(folder: str | os.PathLike, paths: Iterable[str | os.PathLike], *, folders: Iterable[str] = ()) -> None:
    """Note files written into ``folder`` (their sha256) and whole folders it owns, in its manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.setdefault("files", {})
    for path in paths:
        path = Path(path)
        if path.parent.resolve() != folder.resolve():
            continue  # only the folder's own entries; files in owned sub-folders belong to them
        if path.is_file():
            files[path.name] = sha256_file(path)
    for name in folders:
        files[name] = FOLDER
    _write_manifest(folder, manifest)


__all__ = ["FOLDER", "MANIFEST_NAME", "claim", "read_manifest", "record"]
