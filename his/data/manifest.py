"""manifest.json: what each shard of a data set should be (name, rows, bytes, sha256), and the check that
the shards behind an index's virtual datasets are still that.

A virtual dataset reads a missing source file as zeros, so every reader checks first (`verify_set`): each
source exists, is listed in the manifest beside the index, and has its size; with HIS_VERIFY=full also its
sha256 (hashed once per process for an unchanged file). An entry is made (`manifest_entry`) right after
its shard is written, or taken over from an earlier manifest only once the file was found to match it, so a
manifest never vouches for a file nobody checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py

from his.io import InputError

MANIFEST = "manifest.json"
VERIFY_MODES = ("size", "full")


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=4096)
def _sha256_of_version(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)


def sha256_cached(path: Path) -> str:
    """sha256_file, computed once per process for a file whose size, mtime and inode are unchanged."""
    st = path.stat()
    return _sha256_of_version(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def manifest_entry(shard: str | os.PathLike, base: str | os.PathLike, rows: int) -> dict[str, Any]:
    """The manifest's entry for `shard` as it is on disk now: call it right after writing the shard."""
    return {"name": os.path.relpath(shard, base), "rows": rows, "bytes": os.path.getsize(shard),
            "sha256": sha256_file(shard)}


def read_manifest(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The entries of the manifest at `path` by shard name; InputError (one line) when it is missing or
    not a manifest."""
    try:
        manifest = json.loads(Path(path).read_text())
        entries = {os.path.normpath(e["name"]): e for e in manifest["shards"]}
        for e in entries.values():
            int(e["bytes"]), str(e["sha256"])
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a manifest ({type(e).__name__}: {e})") from None
    return entries


def verify_mode(mode: str | None = None) -> str:
    """`mode`, else HIS_VERIFY, else "size"."""
    mode = mode or os.environ.get("HIS_VERIFY") or "size"
    if mode not in VERIFY_MODES:
        raise InputError(f"HIS_VERIFY={mode!r} must be one of {', '.join(VERIFY_MODES)}")
    return mode


def entry_problem(path: Path, entry: dict[str, Any], full: bool, manifest: str | os.PathLike) -> str | None:
    """Why the file at `path` is not what its manifest entry says (one line), or None when it is."""
    if not path.is_file():
        return f"{path}: missing (listed in {manifest})"
    size = path.stat().st_size
    if size != int(entry["bytes"]):
        return f"{path}: {size} bytes, {manifest} says {entry['bytes']} (truncated or changed since)"
    if full and sha256_cached(path) != entry["sha256"]:
        return f"{path}: sha256 differs from {manifest} (corrupted or changed since)"
    return None


def virtual_sources(index: str | os.PathLike) -> list[str]:
    """The distinct source file names of every virtual dataset of the file at `index`, as stored."""
    names: dict[str, None] = {}
    with h5py.File(index, "r") as f:
        for ds in f.values():
            if isinstance(ds, h5py.Dataset) and ds.is_virtual:
                names.update((s.file_name, None) for s in ds.virtual_sources())
    return list(names)


def source_problems(index: str | os.PathLike, mode: str | None = None, need_manifest: bool = True) -> list[str]:
    """Every way the sources of `index`'s virtual datasets differ from the manifest beside it, one line each
    (empty when they match; a file with no virtual datasets has nothing to check). Without `need_manifest`
    an index with no manifest is checked only for missing sources."""
    index = Path(index)
    full = verify_mode(mode) == "full"
    try:
        sources = virtual_sources(index)
    except OSError as e:
        return [f"{index}: cannot read as HDF5 ({hdf5_reason(e)})"]
    if not sources:
        return []
    manifest = index.parent / MANIFEST
    problems: list[str] = []
    entries = None
    if manifest.is_file():
        try:
            entries = read_manifest(manifest)
        except InputError as e:
            problems.append(str(e))
    elif need_manifest:
        problems.append(f"{index}: no {MANIFEST} beside it to check its shards against (rerun the stage that wrote it)")
    for source in sources:
        path = index.parent / source
        if not path.is_file():
            problems.append(f"{path}: missing (a source of {index})")
        elif entries is not None:
            entry = entries.get(os.path.normpath(source))
            if entry is None:
                problems.append(f"{path}: a source of {index} that {manifest} does not list")
            elif (problem := entry_problem(path, entry, full, manifest)) is not None:
                problems.append(problem)
    return problems


def verify_set(index: str | os.PathLike, mode: str | None = None) -> None:
    """InputError (one line: the first problem, and how many more) unless source_problems(index) is empty."""
    problems = source_problems(index, mode)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)


def hdf5_reason(e: Exception) -> str:
    """h5py's reason, e.g. 'file signature not found' from 'Unable to synchronously open file (file signature
    not found)'."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.splitlines()[0] if text else type(e).__name__
    return text[text.rfind("(") + 1 : text.rfind(")")] if text.endswith(")") and "(" in text else text
