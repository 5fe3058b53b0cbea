"""Ingest a tree of still images (PPMI layout, or any folders of jpg/png) into image shards for pretraining.

    python -m his.data.images --src PPMI/norm_image/play_instrument/cello --out /scratch/his/ppmi-cello

Every readable image: RGB, shorter side resized to 64, centre 64x64 crop (optionally a centre W x H crop of
the original first, as the report's manual 200x190 crop, §3.5.1). Files that are not images or cannot be
decoded are skipped with one line each and listed in OUT/report.json. Writes OUT/images-NNNNN.h5,
OUT/index.h5 (virtual datasets over the shards), OUT/manifest.json (datasets.h5.spec kind "images").
A re-run over unchanged inputs with the same options finds the manifest up to date, and its shards matching
it, and does nothing. One run per OUT at a time (his.io.exclusive_dir).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from his.constants import IMAGE_SIZE
from his.config import OneLineParser, cli_main
from his.data.manifest import MANIFEST, manifest_entry, source_problems
from his.data.shards import build_index, code_version, now_utc, write_manifest, write_shard
from his.io import InputError, exclusive_dir, write_json
from his.log import setup_logging

log = logging.getLogger("his.data.images")  # not __name__, which is "__main__" under python -m


def load_image(path: str | os.PathLike, crop: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (64, 64, 3): optional centre crop (W, H), shorter side to 64, centre crop. Raises on bad files."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    if crop is not None:
        w, h = min(crop[0], im.width), min(crop[1], im.height)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    scale = IMAGE_SIZE / min(im.size)
    size = (max(IMAGE_SIZE, round(im.width * scale)), max(IMAGE_SIZE, round(im.height * scale)))
    im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
    left, top = (im.width - IMAGE_SIZE) // 2, (im.height - IMAGE_SIZE) // 2
    return np.asarray(im.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)), dtype=np.uint8)


def _inputs_digest(files: list[Path], src: Path, options: dict) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def ingest(src: str | os.PathLike, out: str | os.PathLike, shard_images: int = 4096,
           crop: tuple[int, int] | None = None) -> dict:
    """Ingest every file under `src`; returns the report {"images", "skipped": [{"path", "reason"}], ...}."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"{src}: not a directory (--src)")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with exclusive_dir(out, "his.data.images"):
        return _ingest(src, out, files, shard_images, crop)


def _up_to_date(out: Path, digest: str) -> bool:
    manifest_path = out / MANIFEST
    if not (manifest_path.exists() and (out / "index.h5").exists() and (out / "report.json").exists()):
        return False
    try:
        same_inputs = json.loads(manifest_path.read_text()).get("inputs_sha256") == digest
    except (OSError, ValueError, AttributeError):
        return False
    return same_inputs and not source_problems(out / "index.h5")


def _ingest(src: Path, out: Path, files: list[Path], shard_images: int, crop: tuple[int, int] | None) -> dict:
    digest = _inputs_digest(files, src, {"crop": crop, "shard_images": shard_images})
    manifest_path = out / MANIFEST
    if _up_to_date(out, digest):
        log.info(f"{out}: up to date ({manifest_path})")
        return json.loads((out / "report.json").read_text())
    manifest_path.unlink(missing_ok=True)  # it vouches for the shards written below, once they are
    for old in out.glob("images-*.h5"):
        old.unlink()

    images, sources, skipped, shards = [], [], [], []

    def flush() -> None:
        path = out / f"images-{len(shards):05d}.h5"
        write_shard(path, "images", {"image": np.stack(images), "source": np.array(sources, dtype=object)},
                    {"code_version": code_version(), "created": now_utc()})
        shards.append(manifest_entry(path, out, len(images)))  # hashed right after writing
        images.clear()
        sources.clear()

    for path in tqdm(files, desc="images", unit="file", disable=None):
        try:
            images.append(load_image(path, crop))
            sources.append(str(path))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning(f"skipped {path}: {reason}")
            skipped.append({"path": str(path), "reason": reason})
        if len(images) == shard_images:
            flush()
    if images:
        flush()
    if not shards:
        raise InputError(f"{src}: no readable images among {len(files)} files")
    total = build_index(out / "index.h5", [out / e["name"] for e in shards], "images")
    report = {"src": str(src), "out": str(out), "files": len(files), "images": total, "skipped": skipped,
              "crop": list(crop) if crop else None}
    write_json(out / "report.json", report)
    write_manifest(manifest_path, "images", shards, {"src": str(src), "inputs_sha256": digest})
    log.info(f"{out}: {total} images in {len(shards)} shard(s), {len(skipped)} file(s) skipped")
    return report


def main(argv: list[str] | None = None) -> int:
    return cli_main("his.data.images", _main, argv)


def _main(argv: list[str]) -> int:
    parser = OneLineParser(prog="python -m his.data.images", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="folder tree of images (PPMI layout or any)")
    parser.add_argument("--out", required=True, help="output folder for the image shards")
    parser.add_argument("--shard-images", type=int, default=4096)
    parser.add_argument("--crop", type=parse_crop, default=None,
                        help="centre crop WxH of each original first, e.g. 200x190")
    args = parser.parse_args(argv)
    if args.shard_images <= 0:
        parser.error(f"--shard-images must be > 0, not {args.shard_images}")
    setup_logging()
    ingest(args.src, args.out, args.shard_images, args.crop)
    return 0


def parse_crop(text: str) -> tuple[int, int]:
    """'200x190' as (200, 190)."""
    w, _, h = text.strip().lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise argparse.ArgumentTypeError(f"--crop must look like 200x190, not {text!r}")
    return int(w), int(h)


if __name__ == "__main__":
    sys.exit(main())
