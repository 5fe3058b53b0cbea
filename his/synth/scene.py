"""Procedurally drawn player-with-instrument scenes, one style per class (see his/synth/__init__.py for the
mapping from sound to picture).

A `Look` is everything fixed for one player (a UCF-101 group): skin, clothes, where they stand, the room and
its clutter. `paint` draws the canvas of that look for a pitch register, loudness, beat phase and camera shift.
Figures are drawn in local units (origin on the floor between the feet, y up is negative, ~190 units tall
standing) and mapped to canvas pixels by a scale and offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 320, 240
MARGIN = 8  # the canvas is larger than the frame by this much on each side, for camera shake
CANVAS = (WIDTH + 2 * MARGIN, HEIGHT + 2 * MARGIN)
FLOOR_Y = 222  # canvas row of the floor line under the figure at register 0
RISER_LIFT = 60  # pixels the figure rises from register 0 to register 1
Colour = tuple[int, int, int]

# Cello, dhol and sitar are saturated hues that no background, clutter or clothing has, so a measurement on
# decoded frames can find the instrument; flute (silver) and daf (skin) are what those instruments look like.
INSTRUMENT_COLOURS: dict[str, Colour] = {
    "PlayingCello": (176, 78, 18),
    "PlayingDaf": (232, 204, 140),
    "PlayingDhol": (196, 24, 40),
    "PlayingFlute": (214, 218, 232),
    "PlayingSitar": (222, 150, 20),
}


@dataclass(frozen=True)
class Room:
    wall: Colour
    floor: Colour
    horizon: float  # fraction of the canvas height where the floor starts
    pose: str  # "stand", "stool" or "floor"


ROOMS = {
    "PlayingCello": Room(wall=(70, 80, 104), floor=(118, 104, 86), horizon=0.62, pose="stool"),
    "PlayingDaf": Room(wall=(92, 72, 104), floor=(84, 70, 64), horizon=0.66, pose="stool"),
    "PlayingDhol": Room(wall=(160, 184, 206), floor=(112, 108, 102), horizon=0.58, pose="stand"),
    "PlayingFlute": Room(wall=(148, 176, 160), floor=(86, 124, 74), horizon=0.60, pose="stand"),
    "PlayingSitar": Room(wall=(184, 160, 116), floor=(128, 52, 50), horizon=0.64, pose="floor"),
}
SKINS: list[Colour] = [(236, 200, 172), (214, 168, 132), (170, 122, 90), (118, 84, 62), (84, 60, 46)]
CLOTHES: list[Colour] = [(40, 60, 120), (30, 90, 70), (90, 50, 110), (200, 200, 204), (36, 36, 40),
                         (70, 110, 150), (120, 120, 90), (240, 236, 226)]
HAIR: list[Colour] = [(20, 16, 14), (60, 40, 26), (110, 90, 60), (150, 150, 150)]


def _muted(rng: np.random.Generator, base: Colour, spread: int = 40) -> Colour:
    """A colour near `base` with its saturation kept low (clutter must not look like an instrument)."""
    c = np.clip(np.array(base) + rng.integers(-spread, spread + 1, size=3), 0, 255).astype(float)
    grey = c.mean()
    c = grey + 0.5 * (c - grey)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


@dataclass(frozen=True)
class Look:
    cls: str
    skin: Colour
    shirt: Colour
    trousers: Colour
    hair: Colour
    x: float  # canvas column of the figure
    background: Image.Image  # room with its clutter, canvas size, drawn once


def make_look(cls: str, rng: np.random.Generator) -> Look:
    room = ROOMS[cls]
    w, h = CANVAS
    wall = _muted(rng, room.wall, 18)
    floor = _muted(rng, room.floor, 14)
    horizon = int(h * room.horizon)
    bg = Image.new("RGB", CANVAS, wall)
    d = ImageDraw.Draw(bg)
    d.rectangle([0, horizon, w, h], fill=floor)
    for _ in range(int(rng.integers(3, 8))):  # frames, windows, shelves, buildings
        x0, y0 = rng.integers(0, w - 30), rng.integers(0, horizon - 40)
        bw, bh = rng.integers(20, 90), rng.integers(16, 70)
        d.rectangle([x0, y0, x0 + bw, min(y0 + bh, horizon)], fill=_muted(rng, wall, 70),
                    outline=_muted(rng, (60, 60, 60), 30), width=int(rng.integers(0, 4)))
    for _ in range(int(rng.integers(1, 4))):  # plants, lamps, stands
        x = int(rng.integers(0, w))
        top = int(rng.integers(horizon - 90, horizon - 20))
        d.line([x, top, x, horizon + 10], fill=_muted(rng, (70, 60, 50), 30), width=3)
        r = int(rng.integers(8, 22))
        d.ellipse([x - r, top - r, x + r, top + r], fill=_muted(rng, (80, 110, 80), 40))
    for _ in range(int(rng.integers(0, 3))):  # floor clutter: boxes, cases
        x0 = int(rng.integers(0, w - 40))
        y0 = int(rng.integers(horizon + 4, h - 20))
        d.rectangle([x0, y0, x0 + int(rng.integers(16, 50)), y0 + int(rng.integers(8, 24))],
                    fill=_muted(rng, floor, 50))
    return Look(cls=cls, skin=SKINS[rng.integers(len(SKINS))], shirt=CLOTHES[rng.integers(len(CLOTHES))],
                trousers=CLOTHES[rng.integers(len(CLOTHES))], hair=HAIR[rng.integers(len(HAIR))],
                x=float(w / 2 + rng.uniform(-40, 40)), background=bg)


class Pen:
    """Draws in the figure's local units."""

    def __init__(self, draw: ImageDraw.ImageDraw, x0: float, y0: float, scale: float):
        self.d, self.x0, self.y0, self.s = draw, x0, y0, scale

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.x0 + self.s * x, self.y0 + self.s * y)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Colour, outline: Colour | None = None,
                width: float = 1) -> None:
        (a, b), (c, e) = self.p(cx - rx, cy - ry), self.p(cx + rx, cy + ry)
        self.d.ellipse([a, b, c, e], fill=fill, outline=outline, width=max(1, round(width * self.s)))

    def box(self, x0: float, y0: float, x1: float, y1: float, fill: Colour) -> None:
        self.d.rectangle([*self.p(x0, y0), *self.p(x1, y1)], fill=fill)

    def line(self, points: list[tuple[float, float]], fill: Colour, width: float) -> None:
        self.d.line([self.p(x, y) for x, y in points], fill=fill, width=max(1, round(width * self.s)), joint="curve")

    def poly(self, points: list[tuple[float, float]], fill: Colour) -> None:
        self.d.polygon([self.p(x, y) for x, y in points], fill=fill)


def _body(pen: Pen, look: Look, pose: str, sway: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Legs, torso, head; returns the two shoulder points."""
    if pose == "stand":
        for side in (-1, 1):
            pen.line([(side * 10, -90), (side * 14, 0)], look.trousers, 13)
        top = -150
    elif pose == "stool":
        pen.box(-26, -52, 26, -44, (50, 40, 34))
        pen.line([(-20, -44), (-24, 0)], (50, 40, 34), 4)
        pen.line([(20, -44), (24, 0)], (50, 40, 34), 4)
        for side in (-1, 1):
            pen.line([(side * 8, -56), (side * 30, -56), (side * 32, 0)], look.trousers, 12)
        top = -118
    else:  # cross-legged on the floor
        pen.ellipse(0, -12, 44, 13, look.trousers)
        top = -92
    pen.poly([(-22 + sway, top), (22 + sway, top), (19, top + 64), (-19, top + 64)], look.shirt)
    pen.ellipse(sway * 1.5, top - 20, 15, 17, look.skin)
    pen.ellipse(sway * 1.5, top - 30, 15, 9, look.hair)
    return (-20 + sway, top + 6), (20 + sway, top + 6)


def _instrument(pen: Pen, cls: str, pose_top: float, phase: float, playing: bool) -> tuple[tuple[float, float], ...]:
    """Draws the instrument; returns where the left and right hands go."""
    colour = INSTRUMENT_COLOURS[cls]
    dark = (40, 24, 14)
    if cls == "PlayingCello":
        x = 0 if playing else 52
        pen.line([(x, -20), (x, 0)], (90, 90, 90), 2)
        pen.ellipse(x, -50, 27, 31, colour, dark, 2)
        pen.ellipse(x, -94, 21, 24, colour, dark, 2)
        top = (x - 24, -172) if playing else (x, -182)  # the neck passes beside the player's head
        pen.line([(x, -110), top], dark, 6)
        pen.ellipse(top[0], top[1] - 3, 5, 6, dark)
        if not playing:
            return (-24, -60), (x - 2, -150)
        bow = 22 * phase
        pen.line([(-48 + bow, -66), (44 + bow, -58)], (232, 222, 196), 2)
        return (-19, -152 + 6 * phase), (-48 + bow, -66)
    if cls == "PlayingFlute":
        if not playing:
            pen.line([(42, -150), (46, -60)], colour, 5)
            return (-20, -90), (44, -110)
        pen.line([(-6, pose_top - 22), (88, pose_top - 16)], colour, 5)
        for i in range(5):
            if (i + int(2 * phase + 2)) % 3:
                pen.ellipse(28 + 11 * i, pose_top - 20 + 0.06 * 11 * i, 2, 2, dark)
        return (22, pose_top - 20), (60, pose_top - 18)
    if cls == "PlayingSitar":
        gx, gy, nx, ny = (-38, -26, 70, -176) if playing else (62, -30, 66, -190)
        pen.line([(gx + 6, gy - 12), (nx, ny)], (128, 64, 22), 9)
        pen.ellipse(gx, gy, 29, 25, colour, dark, 2)
        pen.ellipse(nx, ny, 9, 9, colour)
        if not playing:
            return (-20, -40), (60, -120)
        return (-14 + 6 * phase, -48 + 5 * phase), (44, -138)
    if cls == "PlayingDhol":
        if not playing:
            pen.box(40, -76, 84, 0, colour)
            pen.ellipse(62, -76, 22, 6, (236, 226, 200))
            return (-20, -90), (50, -90)
        pen.box(-40, -122, 40, -80, colour)
        pen.line([(-40 + 10 * i, -122 + 42 * (i % 2)) for i in range(9)], (230, 200, 60), 2)
        for side in (-1, 1):
            pen.ellipse(side * 41, -101, 7, 21, (236, 226, 200))
        right = (52, -128 + 16 * phase)
        pen.line([right, (44, -104)], (200, 180, 130), 2)
        left = (-52, -108 - 16 * phase)
        pen.line([left, (-44, -100)], (200, 180, 130), 2)
        return left, right
    # PlayingDaf
    cx, cy, r = (-6, pose_top + 12, 40) if playing else (50, -56, 34)
    pen.ellipse(cx, cy, r, r, colour, (104, 66, 30), 6)
    for i in range(8):
        a = 2 * math.pi * i / 8
        pen.ellipse(cx + 0.8 * r * math.cos(a), cy + 0.8 * r * math.sin(a), 3, 3, (150, 150, 156))
    if not playing:
        return (-20, -70), (cx - r + 4, cy)
    return (cx - r, cy), (cx + r - 6, cy + 12 + 10 * phase)


def paint(look: Look, register: float, loudness: float, phase: float, playing: bool = True,
          sway: float = 0.0) -> Image.Image:
    """The whole canvas. register in [0, 1] lifts the player on a riser and shrinks them; loudness in [0, 1]
    sets the light; phase in [-1, 1] moves the playing hand; sway leans the upper body (local units)."""
    img = look.background.copy()
    d = ImageDraw.Draw(img)
    scale = 1.0 - 0.25 * register
    lift = RISER_LIFT * register
    floor = FLOOR_Y - lift
    if lift > 1:
        d.rectangle([look.x - 70, floor, look.x + 70, FLOOR_Y + 6], fill=(64, 62, 60), outline=(40, 40, 40))
    pen = Pen(d, look.x, floor, scale)
    shoulders = _body(pen, look, ROOMS[look.cls].pose, sway)
    hands = _instrument(pen, look.cls, shoulders[0][1] - 6, phase, playing)
    for shoulder, hand in zip(shoulders, hands):
        pen.line([shoulder, hand], look.shirt, 8)
        pen.ellipse(hand[0], hand[1], 5, 5, look.skin)
    light = 0.4 + 0.6 * loudness
    return img.point([min(255, int(v * light)) for v in range(256)] * 3)


def frame(look: Look, register: float, loudness: float, phase: float, shift: tuple[int, int],
          sway: float = 0.0) -> Image.Image:
    """One 320x240 video frame: the canvas seen by a camera shifted by `shift` pixels (at most MARGIN)."""
    x0, y0 = MARGIN + shift[0], MARGIN + shift[1]
    return paint(look, register, loudness, phase, True, sway).crop((x0, y0, x0 + WIDTH, y0 + HEIGHT))
