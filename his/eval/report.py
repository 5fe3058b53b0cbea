"""The listen-and-look page: report.html, one static page to press play and look.

For each sound: an audio player for the exact window the images were drawn from, the grid of generated
images, the real frame when there is one, and what is known about it (his.eval: the class our frame
classifier reads off the images and the clip's scores). his.eval puts the summary table and the figures on
top. The page has no script and no link outside its folder: the sounds (WAV, 16-bit mono, written with the
standard `wave` module) and images lie beside it in MEDIA_DIR, so the folder opens from disk anywhere it is
copied. Every string on the page is escaped.
"""

from __future__ import annotations

import html
import math
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np

from his.eval import figures
from his.eval.data import EvalData
from his.io import atomic_path


PAGE = "report.html"
MEDIA_DIR = "report"  # the page's sounds and images, beside it
GRID_COLUMNS = 8


def format_number(value: Any) -> str:
    """A metric as the tables show it: 3 significant digits, a dash for nan."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def format_interval(bounds: list[float] | None) -> str:
    """A 95% interval as the tables show it, "[lo, hi]", or "" when there is none."""
    return f"[{format_number(bounds[0])}, {format_number(bounds[1])}]" if bounds else ""


def _with_interval(value: float, bounds: list[float] | None) -> str | float:
    return f"{format_number(value)} {format_interval(bounds)}" if bounds else value


def _overall_rows(o: dict[str, Any], n_classes: int) -> list[tuple[str, Any, Any]]:
    """compute_metrics' overall numbers `o` as (metric, these images, real frames) rows."""
    return [
        ("conditional accuracy [95% bootstrap over clips]", _with_interval(o["conditional_accuracy"],
                                                                          o.get("conditional_accuracy_95")),
         o["ceiling_accuracy"]),
        ("sound-limited ceiling: real frames of the class a linear probe hears in the sound", "",
         o.get("heard_ceiling", "")),
        ("the linear probe's class accuracy on the test sounds' features", o.get("heard_accuracy", ""), ""),
        (f"shuffled sound: read as the clip's class (chance 1/{n_classes} = {format_number(o['chance_accuracy'])})",
         o["shuffled_accuracy"], ""),
        ("shuffled sound: read as the sound's class", o["shuffled_follows_sound"], o["ceiling_accuracy"]),
        ("R@1 / R@5 own frame", f"{format_number(o['own_r1'])} / {format_number(o['own_r5'])}", ""),
        ("R@1 / R@5 class", f"{format_number(o['class_r1'])} / {format_number(o['class_r5'])}",
         f"{format_number(o['class_r1_real'])} / {format_number(o['class_r5_real'])}"),
        ("FID", o["fid"], o["fid_real"]),
        ("KID", o["kid"], o["kid_real"]),
        ("intra-class FID (mean over classes)", o["intra_fid"], o["intra_fid_real"]),
        ("intra-class KID (mean over classes)", o["intra_kid"], o["intra_kid_real"]),
        ("diversity within one sound / real", o["diversity_within_sound"], 1),
        ("diversity across sounds of a class / real", o["diversity_across_sounds"], 1),
        ("nearest training frame, median pixel distance (real: test frames; lower than real = copying)",
         o["nearest_train_distance"], o["nearest_train_distance_real"]),
    ]


def _attribute_rows(results: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(f"Spearman within class: {name} → what the images show", a["spearman_within_class"],
             a["spearman_within_class_real"]) for name, a in results.get("attributes", {}).items()]


# the retrieval baselines' results keys and their columns in the summary table, in order: the training frames
# whose sounds are nearest, and the same within the class a linear probe hears in the sound
RETRIEVAL_BASELINES = {"retrieval_baseline": "retrieval baseline",
                       "retrieval_baseline_heard_class": "retrieval baseline, heard class"}


def _baseline_values(baseline: dict[str, Any] | None, n_classes: int, n_rows: int) -> list[Any]:
    """A retrieval baseline's value in each summary row, "" in each where it was not computed."""
    if not baseline:
        return [""] * n_rows
    return [value for _, value, _ in _overall_rows(baseline["overall"], n_classes) + _attribute_rows(baseline)]


def summary_rows(results: dict[str, Any]) -> list[tuple[Any, ...]]:
    """compute_metrics' overall numbers and attribute following as (metric, generated, one value per
    RETRIEVAL_BASELINES, real) rows, for results.md and the page. A baseline that was not computed is ""."""
    n_classes = len(results["classes"])
    generated = _overall_rows(results["overall"], n_classes) + _attribute_rows(results)
    baselines = [_baseline_values(results.get(key), n_classes, len(generated)) for key in RETRIEVAL_BASELINES]
    return [(name, value, *looked_up, real) for (name, value, real), *looked_up in zip(generated, *baselines)]


def write_wav(path: str | os.PathLike, pcm: np.ndarray, sample_rate: int) -> Path:
    """int16 mono PCM as a WAV file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(pcm, "<i2").tobytes())
    return path


@dataclass
class Entry:
    """One sound on the page. Paths are relative to the page; `hit` marks the class read off the images as
    right (True) or wrong (False)."""

    title: str
    grid: str
    audio: str | None = None
    real_frame: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    hit: bool | None = None


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1280px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; margin-bottom: 12px; }
.figures img { max-width: 100%; max-height: 360px; }
section.sound { border-top: 1px solid #ddd; padding: 10px 0; }
section.sound.hit h3::after { content: " \\2714"; color: #2a7d2a; }
section.sound.miss h3::after { content: " \\2718"; color: #b22; }
section.sound h3 { margin: 0 0 6px; font-size: 15px; }
.media { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
.about { width: 330px; display: flex; flex-direction: column; gap: 8px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #666; }
img.real { width: 128px; height: 128px; image-rendering: pixelated; }
audio { width: 320px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0 12px; margin: 0; font-size: 13px; }
dt { color: #666; }
dd { margin: 0; }
"""


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _src(path: str) -> str:
    """A relative file path as an attribute value: percent-encoded, so any file name stays one literal path."""
    return _text(quote(Path(path).as_posix()))


def _entry_html(entry: Entry) -> str:
    state = {True: " hit", False: " miss", None: ""}[entry.hit]
    about = []  # the sound and what is known of it, left of the images
    if entry.audio:
        about.append(f'<figure><audio controls preload="metadata" src="{_src(entry.audio)}"></audio>'
                     "<figcaption>the sound the images were drawn from</figcaption></figure>")
    if entry.facts:
        about.append("<dl>" + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in entry.facts) + "</dl>")
    media = [f'<div class="about">{"".join(about)}</div>']
    media.append(f'<figure><img src="{_src(entry.grid)}" alt="images generated from {_text(entry.title)}">'
                 "<figcaption>generated</figcaption></figure>")
    if entry.real_frame:
        media.append(f'<figure><img class="real" src="{_src(entry.real_frame)}" alt="real frame of '
                     f'{_text(entry.title)}"><figcaption>real frame</figcaption></figure>')
    return (f'<section class="sound{state}"><h3>{_text(entry.title)}</h3>'
            f'<div class="media">{"".join(media)}</div></section>')


def render_page(title: str, intro: str, entries: Sequence[Entry], summary: Sequence[tuple[Any, ...]] = (),
                figure_files: Sequence[str] = (), skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The page as HTML text: title, intro, the summary table and figures (when given), one section per entry,
    and the inputs that were skipped with their reasons."""
    parts = [f"<h1>{_text(title)}</h1>", f"<p>{_text(intro)}</p>"]
    if summary:
        rows = "".join(f"<tr><td>{_text(name)}</td>" + "".join(f"<td class=number>{_text(format_number(v))}</td>"
                                                               for v in values) + "</tr>"
                       for name, *values in summary)
        columns = ["metric", "generated", *RETRIEVAL_BASELINES.values(), "real frames"]
        parts.append("<table><tr>" + "".join(f"<th>{_text(c)}</th>" for c in columns) + f"</tr>{rows}</table>")
    if figure_files:
        parts.append('<div class="figures">' + "".join(
            f'<figure><img src="{_src(f)}" alt="{_text(Path(f).stem)}"><figcaption>{_text(Path(f).stem)}'
            "</figcaption></figure>" for f in figure_files) + "</div>")
    parts += [_entry_html(e) for e in entries]
    if skipped:
        items = "".join(f"<li>{_text(name)}: {_text(reason)}</li>" for name, reason in skipped)
        parts.append(f"<h2>Skipped</h2><ul>{items}</ul>")
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f'<link rel=icon href="data:,"><title>{_text(title)}</title><style>{STYLE}</style></head>\n'
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_page(out_dir: str | os.PathLike, html_text: str) -> Path:
    """OUT_DIR/report.html, atomically."""
    path = Path(out_dir) / PAGE
    with atomic_path(path) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    return path


def _clip_facts(i: int, data: EvalData, clip: dict[str, Any], classes: list[str], k: int) -> list[tuple[str, str]]:
    facts = [("class", clip["class"]),
             ("read off the images", f"{clip['read_as']} ({round(clip['read_as_share'] * k)} of {k})"),
             ("images read as its class", format_number(clip["accuracy"]))]
    if "shuffled_sound" in clip:
        j = clip["shuffled_sound"]
        facts += [("shuffled: the sound of", f"clip {j} ({classes[data.test_labels[j]]})"),
                  ("shuffled: read as its class", format_number(clip["shuffled_accuracy"]))]
    if data.test_video_ids is not None:
        facts.append(("video", str(data.test_video_ids[i])))
    for name, values in (data.test_attributes or {}).items():
        facts.append((name, format_number(float(values[i]))))
    return facts


def eval_report(out_dir: str | os.PathLike, results: dict[str, Any], data: EvalData, samples: np.ndarray) -> Path:
    """his.eval's page, OUT_DIR/report.html: the summary table and figures of `results` (compute_metrics, with
    the figures written in OUT_DIR), then every test clip: its sound (when data.test_audio is known), its
    samples (n_test, K, 64, 64, 3), real frame, the class read off and its scores (results["per_clip"])."""
    out_dir = Path(out_dir)
    (out_dir / MEDIA_DIR).mkdir(parents=True, exist_ok=True)
    classes, k = results["classes"], samples.shape[1]
    entries = []
    for i, clip in enumerate(results["per_clip"]):
        name = f"{MEDIA_DIR}/clip-{i:04d}"
        figures.save_png(figures.image_grid(samples[i], min(k, GRID_COLUMNS)), out_dir / f"{name}.png")
        figures.save_png(data.test_frames[i], out_dir / f"{name}-real.png")
        if data.test_audio is not None:
            write_wav(out_dir / f"{name}.wav", data.test_audio[i], data.sample_rate)
        entries.append(Entry(f"test clip {i}: {clip['class']}", f"{name}.png",
                             f"{name}.wav" if data.test_audio is not None else None,
                             f"{name}-real.png", _clip_facts(i, data, clip, classes, k),
                             hit=clip["read_as"] == clip["class"]))
    o = results["overall"]
    intro = (f"{o['n_test_clips']} held-out test clips of {len(classes)} classes ({', '.join(classes)}), {k} images "
             "generated from each clip's sound. Play a sound, look at what was drawn from it and at the real frame. "
             "The class is the one our frame classifier (trained on real training frames) reads most often off the "
             "images; 'shuffled sound': the same noise with the sound of a clip of another class.")
    figure_files = [Path(p).name for p in results.get("figures", {}).values()]
    summary = summary_rows(results)
    return write_page(out_dir, render_page("Hear it and see it: evaluation", intro, entries, summary, figure_files))
