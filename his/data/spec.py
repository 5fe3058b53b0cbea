"""datasets.h5.spec: read the spec, give writers their storage layout, and check files against it.

    python -m his.data.spec check [--deep] FILE...     lists every deviation; exit 1 on any

Besides the format, an index's shards are checked against the manifest.json beside it (his.data.manifest):
each must exist, and when a manifest is there, be listed with its size; a shard listed in the manifest of
its folder (or the one above) must have that size. --deep also compares every sha256 and counts an index
without a manifest as a deviation. A bad command line is one line and exit 2.

The spec file is the only description of the format; nothing here repeats it. It ships inside the package,
his/data/datasets.h5.spec (read with importlib.resources, so an installed copy finds it from any directory);
datasets.h5.spec at the repository root is a symbolic link to it. HIS_SPEC=PATH reads another file instead.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from his.config import OneLineParser, cli_main
from his.data.manifest import MANIFEST, entry_problem, hdf5_reason, read_manifest, source_problems, virtual_sources
from his.io import InputError

SPEC_PATH = (Path(os.environ["HIS_SPEC"]) if os.environ.get("HIS_SPEC")
             else resources.files("his.data") / "datasets.h5.spec")
ROLES = ("shard", "index")


@lru_cache(maxsize=4)
def load_spec(path: str | os.PathLike | resources.abc.Traversable = SPEC_PATH) -> dict:
    with (open(path, "rb") if isinstance(path, (str, os.PathLike)) else path.open("rb")) as f:
        return tomllib.load(f)


def kind_spec(kind: str, spec: dict | None = None) -> dict:
    spec = spec or load_spec()
    if kind not in spec["kinds"]:
        raise KeyError(f"kind {kind!r} is not in {SPEC_PATH} (known: {', '.join(spec['kinds'])})")
    return spec["kinds"][kind]


def _applies(entry: dict, role: str) -> bool:
    return role in entry.get("roles", ROLES)


def _resolve(dims: list, attrs: dict, n: int | None = None) -> list:
    """Dimensions with "@attr" replaced by the attr's value and "N" by n (other names are left as they are)."""
    out = []
    for d in dims:
        if isinstance(d, str) and d.startswith("@"):
            out.append(int(attrs[d[1:]]))
        elif d == "N" and n is not None:
            out.append(n)
        else:
            out.append(d)
    return out


def _chunk_shape(chunks: list, attrs: dict, shape: tuple) -> tuple:
    """The spec's chunk shape for a dataset of `shape`: "@attr" from attrs, a free dimension name from shape."""
    return tuple(shape[i] if isinstance(d, str) else d for i, d in enumerate(_resolve(chunks, attrs)))


def dataset_shape(kind: str, name: str, attrs: dict, rows: int) -> tuple[int, ...]:
    """The shape the spec gives dataset `name` of `kind` in a file with file attrs `attrs` and `rows` rows."""
    shape = _resolve(kind_spec(kind)["datasets"][name]["shape"], attrs, rows)
    if any(isinstance(d, str) for d in shape):
        raise ValueError(f"dataset {name!r} of kind {kind!r} has a free dimension: {shape}")
    return tuple(shape)


def storage_options(kind: str, name: str, attrs: dict, shape: tuple) -> dict:
    """h5py create_dataset keyword arguments (dtype, chunks, compression, checksum) for dataset `name` of a
    shard."""
    entry = kind_spec(kind)["datasets"][name]
    dtype = h5py.string_dtype() if entry["dtype"] == "str" else np.dtype(entry["dtype"])
    options: dict[str, Any] = {"dtype": dtype}
    if entry["chunks"] != "contiguous" and shape[0] > 0:
        options["chunks"] = _chunk_shape(entry["chunks"], attrs, shape)
        options["fletcher32"] = entry.get("checksum") == "fletcher32"
    compression = entry["compression"]
    if compression.startswith("gzip"):
        options["compression"] = "gzip"
        options["compression_opts"] = int(compression.split("-")[1])
    elif compression == "lzf":
        options["compression"] = "lzf"
    return options


def encode_attr(value: Any, type_name: str) -> Any:
    """A Python value as stored in an HDF5 attr of spec type `type_name`."""
    if type_name == "json":
        return json.dumps(value)
    if type_name == "list[str]":
        return np.array(list(value), dtype=h5py.string_dtype())
    return value


def decode_attr(value: Any, type_name: str) -> Any:
    if type_name == "json":
        return json.loads(value)
    if type_name == "list[str]":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    if type_name == "list[int]":
        return [int(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _attr_type_ok(value: Any, type_name: str) -> bool:
    if type_name == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if type_name == "float":
        return isinstance(value, (float, int, np.floating, np.integer))
    if type_name == "bool":
        return isinstance(value, (bool, np.bool_))
    if type_name in ("str", "json"):
        return isinstance(value, (str, bytes))
    if type_name == "list[str]":
        return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OSU"
    if type_name == "list[int]":
        return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu"
    raise ValueError(f"unknown attr type {type_name!r} in {SPEC_PATH}")


def _dtype_ok(ds: h5py.Dataset, dtype: str) -> bool:
    if dtype == "str":
        info = h5py.check_string_dtype(ds.dtype)
        return info is not None and info.encoding == "utf-8"
    return ds.dtype == np.dtype(dtype)


def check_file(path: str | os.PathLike, spec: dict | None = None, deep: bool = False) -> list[str]:
    """Every way the HDF5 file at `path` deviates from the spec, one line each (empty when it conforms), and
    how its shards (an index) or itself (a shard) differ from their manifest; `deep` adds the sha256s."""
    spec = spec or load_spec()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"{path}: cannot open as HDF5 ({hdf5_reason(e)})"]
    try:
        with f:
            problems = _check_open_file(path, f, spec)
    except OSError as e:  # damaged metadata: h5py fails part-way through
        return [f"{path}: cannot read ({hdf5_reason(e)})"]
    return problems + _check_manifest(Path(path), deep)


def _read_attrs(path: str | os.PathLike, f: h5py.File) -> tuple[dict[str, Any], list[str]]:
    attrs, problems = {}, []
    for name in f.attrs:
        try:
            attrs[name] = f.attrs[name]
        except (OSError, TypeError, ValueError) as e:
            problems.append(f"{path}: attr {name} cannot be read ({hdf5_reason(e)})")
    return attrs, problems


def _int_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attrs usable as "@attr" dimensions: integer scalars (others are reported where a shape needs them)."""
    return {k: int(v) for k, v in attrs.items() if _attr_type_ok(v, "int")}


def _check_open_file(path: str | os.PathLike, f: h5py.File, spec: dict) -> list[str]:
    attrs, problems = _read_attrs(path, f)
    for name, allowed in (("kind", spec["kinds"]), ("role", ROLES)):
        value = attrs.get(name, "")
        if not _attr_type_ok(value, "str"):
            return problems + [f"{path}: attr {name} should be str, is {type(value).__name__}"]
        value = decode_attr(value, "str")
        if value not in allowed:
            return problems + [f"{path}: attr {name}={value!r} is not a {name} of the spec ({', '.join(allowed)})"]
    kind, role = decode_attr(attrs["kind"], "str"), decode_attr(attrs["role"], "str")
    ks = spec["kinds"][kind]

    for name, entry in ks["attrs"].items():
        if not _applies(entry, role) or name not in attrs and name in f.attrs:  # unreadable: reported above
            continue
        if name not in attrs:
            if entry.get("required", True):
                problems.append(f"{path}: missing attr {name}")
            continue
        if not _attr_type_ok(attrs[name], entry["type"]):
            problems.append(f"{path}: attr {name} should be {entry['type']}, is {type(attrs[name]).__name__}")
            continue
        try:
            value = decode_attr(attrs[name], entry["type"])
        except ValueError as e:  # json that does not parse
            problems.append(f"{path}: attr {name} should be {entry['type']}, does not parse ({e})")
            continue
        if "value" in entry and value != entry["value"]:
            problems.append(f"{path}: attr {name}={value!r}, spec says {entry['value']!r}")
    for name in attrs:
        if name not in ks["attrs"]:
            problems.append(f"{path}: attr {name} is not in the spec")

    rows: int | None = None
    free: dict[str, int] = {}
    int_attrs = _int_attrs(attrs)
    for name, entry in ks["datasets"].items():
        if not _applies(entry, role):
            continue
        if name not in f:
            problems.append(f"{path}: missing dataset {name}")
            continue
        ds = f[name]
        where = f"{path}: dataset {name}"
        if not _dtype_ok(ds, entry["dtype"]):
            problems.append(f"{where} has dtype {ds.dtype}, spec says {entry['dtype']}")
        try:
            want = _resolve(entry["shape"], int_attrs)
        except KeyError as e:
            problems.append(f"{where}: shape {entry['shape']} needs integer attr {e}")
            continue
        if len(want) != ds.ndim:
            problems.append(f"{where} has shape {ds.shape}, spec says {entry['shape']}")
            continue
        for dim, size in zip(want, ds.shape):
            if dim == "N":
                rows = size if rows is None else rows
                if size != rows:
                    problems.append(f"{where} has {size} rows, other datasets have {rows}")
            elif isinstance(dim, str):
                if free.setdefault(dim, size) != size:
                    problems.append(f"{where}: dimension {dim}={size}, elsewhere {free[dim]}")
            elif dim != size:
                problems.append(f"{where} has shape {ds.shape}, spec says {entry['shape']}")
                break
        if not ds.is_virtual:
            problems += _check_layout(where, ds, entry, int_attrs)
    for name in f:
        if name not in ks["datasets"]:
            problems.append(f"{path}: dataset {name} is not in the spec")
    return problems


def _check_manifest(path: Path, deep: bool) -> list[str]:
    """An index: its sources against the manifest beside it (--deep: there must be one). A shard: itself
    against the manifest of its folder or the one above, when one lists it."""
    if virtual_sources(path):
        return source_problems(path, "full" if deep else "size", need_manifest=deep)
    for manifest in (path.parent / MANIFEST, path.parent.parent / MANIFEST):
        if manifest.is_file():
            try:
                entry = read_manifest(manifest).get(os.path.normpath(os.path.relpath(path, manifest.parent)))
            except InputError as e:
                return [str(e)]
            if entry is not None:
                problem = entry_problem(path, entry, deep, manifest)
                return [problem] if problem else []
    return []


def _check_layout(where: str, ds: h5py.Dataset, entry: dict, int_attrs: dict) -> list[str]:
    if ds.size == 0:
        return []  # empty datasets are written unchunked: HDF5 cannot chunk a zero-sized fixed shape
    problems = []
    want_chunks = None
    if entry["chunks"] != "contiguous":
        try:
            want_chunks = _chunk_shape(entry["chunks"], int_attrs, ds.shape)
        except KeyError as e:
            return [f"{where}: chunks {entry['chunks']} need integer attr {e}"]
    if ds.chunks != want_chunks:
        problems.append(f"{where} has chunks {ds.chunks}, spec says {entry['chunks']}")
    have = "none" if ds.compression is None else ds.compression
    if have == "gzip":
        have = f"gzip-{ds.compression_opts}"
    if have != entry["compression"]:
        problems.append(f"{where} has compression {have}, spec says {entry['compression']}")
    if _checksum(ds) != entry.get("checksum"):
        problems.append(f"{where} has checksum {_checksum(ds) or 'none'}, spec says {entry.get('checksum', 'none')}")
    return problems


def _checksum(ds: h5py.Dataset) -> str | None:
    return "fletcher32" if ds.fletcher32 else None


def missing_checksums(f: h5py.File) -> list[str]:
    """The datasets of shard `f` that hold rows but not the per-chunk checksum the spec gives them (a file
    written before checksums were added); [] for an index or a file of no known kind."""
    kind = decode_attr(f.attrs.get("kind", ""), "str")
    if kind not in load_spec()["kinds"]:
        return []
    return [name for name, entry in kind_spec(kind)["datasets"].items()
            if entry.get("checksum") and name in f and not f[name].is_virtual and f[name].size
            and _checksum(f[name]) != entry["checksum"]]


def main(argv: list[str] | None = None) -> int:
    return cli_main("his.data.spec", _check_command, argv)


def _check_command(argv: list[str]) -> int:
    parser = OneLineParser(prog="python -m his.data.spec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate HDF5 files against datasets.h5.spec")
    check.add_argument("--deep", action="store_true", help="also compare every shard's sha256 with its manifest")
    check.add_argument("files", nargs="+")
    args = parser.parse_args(argv)

    failed = 0
    for file in args.files:
        problems = check_file(file, deep=args.deep)
        for line in problems:
            print(line)
        failed += bool(problems)
    n = len(args.files)
    print(f"{n - failed} of {n} file(s) conform to {SPEC_PATH} (spec_version {load_spec()['spec_version']})"
          + (", shards checked against their manifests' sha256" if args.deep else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
