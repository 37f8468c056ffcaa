"""Atomic artifact writes: write to a temp file in the same folder, then ``os.replace``.

A crash mid-write leaves the previous file (or nothing), never a half-written artifact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Artifacts are build outputs the group reads: rw-r--r-- files, rwxr-xr-x folders.
FILE_MODE = 0o644
DIR_MODE = 0o755


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; an artifact is read by the group like any build output
        tmp_path.chmod(FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.filename is None:  # a full disk reports no file; name the artifact being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


class ArtifactError(ValueError):
    """A file on disk that cannot be read back (truncated, corrupt); the message names it."""


@contextlib.contextmanager
def reading(path: str | Path, remedy: str) -> Iterator[None]:
    """Turn a failure to parse ``path`` inside the block into one :class:`ArtifactError` line
    naming the file, the parser's first line of complaint and ``remedy`` (what to re-run).

    A missing or unreadable file and an error that already names its file pass through
    unchanged; keep the block to the read itself, since any other exception in it is blamed on
    the file.
    """
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError, ArtifactError):
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        detail = f"{type(exc).__name__}: {lines[0][:200]}".rstrip(": ")
        raise ArtifactError(f"{path}: corrupt or truncated ({detail}); {remedy}") from exc


def os_error_line(exc: OSError) -> str:
    """One line for an I/O failure: the file, what went wrong and what to do about it."""
    line = exc.strerror or str(exc)
    if exc.filename is not None:
        line = f"{exc.filename}: {line}"
    if exc.errno == errno.ENOSPC:
        return f"{line}; free some space or write to another folder"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{line}; choose a writable output folder"
    return line


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=_json_default) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, array)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order,
    hidden files left out): the fingerprint a stage records of what it read or wrote."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def save_dir_atomic(model: Any, directory: str | Path) -> None:
    """``model.save(folder)`` into a temp folder beside ``directory``, then swap it in, so a
    crash never leaves a half-written model folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is a shared artifact
    try:
        model.save(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
