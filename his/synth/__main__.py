"""python -m his.synth --out DIR ...: write the generated UCF-101 / PPMI data set (see his/synth/__init__.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from his.synth import ALL_CLASSES, DEFAULT_CLASSES, LAYOUTS, ROOM_MODES, SynthError, generate


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit status 2, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="his.synth", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES),
                        help=f"comma or space separated, from {', '.join(ALL_CLASSES)} (default: all)")
    parser.add_argument("--videos-per-class", type=int, default=20)
    parser.add_argument("--groups", type=int, default=5, help="players per class; capped at videos per class")
    parser.add_argument("--ppmi-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration-range", type=float, nargs=2, default=(4.0, 10.0), metavar=("MIN", "MAX"),
                        help="clip length in seconds (default: 4 10, as UCF-101)")
    parser.add_argument("--workers", type=int, default=2, help="clips made at once")
    parser.add_argument("--rooms", choices=ROOM_MODES, default="shared",
                        help="shared (default): every class draws players, rooms and instrument colours from the "
                             "same pools, so only the instrument tells the class; per-class: each class its own "
                             "room and instrument colour (the earlier scheme, for comparison)")
    parser.add_argument("--layout", choices=LAYOUTS, default="ucf101",
                        help="ucf101 (default): UCF-101/ and its split lists; csv: VGGSound/ as a VGGSound download "
                             "(cut segments and one CSV); folders: folders/, one folder per class")
    parser.add_argument("--force", action="store_true", help="make the data set anew even if it is complete")
    args = parser.parse_args(argv)
    classes = [c for item in args.classes for c in item.split(",") if c]
    try:
        summary = generate(args.out, classes, args.videos_per_class, args.groups, args.ppmi_images, args.seed,
                           tuple(args.duration_range), args.workers, force=args.force, rooms=args.rooms,
                           layout=args.layout)
    except SynthError as e:
        parser.error(str(e))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
