"""Stage configuration: one dataclass per stage, filled from defaults, an optional TOML file, then overrides.

OmegaConf's structured configs do the merging and the type checks, so a wrong key or a value of the wrong
type fails before any work starts, naming the field.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import inspect
import os
import re
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence, TypeVar

import tomli_w
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from his.io import InputError, atomic_path, os_error_line
from his.log import setup_logging

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


def load_config(cls: type[T], toml_path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the TOML file (if any), then `key=value` overrides (dotted keys allowed)."""
    try:
        merged = OmegaConf.structured(cls)
        if toml_path is not None:
            try:
                with open(toml_path, "rb") as f:
                    merged = OmegaConf.merge(merged, tomllib.load(f))
            except OSError as e:
                raise ConfigError(f"config: {toml_path}: {e.strerror or e}") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config: {toml_path}: {e}") from None
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
            except yaml.YAMLError as e:  # e.g. a value that opens with a quote and goes on after it
                raise ConfigError(f"config: {item}: not a value YAML reads ({getattr(e, 'problem', e)}); quote the "
                                  "whole value: key='...'") from None
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        line, key = str(e).splitlines()[0], getattr(e, "full_key", None)
        raise ConfigError(f"config: {key}: {line}" if key and f"'{key}'" not in line else f"config: {line}") from None


def config_from_argv(cls: type[T], argv: Sequence[str] | None = None, *, prog: str = "", doc: str | None = None,
                     positional: str = "") -> T:
    """A stage's command line, `[CONFIG.toml] [key=value ...]`, as its config: the one parser of every stage.

    The argument ending in .toml is the config file; with `positional` (a field name) one other bare argument
    is shorthand for `positional=ARG` (his.eval: `RUN_DIR` for `run=RUN_DIR`). `-h`/`--help` prints `doc` and
    every field with its type and default, then exits 0; a bad argument, key or value prints one line naming
    it to stderr and exits 2 (SystemExit, as argparse does).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or cls.__module__
    if "-h" in args or "--help" in args:
        print(config_help(cls, doc, positional))
        raise SystemExit(0)
    toml, bare, overrides = None, [], []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif a.endswith(".toml") and toml is None:
            toml = a
        else:
            bare.append(a)
    if bare and (not positional or len(bare) > 1 or bare[0].endswith(".toml")):
        expected = f"CONFIG.toml, {positional.upper()} or key=value" if positional else "CONFIG.toml or key=value"
        raise SystemExit(config_error(prog, f"unexpected argument(s) {' '.join(bare)} (expected {expected}; "
                                            "--help lists the keys)"))
    try:
        return load_config(cls, toml, [f"{positional}={b}" for b in bare] + overrides)
    except ConfigError as e:
        raise SystemExit(config_error(prog, e)) from None


def stage_main(cls: type[T], run: Callable[[T], Any], argv: Sequence[str] | None, *, prog: str, doc: str | None,
               show: Callable[[Any], None] = print, positional: str = "",
               failures: tuple[type[Exception], ...] = ()) -> int:
    """Every stage's `main`: status lines on stdout, the one command line, `run`, then `show` its result.

    Expected failures are one line (cli_main): exit 2; an exception of `failures` (e.g. a non-finite loss)
    one line and exit 1.
    """
    setup_logging()

    def body(args: list[str]) -> int:
        cfg = config_from_argv(cls, args, prog=prog, doc=doc, positional=positional)
        try:
            result = run(cfg)
        except failures as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 1
        show(result)
        return 0

    return cli_main(prog, body, argv)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: message (--help for usage)`, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help for usage)\n")


def cli_main(prog: str, body: Callable[[list[str]], int], argv: Sequence[str] | None) -> int:
    """Run a command, `body(args)`: a config it cannot use (ConfigError), a path it cannot use (InputError) or
    any other OSError is one line on stderr and exit 2. With --debug among the arguments (taken out before
    `body` sees them) or HIS_DEBUG=1 such an error propagates, traceback and all."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HIS_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        with _quiet_full_disk_in_threads(debug):
            return body(args)
    except (ConfigError, InputError) as e:
        if debug:
            raise
        return config_error(prog, e)
    except OSError as e:
        if debug:
            raise
        if e.filename is None and e.errno in DISK_FULL:
            e.filename = _file_being_written(e)
        return config_error(prog, os_error_line(e))


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _quiet_full_disk_in_threads(debug: bool) -> Iterator[None]:
    """A background writer thread (TensorBoard's) that meets a full disk prints no traceback: the thread's owner
    meets the same error at its next write (TensorBoard raises it there), and that is the command's one line."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if debug or not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _file_being_written(e: OSError) -> str | None:
    """For a write error that names no file (a file object's write, TensorBoard's writer thread): the innermost
    `filename` argument on its traceback, the file it was writing."""
    tb, filename = e.__traceback__, None
    while tb is not None:
        value = tb.tb_frame.f_locals.get("filename")
        filename = os.fsdecode(value) if isinstance(value, (str, bytes)) else filename
        tb = tb.tb_next
    return filename


def config_error(prog: str, error: Any) -> int:
    """Say `error` as one line on stderr; returns 2, the exit status of every stage for a config it cannot use."""
    print(f"{prog}: " + " / ".join(str(error).splitlines()), file=sys.stderr)
    return 2


def _field_comments(cls: type) -> dict[str, str]:
    """The `# ...` comment after each field in the source of `cls` and its dataclass bases (nearest wins)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            comments[m.group(1)] = m.group(2).strip()
    return comments


def config_help(cls: type, doc: str | None = None, positional: str = "") -> str:
    """`doc`, then one line per field of the dataclass `cls`: name, type, default and its source comment."""
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append((f"{f.name}: {type_name} = {default!r}", comments.get(f.name, "")))
    width = min(40, max(len(r[0]) for r in rows))  # a long default pushes only its own comment on
    shorthand = f"; a bare {positional.upper()} means {positional}={positional.upper()}" if positional else ""
    lines = [(doc or "").strip(), "",
             f"{cls.__name__} keys (key=value; defaults, then CONFIG.toml, then overrides{shorthand}):"]
    lines += [f"  {left:<{width}}  {comment}".rstrip() for left, comment in rows]
    return "\n".join(lines).lstrip("\n")


def config_to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass with None values dropped (TOML has no null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as TOML, atomically."""
    text = tomli_w.dumps(config_to_dict(cfg))
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between two config dicts (config_to_dict), as (old, new). Keys only
    one side has are left out: a field that is new since (or gone since) says nothing of the run's values."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in [k for k in new if k in old]:  # in field order: a stage's main settings come first
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 3) -> str:
    """'lr 0.0002 -> 0.0001, seed 0 -> 1 (and 2 more)': the first few changes, for a one-line message."""
    shown = [f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit]]
    more = f" (and {len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(shown) + more
