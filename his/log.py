"""Where the toolkit's status lines go: library code logs (`logging.getLogger(__name__)`), and every stage's
`main` (and hpc.launch's job entry) calls `setup_logging()` so the lines reach its stdout, hence a Slurm job's
log, as `module: message`. Without it (a library caller, a test) logging's own defaults apply. A module that
also runs as `python -m` names its logger outright (`__name__` is then "__main__", outside his.*).
"""

from __future__ import annotations

import logging
import sys

_ROOTS = ("his", "hpc")


class _Stdout(logging.StreamHandler):
    """A handler on whatever sys.stdout is when a record is written (pytest and submitit swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """INFO and above of the his.* and hpc.* loggers to stdout as `name: message`. Idempotent."""
    for name in _ROOTS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _Stdout) for h in logger.handlers):
            handler = _Stdout()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
