"""Stage configuration: one dataclass per stage, filled from defaults, an optional TOML file, then overrides.

OmegaConf's structured configs do the merging and the type checks, so a wrong key or a value of the wrong
type fails before any work starts, naming the field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Sequence, TypeVar

import tomli_w
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from his.io import atomic_path

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


def load_config(cls: type[T], toml_path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the TOML file (if any), then `key=value` overrides (dotted keys allowed)."""
    try:
        merged = OmegaConf.structured(cls)
        if toml_path is not None:
            with open(toml_path, "rb") as f:
                merged = OmegaConf.merge(merged, tomllib.load(f))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {str(e).splitlines()[0]}") from None


def config_from_argv(cls: type[T], argv: Sequence[str]) -> T:
    """A stage's command line, `[CONFIG.toml] [key=value ...]`, as its config."""
    toml = argv[0] if argv and "=" not in argv[0] else None
    return load_config(cls, toml, argv[1:] if toml else argv)


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
