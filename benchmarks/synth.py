"""Time the generated data set at the `make demo` default (3 classes x 20 videos, 200 PPMI images).

    python benchmarks/synth.py [--workers 2] [--repeats 1] [--rooms shared|per-class] [--classes all|C1,C2]
                               [--json benchmarks/results/synth.json]

Prints a table (wall seconds, CPU seconds of this process and its ffmpeg/fluidsynth children, per video) and
writes it as JSON. The load average is printed too: on a shared machine it explains slow runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from his.synth import ALL_CLASSES, ROOM_MODES, generate

DEMO = dict(classes=["PlayingCello", "PlayingDhol", "PlayingSitar"], videos_per_class=20, ppmi_images=200)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rooms", choices=ROOM_MODES, default="shared")
    parser.add_argument("--classes", default=",".join(DEMO["classes"]),
                        help="comma separated, or 'all' for the ten (default: the demo's three)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/synth.json"))
    args = parser.parse_args()
    classes = list(ALL_CLASSES) if args.classes == "all" else [c for c in args.classes.split(",") if c]

    rows = []
    for repeat in range(args.repeats):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="his-synth-bench-") as out:
            cpu, start = cpu_seconds(), time.monotonic()
            summary = generate(out, workers=args.workers, progress=False, rooms=args.rooms,
                               **{**DEMO, "classes": classes})
            wall, cpu = time.monotonic() - start, cpu_seconds() - cpu
        rows.append({"repeat": repeat, "workers": args.workers, "rooms": args.rooms,
                     "classes": len(summary["classes"]), "videos": summary["videos"],
                     "images": summary["images"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "wall_per_video_s": round(wall / summary["videos"], 3), "load_before": round(load_before, 2),
                     "cores": os.cpu_count(), "sound": summary["sound"]})

    columns = list(rows[0])
    print(" ".join(f"{c:>16}" for c in columns))
    for row in rows:
        print(" ".join(f"{row[c]!s:>16}" for c in columns))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "his.synth make-demo default", "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
