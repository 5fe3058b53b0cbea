"""Shard files, the virtual-dataset index over them, and the manifest, all as datasets.h5.spec describes.

A shard is written under a temporary name and renamed into place, so a shard that exists is complete.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

import his
from his.data.spec import decode_attr, encode_attr, kind_spec, storage_options
from his.io import atomic_path, write_json


def code_version() -> str:
    """his.__version__, plus the git commit of the checkout when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(his.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{his.__version__}+{commit}" if commit else his.__version__


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_attrs(f: h5py.File, kind: str, role: str, attrs: dict[str, Any]) -> None:
    types = kind_spec(kind)["attrs"]
    values = {"spec_version": types["spec_version"]["value"], "kind": kind, "role": role, **attrs}
    for name, value in values.items():
        if name not in types:
            raise KeyError(f"attr {name!r} is not in the spec for kind {kind!r}")
        if role in types[name].get("roles", ("shard", "index")):
            f.attrs[name] = encode_attr(value, types[name]["type"])


def write_shard(path: str | os.PathLike, kind: str, columns: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write one shard of `kind` holding `columns` (every dataset of the spec, rows first) atomically.

    Storage (dtype, chunks, compression) comes from the spec; `attrs` are the file attrs besides
    spec_version, kind and role, which are filled in here.
    """
    names = [n for n, e in kind_spec(kind)["datasets"].items() if "shard" in e.get("roles", ("shard", "index"))]
    if sorted(columns) != sorted(names):
        raise KeyError(f"shard of kind {kind!r} needs columns {names}, got {sorted(columns)}")
    rows = {len(c) for c in columns.values()}
    if len(rows) != 1:
        raise ValueError(f"columns have different row counts: { {n: len(c) for n, c in columns.items()} }")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_attrs(f, kind, "shard", attrs)
            for name in names:
                options = storage_options(kind, name, attrs, np.shape(columns[name]))
                data = columns[name]
                if h5py.check_string_dtype(options["dtype"]):
                    data = np.asarray(data, dtype=object)
                f.create_dataset(name, data=data, **options)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The file attrs of a shard or index, decoded by their spec types."""
    with h5py.File(path, "r") as f:
        kind = decode_attr(f.attrs["kind"], "str")
        types = kind_spec(kind)["attrs"]
        return {k: decode_attr(v, types[k]["type"]) if k in types else v for k, v in f.attrs.items()}


def build_index(index_path: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], kind: str) -> int:
    """Write `index_path`: one virtual dataset per row dataset of the spec, the shards' rows in the given
    order, source paths relative to the index's directory (so the whole output folder can be moved).
    File attrs are those of the first shard, less the per-shard ones. Returns the number of rows.
    """
    index_path = Path(index_path)
    datasets = kind_spec(kind)["datasets"]
    attrs_spec = kind_spec(kind)["attrs"]
    shapes: dict[str, tuple] = {}
    counts = []
    dtypes = {}
    attrs: dict[str, Any] = {}
    for shard in shard_paths:
        with h5py.File(shard, "r") as f:
            counts.append(len(f[next(iter(datasets))]))
            for name in datasets:
                if name in f:
                    shapes[name] = f[name].shape[1:]
                    dtypes[name] = f[name].dtype
            if not attrs:
                attrs = {k: v for k, v in f.attrs.items() if "index" in attrs_spec.get(k, {}).get("roles", ("index",))}
    total = sum(counts)
    with atomic_path(index_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["role"] = "index"
            if "created" in attrs_spec:
                f.attrs["created"] = now_utc()
            for name in shapes:
                layout = h5py.VirtualLayout(shape=(total, *shapes[name]), dtype=dtypes[name])
                row = 0
                for shard, n in zip(shard_paths, counts):
                    if n:
                        source = os.path.relpath(shard, index_path.parent)
                        layout[row : row + n] = h5py.VirtualSource(source, name, shape=(n, *shapes[name]))
                    row += n
                f.create_virtual_dataset(name, layout)
    return total


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(
    path: str | os.PathLike, kind: str, shard_paths: Sequence[str | os.PathLike], extra: dict[str, Any]
) -> dict:
    """Write manifest.json: each shard's name (relative to the manifest), rows, bytes and sha256."""
    base = Path(path).parent
    shards = []
    for shard in shard_paths:
        with h5py.File(shard, "r") as f:
            rows = len(f[next(iter(kind_spec(kind)["datasets"]))])
        shards.append(
            {
                "name": os.path.relpath(shard, base),
                "rows": rows,
                "bytes": os.path.getsize(shard),
                "sha256": sha256_file(shard),
            }
        )
    manifest = {
        "kind": kind,
        "spec_version": kind_spec(kind)["attrs"]["spec_version"]["value"],
        "created": now_utc(),
        "rows": sum(s["rows"] for s in shards),
        **extra,
        "shards": shards,
    }
    write_json(path, manifest)
    return manifest
