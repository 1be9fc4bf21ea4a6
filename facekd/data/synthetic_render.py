"""The procedural face renderer: identities drawn on demand for the demo, the tests and the benchmarks.

Every identity is a fixed random *appearance* (face and jaw proportions, skin, hair colour and
style, ears, placement and shape of eyes, brows, nose and mouth, beard, glasses, moles and
freckles); every sample of it is a new *photo* of that face (pose, expression, illumination,
background, clothing, blur, noise, occlusion). Images are drawn with antialiased OpenCV
primitives at any size from 32 to 112 px, roughly on the ArcFace 112x112 alignment template
(eyes near y = 0.46, mouth near y = 0.82), and are a pure function of
``(seed, identity, sample)``: the same triple always gives the same pixels, on any machine
and in any process, so nothing has to be stored.

Difficulty knobs (keyword arguments of ``SyntheticFaces``; 0 turns a nuisance off, 1 is the
default, larger is harder; ``identity_spread`` works the other way round):

- ``pose`` (1.0): in-plane rotation (+-12 deg), yaw (+-25 deg; features shift with their
  depth), scale (+-8 %) and shift (+-5 % of the size);
- ``expression`` (1.0): smile, open mouth, raised brows, blink, gaze;
- ``light`` (1.0): brightness, contrast, colour cast and a directional gradient;
- ``noise`` (1.0): Gaussian sensor noise (std up to 10 grey levels at 1.0);
- ``blur`` (1.0): Gaussian blur (sigma up to 1.2 px of a 112-px image at 1.0);
- ``occlusion`` (0.5): probability that a photo has an occluder (hand, face mask, bar,
  sunglasses or a cap), in 0..1;
- ``background`` (1.0): background colours, clutter and clothing variation;
- ``identity_spread`` (0.7): how far identities spread from the average face (1.0 = the full
  range of every continuous trait; smaller = more alike = harder). Discrete traits (hair
  style, beard, glasses) are drawn independently of it.

The defaults were tuned with a 4-stage CNN (widths w, 2w, 4w, 8w; 64-d embedding; CosFace
s=32 m=0.35; SGD one-cycle; batch 128; horizontal flips) trained at 32x32 on 400 identities x
24 photos and tested on 3,000 pairs (10 folds) of 150 held-out identities: width 16 after
1,200 steps reached 0.951-0.958 verification accuracy, width 8 after 600 steps 0.915-0.933
(over runs varying ``identity_spread`` 0.7-0.85 and ``occlusion`` 0.3-0.5). So the task is
far from chance, clearly imperfect, and capacity matters: room for distillation.

This module is the renderer only (``SyntheticFaces``, ``Difficulty``, ``render_grid``/``write_grid``);
the datasets built from it live in ``facekd.data.synthetic`` and the command line in
``facekd.data.synthetic_cli`` (``python -m facekd.data.synthetic``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ["Difficulty", "SyntheticFaces", "render_grid", "write_grid", "MIN_SIZE", "MAX_SIZE"]

MIN_SIZE, MAX_SIZE = 32, 112

_SHIFT = 4                      # cv2 sub-pixel bits: coordinates are given in 1/16 px
_ONE = 1 << _SHIFT
_IDENTITY_TAG, _SAMPLE_TAG, _NOISE_TAG = 1, 2, 3


@dataclass(frozen=True)
class Difficulty:
    """Nuisance strengths of the generator (see the module docstring for what each one does)."""

    pose: float = 1.0
    expression: float = 1.0
    light: float = 1.0
    noise: float = 1.0
    blur: float = 1.0
    occlusion: float = 0.5
    background: float = 1.0
    identity_spread: float = 0.7

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"difficulty knob {f.name} must be a finite number >= 0, got {value!r}")
        if self.occlusion > 1:
            raise ValueError(f"difficulty knob occlusion is a probability in [0, 1], got {self.occlusion}")

    @classmethod
    def from_kwargs(cls, **knobs: float) -> "Difficulty":
        """Build from keyword arguments, naming the valid knobs when one is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise TypeError(f"unknown difficulty knob(s) {unknown}; valid knobs: {sorted(names)}")
        return cls(**{k: float(v) for k, v in knobs.items()})


# ----------------------------------------------------------------------------- palettes
_SKIN_LIGHT = np.array([236, 200, 176], np.float32)
_SKIN_DARK = np.array([96, 62, 44], np.float32)
_HAIR = np.array([[20, 16, 14], [60, 38, 24], [110, 72, 40], [200, 160, 90],
                  [150, 60, 30], [150, 150, 150], [225, 225, 220], [40, 40, 60]], np.float32)
_IRIS = np.array([[60, 40, 20], [40, 90, 150], [70, 110, 60], [110, 80, 40], [30, 25, 20]], np.float32)
_HAIR_STYLES = ("short", "long", "fringe", "side_part", "bald", "curly", "bun", "spiky")


@functools.lru_cache(maxsize=None)
def _unit_ramp(size: int) -> np.ndarray:
    """0..1 in ``size`` float32 steps (shared, read-only)."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp.flags.writeable = False
    return ramp


class _Draw:
    """Sub-pixel, antialiased drawing in face coordinates with a pose (roll, yaw, scale, shift).

    Face coordinates: origin at the image centre, unit = image side, y down; ``z`` is depth
    towards the camera, which moves a point sideways when the head turns (yaw).
    """

    def __init__(self, img: np.ndarray, roll: float, yaw: float, scale: float, dx: float, dy: float) -> None:
        self.img = img
        self.size = img.shape[0]
        self.cr, self.sr = math.cos(roll), math.sin(roll)
        self.cy, self.sy = math.cos(yaw), math.sin(yaw)
        self.roll_deg = math.degrees(roll)
        self.scale, self.dx, self.dy = scale, dx, dy
        self.k = self.size * _ONE

    def pt(self, x: float, y: float, z: float = 0.0) -> tuple[int, int]:
        xp = x * self.cy + z * self.sy
        u = self.scale * (self.cr * xp - self.sr * y) + 0.5 + self.dx
        v = self.scale * (self.sr * xp + self.cr * y) + 0.5 + self.dy
        return int(u * self.k), int(v * self.k)

    def px(self, length: float) -> int:
        """A thickness in whole pixels (>= 1) for a length in face units."""
        return max(1, int(round(length * self.scale * self.size)))

    def ellipse(self, x: float, y: float, ax: float, ay: float, color: Any, z: float = 0.0,
                angle: float = 0.0, start: float = 0.0, end: float = 360.0, thickness: float = -1) -> None:
        axes = (max(1, int(ax * self.scale * self.cy * self.k)), max(1, int(ay * self.scale * self.k)))
        th = -1 if thickness < 0 else self.px(thickness)
        cv2.ellipse(self.img, self.pt(x, y, z), axes, angle + self.roll_deg, start, end, color, th,
                    cv2.LINE_AA, _SHIFT)

    def poly(self, pts: Sequence[tuple[float, float]], color: Any, z: float = 0.0,
             closed: bool = True, thickness: float = -1) -> None:
        arr = np.array([self.pt(x, y, z) for x, y in pts], np.int32)
        if thickness < 0:
            cv2.fillPoly(self.img, [arr], color, cv2.LINE_AA, _SHIFT)
        else:
            cv2.polylines(self.img, [arr], closed, color, self.px(thickness), cv2.LINE_AA, _SHIFT)

    def line(self, a: tuple[float, float], b: tuple[float, float], color: Any, thickness: float,
             z: float = 0.0) -> None:
        cv2.line(self.img, self.pt(*a, z), self.pt(*b, z), color, self.px(thickness), cv2.LINE_AA, _SHIFT)

    def circle(self, x: float, y: float, r: float, color: Any, z: float = 0.0, thickness: float = -1) -> None:
        th = -1 if thickness < 0 else self.px(thickness)
        cv2.circle(self.img, self.pt(x, y, z), max(1, int(r * self.scale * self.k)), color, th,
                   cv2.LINE_AA, _SHIFT)


def _col(c: Sequence[float]) -> tuple[float, float, float]:
    """An OpenCV colour tuple, each channel clipped to 0..255."""
    r, g, b = (min(255.0, max(0.0, float(v))) for v in c)
    return r, g, b


@dataclass(frozen=True)
class _Identity:
    """The fixed appearance of one identity (all lengths in face units)."""

    face_w: float
    face_h: float
    face_y: float
    jaw_w: float
    jaw_h: float
    skin: np.ndarray
    hair: np.ndarray
    hair_style: str
    hairline: float
    hair_volume: float
    part_side: float
    ear: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: np.ndarray
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_tilt: float
    brow_arch: float
    nose_len: float
    nose_w: float
    nose_tip: float
    mouth_y: float
    mouth_w: float
    lip: float
    lip_color: np.ndarray
    beard: int               # 0 none, 1 moustache, 2 full beard, 3 goatee
    glasses: bool
    glasses_color: np.ndarray
    blush: float
    moles: np.ndarray        # (k, 3): x, y, radius
    freckles: np.ndarray     # (k, 2)

    @functools.cached_property
    def palette(self) -> dict[str, tuple[float, float, float]]:
        """Drawing colours derived from skin, hair, iris and lips, computed once."""
        skin, hair = self.skin, self.hair
        blush = skin * (1 - self.blush * 0.5) + np.array([200, 60, 60]) * self.blush * 0.5
        named = {"skin": skin, "shade": skin * 0.78, "hair": hair, "beard": hair * 0.9, "brow": hair * 0.8,
                 "blush": blush, "mole": skin * 0.45, "freckle": skin * 0.7, "iris": self.iris,
                 "lid": skin * 0.5, "nose": skin * 0.72, "nostril": skin * 0.4, "lip": self.lip_color,
                 "lip_line": self.lip_color * 0.55, "glasses": self.glasses_color}
        return {k: _col(v) for k, v in named.items()}


def _identity_params(rng: np.random.Generator, spread: float) -> _Identity:
    def c(lo: float, hi: float) -> float:
        """A continuous trait: the average of [lo, hi] moved by spread * (uniform - 0.5) * range."""
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        return mid + spread * half * (2 * rng.random() - 1)

    tone = float(np.clip(0.5 + spread * (rng.random() - 0.5) * 1.2, 0, 1))
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + spread * rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + spread * rng.normal(0, 14, 3)
    k_moles = int(rng.integers(0, 4))
    moles = np.column_stack([rng.uniform(-0.22, 0.22, k_moles), rng.uniform(-0.05, 0.35, k_moles),
                             rng.uniform(0.008, 0.016, k_moles)])
    k_freckles = int(rng.integers(0, 12)) if rng.random() < 0.3 else 0
    freckles = np.column_stack([rng.uniform(-0.2, 0.2, k_freckles), rng.uniform(0.1, 0.25, k_freckles)])
    beard_p = rng.random()
    beard = 0 if beard_p < 0.6 else int(rng.integers(1, 4))
    return _Identity(
        face_w=c(0.33, 0.42), face_h=c(0.46, 0.56), face_y=c(0.03, 0.09), jaw_w=c(0.6, 0.95),
        jaw_h=c(0.55, 0.8), skin=skin, hair=hair,
        hair_style=_HAIR_STYLES[int(rng.integers(len(_HAIR_STYLES)))],
        hairline=c(-0.36, -0.22), hair_volume=c(1.0, 1.2), part_side=float(rng.choice([-1.0, 1.0])),
        ear=c(0.035, 0.07),
        eye_dx=c(0.13, 0.19), eye_y=c(-0.07, 0.0), eye_w=c(0.045, 0.075), eye_h=c(0.018, 0.034),
        eye_tilt=c(-12, 12), iris=_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 10, 3),
        brow_gap=c(0.045, 0.085), brow_len=c(0.05, 0.09), brow_thick=c(0.010, 0.028),
        brow_tilt=c(-0.025, 0.025), brow_arch=c(0.0, 0.025),
        nose_len=c(0.12, 0.2), nose_w=c(0.025, 0.055), nose_tip=c(0.01, 0.03),
        mouth_y=c(0.26, 0.34), mouth_w=c(0.07, 0.13), lip=c(0.008, 0.024),
        lip_color=skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 10, 3),
        beard=beard, glasses=bool(rng.random() < 0.2),
        glasses_color=np.array([20, 20, 20], np.float32) + rng.uniform(0, 120, 3),
        blush=c(0.0, 0.25), moles=moles, freckles=freckles)


class SyntheticFaces:
    """Renders ``render(identity, sample) -> uint8 HxWx3 RGB`` deterministically from
    ``(seed, identity, sample)`` at ``size`` px (32..112) with the given difficulty knobs."""

    def __init__(self, seed: int = 0, size: int = 112, **difficulty: float) -> None:
        if not MIN_SIZE <= int(size) <= MAX_SIZE:
            raise ValueError(f"synthetic faces are drawn at {MIN_SIZE}..{MAX_SIZE} px, got size={size}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.size = int(size)
        self.difficulty = Difficulty.from_kwargs(**difficulty)
        self._cache: dict[int, _Identity] = {}
        self._noise_bank: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"SyntheticFaces(seed={self.seed}, size={self.size}, {self.difficulty})"

    def identity(self, identity: int) -> _Identity:
        """The fixed appearance parameters of ``identity`` (cached)."""
        params = self._cache.get(identity)
        if params is None:
            if identity < 0:
                raise ValueError(f"identity ids are >= 0, got {identity}")
            rng = np.random.default_rng([self.seed, _IDENTITY_TAG, int(identity)])
            params = _identity_params(rng, self.difficulty.identity_spread)
            if len(self._cache) >= 65536:
                self._cache.clear()
            self._cache[identity] = params
        return params

    def render(self, identity: int, sample: int) -> np.ndarray:
        """One photo (uint8 HxWx3 RGB) of ``identity``; ``sample`` picks pose, light and the rest."""
        identity, sample = int(identity), int(sample)
        if sample < 0:
            raise ValueError(f"sample ids are >= 0, got {sample}")
        face = self.identity(identity)
        rng = np.random.default_rng([self.seed, _SAMPLE_TAG, identity, sample])
        d = self.difficulty
        s = self.size
        img = self._background(rng, d.background)
        u = rng.random(8) * 2 - 1
        pen = _Draw(img, roll=math.radians(12) * d.pose * u[0], yaw=math.radians(25) * d.pose * u[1],
                    scale=1 + 0.08 * d.pose * u[2], dx=0.05 * d.pose * u[3], dy=0.05 * d.pose * u[4])
        self._draw_face(pen, face, rng, d)
        if rng.random() < d.occlusion:
            self._occlude(pen, face, rng)
        return self._photo_effects(img, rng, d, s)

    # -- drawing steps
    def _background(self, rng: np.random.Generator, amount: float) -> np.ndarray:
        s = self.size
        base = rng.uniform(40, 215, 3) * min(1.0, amount) + 128 * (1 - min(1.0, amount))
        other = base + rng.normal(0, 40 * amount, 3)
        ends = np.clip(np.stack([base, other]), 0, 255).astype(np.uint8)
        ends = ends.reshape(2, 1, 3) if rng.random() < 0.5 else ends.reshape(1, 2, 3)
        img = cv2.resize(ends, (s, s), interpolation=cv2.INTER_LINEAR)  # a linear colour ramp
        for _ in range(int(rng.integers(0, 4) * min(1.0, amount))):
            cv2.ellipse(img, (int(rng.uniform(0, s) * _ONE), int(rng.uniform(0, s) * _ONE)),
                        (int(rng.uniform(0.05, 0.3) * s * _ONE), int(rng.uniform(0.05, 0.3) * s * _ONE)),
                        float(rng.uniform(0, 180)), 0, 360, _col(rng.uniform(20, 235, 3)), -1,
                        cv2.LINE_AA, _SHIFT)
        return img

    def _draw_face(self, pen: _Draw, f: _Identity, rng: np.random.Generator, d: Difficulty) -> None:
        e = rng.random(8)
        ex = d.expression
        smile = ex * (e[0] * 2 - 1) * 0.02
        mouth_open = ex * max(0.0, e[1] - 0.6) * 0.05
        brow_up = ex * (e[2] - 0.3) * 0.02
        blink = 1.0 - min(0.85, ex * max(0.0, e[3] - 0.85) * 5.5)
        gaze = ex * (e[4] * 2 - 1) * 0.3
        pal = f.palette
        skin_c, shade_c, hair_c = pal["skin"], pal["shade"], pal["hair"]
        fy, fw, fh = f.face_y, f.face_w, f.face_h
        cloth = rng.uniform(20, 235, 3) if d.background > 0 else np.full(3, 90.0)

        # shoulders, neck, hair behind the head, ears
        pen.ellipse(0, fy + fh + 0.28, fw * 1.9, 0.3, _col(cloth), z=-0.2)
        pen.poly([(-fw * 0.45, fy + 0.2), (fw * 0.45, fy + 0.2), (fw * 0.5, fy + fh + 0.1),
                  (-fw * 0.5, fy + fh + 0.1)], shade_c, z=-0.15)
        if f.hair_style in ("long", "curly"):
            pen.ellipse(0, fy + 0.05, fw * 1.22 * f.hair_volume, fh * 1.1, hair_c, z=-0.2)
        for side in (-1, 1):
            pen.ellipse(side * fw * 0.97, fy + 0.02, f.ear, f.ear * 1.6, skin_c, z=-0.12)
            pen.ellipse(side * fw * 0.99, fy + 0.02, f.ear * 0.5, f.ear * 1.0, shade_c, z=-0.12)
        # head: skull ellipse + jaw ellipse
        pen.ellipse(0, fy, fw, fh * 0.8, skin_c)
        pen.ellipse(0, fy + fh * (1 - f.jaw_h) * 0.7 + 0.04, fw * f.jaw_w, fh * f.jaw_h + 0.04, skin_c)
        # cheeks, moles, freckles
        if f.blush > 0.08:
            blush = pal["blush"]
            for side in (-1, 1):
                pen.ellipse(side * fw * 0.55, f.eye_y + 0.13, fw * 0.2, fw * 0.13, blush, z=0.04)
        for x, y, r in f.moles:
            pen.circle(x, y, r, pal["mole"], z=0.05)
        for x, y in f.freckles:
            pen.circle(x, y, 0.005, pal["freckle"], z=0.05)
        # beard under the features
        beard_c = pal["beard"]
        if f.beard == 2:
            pen.ellipse(0, f.mouth_y + 0.02, fw * f.jaw_w * 0.92, fh * 0.32, beard_c, z=0.05,
                        start=0, end=180)
        elif f.beard == 3:
            pen.ellipse(0, f.mouth_y + 0.07, f.mouth_w * 0.7, 0.05, beard_c, z=0.06)
        # eyes
        for side in (-1, 1):
            cx, cy = side * f.eye_dx, f.eye_y
            pen.ellipse(cx, cy, f.eye_w, f.eye_h * blink, (238, 236, 232), z=0.04, angle=side * f.eye_tilt)
            if blink > 0.4:
                ir = min(f.eye_h * blink, f.eye_w * 0.55)
                pen.circle(cx + gaze * f.eye_w * 0.5, cy, ir, pal["iris"], z=0.045)
                pen.circle(cx + gaze * f.eye_w * 0.5, cy, ir * 0.45, (10, 10, 10), z=0.05)
            pen.ellipse(cx, cy, f.eye_w * 1.05, f.eye_h * blink * 1.05, pal["lid"], z=0.05,
                        angle=side * f.eye_tilt, start=180, end=360, thickness=0.008)
            # brows
            by = cy - f.brow_gap - brow_up
            inner, outer = cx - side * f.brow_len * 0.7, cx + side * f.brow_len
            pen.poly([(inner, by + f.brow_tilt), (cx + side * f.brow_len * 0.15, by - f.brow_arch),
                      (outer, by - f.brow_tilt * 0.5)], pal["brow"], z=0.05, closed=False,
                     thickness=f.brow_thick)
        # nose
        ny0, ny1 = f.eye_y + 0.02, f.eye_y + 0.02 + f.nose_len
        pen.poly([(-f.nose_w * 0.2, ny0), (-f.nose_w * 0.35, ny1 - f.nose_tip), (-f.nose_w, ny1),
                  (0, ny1 + f.nose_tip), (f.nose_w, ny1), (f.nose_w * 0.35, ny1 - f.nose_tip)],
                 pal["nose"], z=0.12, closed=False, thickness=0.01)
        for side in (-1, 1):
            pen.circle(side * f.nose_w * 0.45, ny1 + f.nose_tip * 0.4, f.nose_w * 0.18, pal["nostril"], z=0.1)
        # moustache, mouth
        my = f.mouth_y
        if f.beard in (1, 2):
            pen.poly([(-f.mouth_w * 1.1, my - 0.0), (0, my - 0.04), (f.mouth_w * 1.1, my)], beard_c,
                     z=0.08, closed=False, thickness=0.022)
        lip_c = pal["lip"]
        pen.ellipse(0, my, f.mouth_w, f.lip + mouth_open, lip_c, z=0.07)
        if mouth_open > 0.004:
            pen.ellipse(0, my, f.mouth_w * 0.8, mouth_open * 0.8, (60, 20, 25), z=0.075)
        pen.ellipse(0, my - smile * 2, f.mouth_w * 0.95, abs(smile) + 0.004, pal["lip_line"],
                    z=0.075, start=0 if smile >= 0 else 180, end=180 if smile >= 0 else 360, thickness=0.006)
        # hair on top
        self._hair(pen, f, hair_c)
        if f.glasses and rng.random() < 0.85:
            gc = pal["glasses"]
            for side in (-1, 1):
                pen.circle(side * f.eye_dx, f.eye_y, f.eye_w * 1.45, gc, z=0.08, thickness=0.012)
            pen.line((-f.eye_dx + f.eye_w * 1.45, f.eye_y), (f.eye_dx - f.eye_w * 1.45, f.eye_y), gc,
                     0.01, z=0.09)

    @staticmethod
    def _hair(pen: _Draw, f: _Identity, hair_c: tuple[float, float, float]) -> None:
        fy, fw, fh = f.face_y, f.face_w, f.face_h
        top = fy - fh * 0.8
        line = f.hairline
        style = f.hair_style
        if style == "bald":
            for side in (-1, 1):
                pen.ellipse(side * fw * 0.9, fy - 0.05, fw * 0.14, fh * 0.3, hair_c, z=-0.05)
            return
        vol = f.hair_volume
        # cap from the hairline up, sideburns down to the temples
        pen.ellipse(0, line + 0.03, fw * 1.04 * vol, line + 0.03 - top + 0.08 * vol, hair_c, z=-0.02,
                    start=180, end=360)
        for side in (-1, 1):
            pen.poly([(side * fw * 1.04 * vol, line + 0.03), (side * fw * 0.82, line + 0.03),
                      (side * fw * 0.86, fy - 0.12), (side * fw * 1.0, fy - 0.08)], hair_c, z=-0.01)
        pen.poly([(-fw * 0.95, line + 0.04), (-fw * 0.6, line + 0.005), (0, line - 0.01),
                  (fw * 0.6, line + 0.005), (fw * 0.95, line + 0.04)], hair_c, z=0.0)
        if style == "fringe":
            pen.poly([(-fw * 0.85, line), (fw * 0.85, line), (fw * 0.7, line + 0.1),
                      (-fw * 0.7, line + 0.1)], hair_c, z=0.02)
        elif style == "side_part":
            p = f.part_side
            pen.poly([(p * fw * 0.3, line - 0.02), (-p * fw * 0.9, line + 0.12), (-p * fw * 1.0, line)],
                     hair_c, z=0.02)
        elif style == "curly":
            for k in range(9):
                a = math.pi * (k / 8.0)
                pen.circle(-math.cos(a) * fw * 1.02 * vol, line + 0.03 - math.sin(a) * (line + 0.03 - top),
                           0.055, hair_c, z=-0.02)
        elif style == "bun":
            pen.circle(0, top - 0.06, 0.09, hair_c, z=-0.05)
        elif style == "spiky":
            for k in range(-3, 4):
                x = k * fw * 0.28
                pen.poly([(x - 0.05, top + 0.06), (x + 0.02, top - 0.1), (x + 0.06, top + 0.06)], hair_c, z=-0.02)
        elif style == "long":
            for side in (-1, 1):
                pen.ellipse(side * fw * 1.0, fy + 0.05, fw * 0.18, fh * 0.75, hair_c, z=-0.02)

    def _occlude(self, pen: _Draw, f: _Identity, rng: np.random.Generator) -> None:
        kind = int(rng.integers(5))
        color = _col(rng.uniform(10, 245, 3))
        if kind == 0:    # hand / round object
            x = rng.uniform(-0.3, 0.3)
            pen.ellipse(x, rng.uniform(0.0, 0.35), rng.uniform(0.08, 0.16), rng.uniform(0.1, 0.2),
                        _col(f.skin * rng.uniform(0.8, 1.1)) if rng.random() < 0.5 else color, z=0.3,
                        angle=float(rng.uniform(0, 180)))
        elif kind == 1:  # face mask
            my = f.mouth_y
            pen.poly([(-f.face_w * 0.95, my - 0.13), (f.face_w * 0.95, my - 0.13),
                      (f.face_w * 0.7, my + 0.12), (-f.face_w * 0.7, my + 0.12)], color, z=0.12)
        elif kind == 2:  # bar across the image
            y = rng.uniform(-0.3, 0.4)
            pen.poly([(-0.6, y), (0.6, y + rng.uniform(-0.1, 0.1)), (0.6, y + 0.08), (-0.6, y + 0.08)],
                     color, z=0.3)
        elif kind == 3:  # sunglasses
            for side in (-1, 1):
                pen.ellipse(side * f.eye_dx, f.eye_y, f.eye_w * 1.5, f.eye_h * 2.4 + 0.01, (15, 15, 20), z=0.1)
            pen.line((-f.eye_dx, f.eye_y), (f.eye_dx, f.eye_y), (15, 15, 20), 0.012, z=0.1)
        else:            # cap
            top = f.face_y - f.face_h * 0.8
            pen.ellipse(0, top + 0.16, f.face_w * 1.15, f.face_h * 0.55, color, z=0.0, start=180, end=360)
            pen.poly([(-f.face_w * 1.2, top + 0.16), (f.face_w * 1.2, top + 0.16), (f.face_w * 1.0, top + 0.22),
                      (-f.face_w * 1.0, top + 0.22)], _col(np.asarray(color) * 0.7), z=0.05)

    def _noise(self, rng: np.random.Generator) -> np.ndarray:
        """Unit Gaussian noise (s x s x 3): a random window of a per-generator bank, random sign."""
        s = self.size
        if self._noise_bank is None:
            bank_rng = np.random.default_rng([self.seed, _NOISE_TAG, s])
            self._noise_bank = bank_rng.standard_normal((2 * s, 2 * s, 3), dtype=np.float32)
        oy, ox = rng.integers(0, s + 1, 2)
        window = self._noise_bank[oy:oy + s, ox:ox + s]
        return window if rng.random() < 0.5 else -window

    def _photo_effects(self, img: np.ndarray, rng: np.random.Generator, d: Difficulty, s: int) -> np.ndarray:
        u = rng.random(10)
        sigma = d.blur * u[0] * 1.2 * s / 112.0 + 0.25 * s / 112.0
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        light = d.light
        gain = 1 + light * 0.3 * (2 * u[1] - 1)
        contrast = 1 + light * 0.3 * (2 * u[2] - 1)
        cast = 1 + light * 0.12 * (2 * u[3:6] - 1)
        mean = 118.0
        # ((x - mean) * contrast + mean) * gain * cast, as one per-channel affine map
        scale = (contrast * gain * cast).astype(np.float32)
        offset = (mean * (1 - contrast) * gain * cast).astype(np.float32)
        x = img.astype(np.float32)
        x *= scale
        x += offset
        if light > 0:
            angle = u[6] * 2 * math.pi
            t = _unit_ramp(s) - np.float32(0.5)
            shade = np.float32(1) + np.float32(light * 0.6 * u[7]) * (
                np.float32(math.cos(angle)) * t[None, :] + np.float32(math.sin(angle)) * t[:, None])
            x *= shade[..., None]
        if d.noise > 0:
            x += self._noise(rng) * np.float32(d.noise * 10 * u[8])
        np.clip(x, 0, 255, out=x)
        return x.astype(np.uint8)


# ----------------------------------------------------------------------------- pictures
def render_grid(identities: int = 8, samples: int = 8, size: int = 112, seed: int = 0,
                first_identity: int = 0, **difficulty: float) -> np.ndarray:
    """An RGB image: one row per identity, one column per sample, 2-px gaps."""
    faces = SyntheticFaces(seed=seed, size=size, **difficulty)
    gap = 2
    grid = np.full((identities * (size + gap) + gap, samples * (size + gap) + gap, 3), 255, np.uint8)
    for r in range(identities):
        for c in range(samples):
            y, x = gap + r * (size + gap), gap + c * (size + gap)
            grid[y:y + size, x:x + size] = faces.render(first_identity + r, c)
    return grid


def write_grid(path: str | PathLike[str], identities: int = 8, samples: int = 8, size: int = 112,
               seed: int = 0, **difficulty: float) -> Path:
    """Save ``render_grid(...)`` as a PNG at ``path`` (rows = identities, columns = samples)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = render_grid(identities, samples, size, seed, **difficulty)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: OpenCV could not write the PNG")
    return path
