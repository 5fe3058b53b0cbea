"""Procedurally drawn player-with-instrument scenes (see his/synth/__init__.py for the mapping from sound to
picture).

A `Look` is everything fixed for one player (a UCF-101 group): skin, clothes, where they sit or stand, the
instrument's colour, the room and its clutter. `make_look` draws it from pools every class shares (rooms
"shared") or, as before, from the class's own room and instrument colour (rooms "per-class"). `paint` draws
the canvas of a look for a pitch register, loudness, beat phase and camera shift: the class shows in the
instrument's shape, how it is held and the pose the instrument needs (`POSES`). Figures are drawn in local
units (origin on the floor between the feet, y up is negative, ~190 units tall standing) and mapped to canvas
pixels by a scale and offset.
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
ROOM_MODES = ("shared", "per-class")
Colour = tuple[int, int, int]

# How the instrument is played decides the pose: seated on a stool (cello, daf, piano, drum kit), cross-legged
# on the floor (sitar, tabla) or standing (flute, violin, guitar, and the dhol hung from the shoulder).
POSES: dict[str, str] = {
    "PlayingCello": "stool",
    "PlayingDaf": "stool",
    "PlayingDhol": "stand",
    "PlayingFlute": "stand",
    "PlayingSitar": "floor",
    "Drumming": "stool",
    "PlayingGuitar": "stand",
    "PlayingPiano": "stool",
    "PlayingTabla": "floor",
    "PlayingViolin": "stand",
}

# Rooms "per-class": each class its instrument colour. Cello, dhol and sitar are saturated hues that no
# background, clutter or clothing has, so a measurement on decoded frames can find the instrument; flute
# (silver), daf (skin) and piano (black) are what those instruments look like; the others are wood and the
# drum kit's green shells.
INSTRUMENT_COLOURS: dict[str, Colour] = {
    "PlayingCello": (176, 78, 18),
    "PlayingDaf": (232, 204, 140),
    "PlayingDhol": (196, 24, 40),
    "PlayingFlute": (214, 218, 232),
    "PlayingSitar": (222, 150, 20),
    "Drumming": (30, 150, 60),
    "PlayingGuitar": (204, 112, 28),
    "PlayingPiano": (24, 22, 26),
    "PlayingTabla": (120, 62, 30),
    "PlayingViolin": (150, 52, 16),
}
# Rooms "shared": every player's instrument has one of these finishes, whatever the instrument. All are
# saturated (> 0.75) at hues at least 25 degrees from the few clothes that come near that saturation, so a
# measurement on decoded frames finds the instrument by its look's colour.
FINISHES: list[Colour] = [(176, 78, 18), (196, 24, 40), (222, 150, 20), (200, 30, 130), (30, 150, 60),
                          (20, 150, 170), (110, 40, 190)]


@dataclass(frozen=True)
class Room:
    wall: Colour
    floor: Colour
    horizon: float  # fraction of the canvas height where the floor starts


ROOMS = {  # rooms "per-class"; rooms "shared" draws wall, floor and horizon from all of them
    "PlayingCello": Room(wall=(70, 80, 104), floor=(118, 104, 86), horizon=0.62),
    "PlayingDaf": Room(wall=(92, 72, 104), floor=(84, 70, 64), horizon=0.66),
    "PlayingDhol": Room(wall=(160, 184, 206), floor=(112, 108, 102), horizon=0.58),
    "PlayingFlute": Room(wall=(148, 176, 160), floor=(86, 124, 74), horizon=0.60),
    "PlayingSitar": Room(wall=(184, 160, 116), floor=(128, 52, 50), horizon=0.64),
    "Drumming": Room(wall=(58, 58, 66), floor=(96, 72, 52), horizon=0.63),
    "PlayingGuitar": Room(wall=(206, 196, 176), floor=(98, 92, 86), horizon=0.59),
    "PlayingPiano": Room(wall=(120, 96, 78), floor=(150, 120, 90), horizon=0.61),
    "PlayingTabla": Room(wall=(172, 138, 150), floor=(140, 96, 62), horizon=0.65),
    "PlayingViolin": Room(wall=(104, 128, 146), floor=(60, 56, 58), horizon=0.60),
}
WALLS: list[Colour] = [room.wall for room in ROOMS.values()]
FLOORS: list[Colour] = [room.floor for room in ROOMS.values()]
HORIZONS = (0.58, 0.66)


def _luma(c: Colour) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# Rooms "shared" keep the pools' hues but all at the pools' mean brightness, so that within a class, as with
# per-class rooms, the frame's brightness tells the loudness whatever room the player is in.
WALL_LUMA = float(np.mean([_luma(c) for c in WALLS]))
FLOOR_LUMA = float(np.mean([_luma(c) for c in FLOORS]))
SKINS: list[Colour] = [(236, 200, 172), (214, 168, 132), (170, 122, 90), (118, 84, 62), (84, 60, 46)]
CLOTHES: list[Colour] = [(40, 60, 120), (30, 90, 70), (90, 50, 110), (200, 200, 204), (36, 36, 40),
                         (70, 110, 150), (120, 120, 90), (240, 236, 226)]
HAIR: list[Colour] = [(20, 16, 14), (60, 40, 26), (110, 90, 60), (150, 150, 150)]


def _at_luma(c: Colour, luma: float) -> Colour:
    return tuple(int(min(255, round(v * luma / max(_luma(c), 1)))) for v in c)  # type: ignore[return-value]


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
    instrument: Colour  # the instrument's main colour
    wall: Colour
    floor: Colour

    @property
    def pose(self) -> str:
        return POSES[self.cls]


def _background(rng: np.random.Generator, wall: Colour, floor: Colour, horizon: int) -> Image.Image:
    w, h = CANVAS
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
    return bg


def make_look(cls: str, rng: np.random.Generator, rooms: str = "shared") -> Look:
    """One player of `cls`. Rooms "shared": room, clutter, clothes, skin, place and instrument colour all come
    from `rng` and pools every class shares (wall and floor at one brightness each), so the same `rng` state
    gives the same look for every class but the instrument and pose. Rooms "per-class": the class's own room
    palette and instrument colour."""
    if rooms not in ROOM_MODES:
        raise ValueError(f"rooms must be one of {', '.join(ROOM_MODES)}, got {rooms!r}")
    w, h = CANVAS
    if rooms == "per-class":
        room = ROOMS[cls]
        wall = _muted(rng, room.wall, 18)
        floor = _muted(rng, room.floor, 14)
        horizon = int(h * room.horizon)
        instrument = INSTRUMENT_COLOURS[cls]
    else:
        wall = _at_luma(_muted(rng, WALLS[rng.integers(len(WALLS))], 18), WALL_LUMA)
        floor = _at_luma(_muted(rng, FLOORS[rng.integers(len(FLOORS))], 14), FLOOR_LUMA)
        horizon = int(h * rng.uniform(*HORIZONS))
        instrument = FINISHES[rng.integers(len(FINISHES))]
    bg = _background(rng, wall, floor, horizon)
    return Look(cls=cls, skin=SKINS[rng.integers(len(SKINS))], shirt=CLOTHES[rng.integers(len(CLOTHES))],
                trousers=CLOTHES[rng.integers(len(CLOTHES))], hair=HAIR[rng.integers(len(HAIR))],
                x=float(w / 2 + rng.uniform(-40, 40)), background=bg, instrument=instrument, wall=wall,
                floor=floor)


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


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(v * factor) for v in colour)  # type: ignore[return-value]


HEAD: Colour = (236, 226, 200)  # drum heads
STICK: Colour = (200, 180, 130)
BRASS: Colour = (212, 176, 60)
STAND: Colour = (90, 90, 90)


def _instrument(pen: Pen, cls: str, colour: Colour, pose_top: float, phase: float,
                playing: bool) -> tuple[tuple[float, float], ...]:
    """Draws the instrument; returns where the left and right hands go."""
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
            pen.ellipse(62, -76, 22, 6, HEAD)
            return (-20, -90), (50, -90)
        pen.box(-40, -122, 40, -80, colour)
        pen.line([(-40 + 10 * i, -122 + 42 * (i % 2)) for i in range(9)], (230, 200, 60), 2)
        for side in (-1, 1):
            pen.ellipse(side * 41, -101, 7, 21, HEAD)
        right = (52, -128 + 16 * phase)
        pen.line([right, (44, -104)], STICK, 2)
        left = (-52, -108 - 16 * phase)
        pen.line([left, (-44, -100)], STICK, 2)
        return left, right
    if cls == "PlayingDaf":
        cx, cy, r = (-6, pose_top + 12, 40) if playing else (50, -56, 34)
        pen.ellipse(cx, cy, r, r, colour, (104, 66, 30), 6)
        for i in range(8):
            a = 2 * math.pi * i / 8
            pen.ellipse(cx + 0.8 * r * math.cos(a), cy + 0.8 * r * math.sin(a), 3, 3, (150, 150, 156))
        if not playing:
            return (-20, -70), (cx - r + 4, cy)
        return (cx - r, cy), (cx + r - 6, cy + 12 + 10 * phase)
    if cls == "PlayingGuitar":  # a figure-eight body across the hips, the neck up to the player's right
        neck = (60, 40, 24)
        if not playing:  # stood on the floor beside the player, held by the neck
            pen.line([(54, -70), (54, -152)], neck, 7)
            pen.box(49, -166, 59, -150, neck)
            pen.ellipse(54, -26, 24, 21, colour, dark, 2)
            pen.ellipse(54, -60, 18, 15, colour, dark, 2)
            pen.ellipse(54, -40, 6, 6, dark)
            return (-20, -90), (54, -128)
        pen.line([(-12, -108), (-84, -150)], neck, 7)
        pen.poly([(-82, -145), (-96, -153), (-92, -161), (-80, -154)], neck)
        pen.ellipse(14, -82, 26, 22, colour, dark, 2)
        pen.ellipse(-8, -104, 19, 16, colour, dark, 2)
        pen.ellipse(2, -94, 7, 7, dark)
        pen.line([(18, -76), (26, -82)], dark, 3)  # bridge
        return (-64, -139), (8 + 5 * phase, -92 + 9 * phase)
    if cls == "PlayingViolin":  # under the chin, the neck out to the player's right, the bow across it
        neck = (34, 24, 18)
        if not playing:  # hanging from one hand, the bow in the other
            pen.ellipse(46, -76, 11, 15, colour, dark, 2)
            pen.ellipse(46, -100, 9, 11, colour, dark, 2)
            pen.line([(46, -110), (46, -136)], neck, 4)
            pen.line([(-26, -86), (-34, -4)], (232, 222, 196), 2)
            return (-26, -86), (46, -134)
        y = pose_top + 10  # just below the chin
        pen.ellipse(-28, y, 17, 11, colour, dark, 2)
        pen.ellipse(-54, y - 2, 13, 9, colour, dark, 2)
        pen.line([(-64, y - 3), (-96, y - 8)], neck, 4)
        pen.ellipse(-99, y - 9, 4, 4, neck)
        frog = (28 + 20 * phase, y + 38 + 6 * phase)
        pen.line([frog, (frog[0] - 104, frog[1] - 62)], (232, 222, 196), 2)
        return (-86, y - 7), frog
    if cls == "PlayingPiano":  # an upright seen from the audience: cabinet, keyboard, the player behind it
        pen.box(-82, -88, 82, -72, _shade(colour, 0.75) if max(colour) > 60 else (50, 46, 50))  # the top board
        pen.box(-80, -62, 80, -8, colour)
        for side in (-1, 1):
            pen.box(side * 76 - 4, -8, side * 76 + 4, 0, dark)
        if not playing:  # the lid closed over the keys, hands on it
            pen.box(-80, -72, 80, -62, _shade(colour, 0.7))
            return (-26, -76), (26, -76)
        pen.box(-80, -72, 80, -62, (240, 238, 230))
        for i in range(23):
            if i % 7 in (0, 1, 3, 4, 5):
                pen.box(-80 + 7 * i + 5, -72, -80 + 7 * i + 9, -66, (20, 20, 22))
        return (-34 + 10 * phase, -70), (32 - 10 * phase, -70)
    if cls == "PlayingTabla":  # a pair of hand drums in front of the seated player
        x = 0 if playing else 76
        bayan, dayan = (x - 28, -22), (x + 28, -30)
        pen.ellipse(bayan[0], bayan[1], 24, 21, _shade(colour, 0.7), dark, 2)
        pen.ellipse(bayan[0], bayan[1] - 18, 19, 5, HEAD)
        pen.ellipse(bayan[0] + 3, bayan[1] - 18, 7, 2, (20, 20, 22))
        pen.poly([(dayan[0] - 13, -54), (dayan[0] + 13, -54), (dayan[0] + 17, -6), (dayan[0] - 17, -6)], colour)
        for i in range(4):
            pen.line([(dayan[0] - 12 + 8 * i, -52), (dayan[0] - 16 + 10.6 * i, -8)], dark, 1.5)
        pen.ellipse(dayan[0], -54, 13, 4, HEAD)
        pen.ellipse(dayan[0], -54, 5, 1.5, (20, 20, 22))
        if not playing:
            return (-24, -24), (24, -24)
        return (bayan[0] + 2, -46 - 8 * phase), (dayan[0] - 2, -66 + 8 * phase)
    # Drumming: a drum kit around the seated player: bass drum, rack tom, snare, floor tom, hi-hat, crash
    pen.line([(-76, -104), (-76, 0)], STAND, 2)
    pen.ellipse(-76, -104, 22, 4, BRASS)
    pen.line([(84, -142), (84, 0)], STAND, 2)
    pen.ellipse(82, -142, 26, 5, BRASS)
    pen.box(44, -66, 78, -10, colour)
    pen.ellipse(61, -66, 17, 5, HEAD)
    pen.box(-60, -70, -20, -58, colour)
    pen.ellipse(-40, -70, 20, 5, HEAD)
    pen.ellipse(0, -36, 35, 35, HEAD, colour, 8)
    pen.ellipse(10, -84, 14, 11, colour, dark, 1)
    pen.ellipse(10, -94, 14, 4, HEAD)
    if not playing:
        return (-36, -78), (36, -78)
    left, right = (-36, -90 - 12 * phase), (24, -104 + 12 * phase)
    pen.line([left, (-44, -72)], STICK, 2.5)
    pen.line([right, (14, -96)], STICK, 2.5)
    return left, right


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
    shoulders = _body(pen, look, look.pose, sway)
    hands = _instrument(pen, look.cls, look.instrument, shoulders[0][1] - 6, phase, playing)
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
