"""Synthetic face clips: drawn faces whose expression evolves over time.

Each clip draws one randomized identity (head shape, skin tone, hair, eye/brow/mouth geometry,
background, lighting) under a slowly moving head pose (yaw, roll, translation, scale). The
expression is a small parameter vector (mouth curvature/opening/width, brow raise and tilt, eye
openness, nose wrinkle, lip asymmetry) that goes neutral -> apex -> partial release for one of
the 7 basic emotions in DFEW order. The classes differ where real ones do:

  happy     corners up, open smile with teeth, narrowed eyes, cheek folds
  sad       corners down, brows' inner ends raised, lowered lids
  neutral   resting face
  angry     brows low and drawn together (inner ends down), narrowed eyes, pressed lips
  surprise  brows high, eyes wide, round open mouth
  disgust   nose wrinkle, raised one-sided upper lip, lowered brows, squint
  fear      brows raised with inner ends up, eyes wide, mouth stretched sideways and open

Valence/arousal per clip follow the circumplex position of the emotion, scaled by its intensity.
Everything is drawn with anti-aliased OpenCV primitives from a numpy Generator: the same seed
gives the same pixels.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import cv2
import numpy as np

EMOTIONS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
PARAMS = ("mouth_curve", "mouth_open", "mouth_width", "brow_raise", "brow_tilt", "eye_open",
          "nose_wrinkle", "lip_asym")
_P = {name: i for i, name in enumerate(PARAMS)}

NEUTRAL = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0], np.float32)
APEX = {
    #                mouth_curve open  width brow_raise tilt  eye_open wrinkle asym
    "happy":    np.array([1.0, 0.45, 1.25, 0.15, 0.0, 0.6, 0.0, 0.0], np.float32),
    "sad":      np.array([-1.0, 0.0, 0.85, -0.15, 1.2, 0.55, 0.0, 0.0], np.float32),
    "neutral":  NEUTRAL.copy(),
    "angry":    np.array([-0.25, 0.0, 0.75, -0.9, -1.2, 0.7, 0.2, 0.0], np.float32),
    "surprise": np.array([0.0, 1.1, 0.55, 1.1, 0.0, 1.55, 0.0, 0.0], np.float32),
    "disgust":  np.array([-0.5, 0.25, 0.95, -0.4, -0.2, 0.5, 1.0, 1.2], np.float32),
    "fear":     np.array([-0.45, 0.45, 1.4, 0.8, 1.1, 1.4, 0.0, 0.0], np.float32),
}
# Circumplex positions (valence, arousal) in [-1, 1].
VALENCE_AROUSAL = {
    "happy": (0.8, 0.5), "sad": (-0.7, -0.4), "neutral": (0.0, 0.0), "angry": (-0.6, 0.7),
    "surprise": (0.3, 0.8), "disgust": (-0.65, 0.3), "fear": (-0.7, 0.65),
}


def emotion_index(emotion) -> int:
  if isinstance(emotion, str):
    if emotion not in EMOTIONS:
      raise ValueError(f"unknown emotion {emotion!r}; known: {', '.join(EMOTIONS)}")
    return EMOTIONS.index(emotion)
  if not 0 <= int(emotion) < len(EMOTIONS):
    raise ValueError(f"emotion index {emotion} not in 0..{len(EMOTIONS) - 1} ({EMOTIONS})")
  return int(emotion)


def apex_expression(emotion, intensity: float = 1.0) -> np.ndarray:
  """The expression vector of `emotion` at `intensity` (0 = neutral, 1 = full apex)."""
  apex = APEX[EMOTIONS[emotion_index(emotion)]]
  return (NEUTRAL + intensity * (apex - NEUTRAL)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Randomized appearance and motion.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Identity:
  """Per-clip appearance; all lengths relative to the frame size."""
  face_w: float
  face_h: float
  center: tuple[float, float]
  skin: np.ndarray
  hair: np.ndarray
  hair_style: int          # 0 bald, 1 short, 2 long
  eye_dx: float
  eye_y: float
  eye_w: float
  iris: np.ndarray
  brow_thickness: float
  brow_color: np.ndarray
  mouth_y: float
  mouth_w: float
  lips: np.ndarray
  shirt: np.ndarray
  bg_a: np.ndarray
  bg_b: np.ndarray
  bg_angle: float
  bg_blobs: list
  light_dir: float
  light_strength: float
  brightness: float
  noise: float
  yaw_amp: float
  roll_amp: float
  drift: float
  pose_freq: float
  pose_phase: tuple[float, float, float]
  talk: float
  turn: float = 0.15       # largest resting yaw (radians)
  tilt: float = 0.08       # largest resting roll (radians)
  # Shading of the head as a lit ellipsoid (0 = flat colour) and the light's direction
  # (x right, y down, z towards the camera), and skin texture: the contrast of a fixed,
  # per-identity field of smooth blotches (0 = none).
  shade: float = 0.0
  shade_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
  texture: float = 0.0
  texture_seed: int = 0


def _color(rng, lo, hi) -> np.ndarray:
  return rng.uniform(lo, hi).astype(np.float32)


VARIATIONS = ("full", "studio", "closeup", "aligned")


def sample_identity(rng: np.random.Generator, variation: str = "full") -> Identity:
  """A random appearance and motion style.

  `variation="full"` draws cluttered backgrounds, strong lighting and head motion; "studio" keeps
  the identity (skin, hair, face geometry, eye colour, clothes) as varied but films it the way
  lab datasets such as CREMA-D or RAVDESS are filmed: plain backdrop, even light, a larger face
  and little head motion, so that expression is the dominant change between clips. "closeup"
  is the aligned face crop that face-video datasets ship (DFEW, FERV39k, MAFW: the face fills
  the frame, forehead to chin), with the head shaded as a lit solid and textured skin, so that
  every patch of the face has structure of its own rather than one flat colour. "aligned" is a
  landmark-aligned crop: "closeup" with the face geometry (outline, eye, brow and mouth positions)
  the same for everyone and still, untextured skin, so that people differ in colours and hair and
  the expression is the only change of shape between clips.
  """
  if variation not in VARIATIONS:
    raise ValueError(f"variation must be one of {VARIATIONS}, got {variation!r}")
  if variation == "closeup":
    return _closeup_identity(rng)
  if variation == "aligned":
    return _aligned_identity(rng)
  studio = variation == "studio"
  tone = rng.uniform(0, 1)
  skin = np.array([255 - 120 * tone, 215 - 125 * tone, 185 - 120 * tone], np.float32)
  skin = np.clip(skin + rng.normal(0, 8, 3), 30, 255).astype(np.float32)
  hair_base = [np.array(c, np.float32) for c in
               ([30, 22, 18], [90, 60, 35], [200, 170, 110], [150, 150, 150], [120, 40, 20])]
  hair = np.clip(hair_base[rng.integers(len(hair_base))] + rng.normal(0, 10, 3), 0, 255)
  face_w = rng.uniform(0.3, 0.33) if studio else rng.uniform(0.22, 0.27)
  jitter_x, jitter_y = (0.02, 0.02) if studio else (0.05, 0.04)
  # Keyword arguments are evaluated in order: the "full" draws keep their historical sequence,
  # so a seed gives the same clip as before "studio" existed.
  return Identity(
      face_w=face_w, face_h=face_w * rng.uniform(1.2, 1.4),
      center=(0.5 + rng.uniform(-jitter_x, jitter_x),
              (0.45 if studio else 0.47) + rng.uniform(-jitter_y, jitter_y)),
      skin=skin, hair=hair.astype(np.float32), hair_style=int(rng.integers(3)),
      eye_dx=rng.uniform(0.36, 0.44), eye_y=rng.uniform(-0.2, -0.1), eye_w=rng.uniform(0.19, 0.24),
      iris=_color(rng, [20, 20, 10], [120, 140, 110]),
      brow_thickness=rng.uniform(0.05, 0.09),
      brow_color=np.clip(hair * rng.uniform(0.6, 1.0), 0, 255).astype(np.float32),
      mouth_y=rng.uniform(0.5, 0.6), mouth_w=rng.uniform(0.3, 0.38),
      lips=np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 6, 3), 0, 255
                   ).astype(np.float32),
      shirt=_color(rng, [0, 0, 0], [255, 255, 255]),
      bg_a=(backdrop := _color(rng, [70, 70, 70], [200, 200, 200])) if studio
      else _color(rng, [0, 0, 0], [255, 255, 255]),
      bg_b=np.clip(backdrop + rng.normal(0, 12, 3), 0, 255).astype(np.float32) if studio
      else _color(rng, [0, 0, 0], [255, 255, 255]),
      bg_angle=rng.uniform(0, np.pi),
      bg_blobs=[] if studio else [
          (rng.uniform(0, 1, 2), rng.uniform(0.05, 0.25, 2), rng.uniform(0, 180),
           _color(rng, [0, 0, 0], [255, 255, 255])) for _ in range(int(rng.integers(2, 6)))],
      light_dir=rng.uniform(0, 2 * np.pi),
      light_strength=rng.uniform(0.0, 0.08 if studio else 0.35),
      brightness=rng.uniform(0.95, 1.05) if studio else rng.uniform(0.8, 1.15),
      noise=rng.uniform(0.5, 1.0) if studio else rng.uniform(0.5, 2.0),
      yaw_amp=rng.uniform(0.0, 0.08) if studio else rng.uniform(0.05, 0.35),
      roll_amp=rng.uniform(0.0, 0.04) if studio else rng.uniform(0.0, 0.2),
      drift=rng.uniform(0.0, 0.01) if studio else rng.uniform(0.0, 0.04),
      pose_freq=rng.uniform(0.3, 1.2),
      pose_phase=tuple(rng.uniform(0, 2 * np.pi, 3)),
      talk=float(rng.uniform(0, 0.05 if studio else 0.12)),
      turn=0.04 if studio else 0.15,
      tilt=0.02 if studio else 0.08,
  )


def _closeup_identity(rng: np.random.Generator) -> Identity:
  """An aligned face crop: the "studio" identity, zoomed so that the face fills the frame."""
  ident = sample_identity(rng, "studio")
  light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.2), 1.0])
  return dataclasses.replace(
      ident, face_w=(w := rng.uniform(0.40, 0.44)), face_h=w * rng.uniform(1.15, 1.3),
      center=(0.5 + rng.uniform(-0.015, 0.015), 0.53 + rng.uniform(-0.015, 0.015)),
      shade=float(rng.uniform(0.25, 0.45)),
      shade_dir=tuple(float(v) for v in light / np.linalg.norm(light)),
      texture=float(rng.uniform(0.04, 0.08)), texture_seed=int(rng.integers(2**31)))


def _aligned_identity(rng: np.random.Generator) -> Identity:
  """A landmark-aligned face crop: the "closeup" identity with the face geometry registered."""
  ident = _closeup_identity(rng)
  return dataclasses.replace(
      ident, face_w=0.42, face_h=0.42 * 1.22, center=(0.5, 0.53), eye_dx=0.4, eye_y=-0.15,
      eye_w=0.21, mouth_y=0.55, mouth_w=0.34, brow_thickness=0.07, texture=0.0,
      yaw_amp=0.0, roll_amp=0.0, drift=0.0, turn=0.0, tilt=0.0, talk=0.0)


def pose_track(identity: Identity, num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """(T, 5) per-frame yaw, roll (radians), dx, dy (frame fractions), scale."""
  t = np.linspace(0, 1, num_frames) * 2 * np.pi * identity.pose_freq
  p = identity.pose_phase
  yaw0 = rng.uniform(-identity.turn, identity.turn)
  roll0 = rng.uniform(-identity.tilt, identity.tilt)
  yaw = yaw0 + identity.yaw_amp * np.sin(t + p[0])
  roll = roll0 + identity.roll_amp * np.sin(0.7 * t + p[1])
  dx = identity.drift * np.sin(0.5 * t + p[2])
  dy = identity.drift * 0.5 * np.cos(0.6 * t + p[0])
  scale = 1.0 + 0.04 * np.sin(0.4 * t + p[1])
  return np.stack([yaw, roll, dx, dy, scale], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Expression schedules.
# ------------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def expression_envelope(num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """(T,) weight 0 -> 1 -> partial release: onset, apex hold, release to 40-75 %."""
  t = np.linspace(0, 1, num_frames)
  onset = rng.uniform(0.0, 0.2)
  apex = onset + rng.uniform(0.2, 0.35)
  hold = apex + rng.uniform(0.1, 0.25)
  release = rng.uniform(0.4, 0.75)
  rise = _smoothstep((t - onset) / max(apex - onset, 1e-6))
  fall = 1 - (1 - release) * _smoothstep((t - hold) / max(1 - hold, 1e-6))
  return (rise * np.where(t > hold, fall, 1.0)).astype(np.float32)


def expression_schedule(emotion, num_frames: int, rng: np.random.Generator,
                        intensity: Optional[float] = None) -> np.ndarray:
  """(T, len(PARAMS)) expression per frame for one emotion: neutral -> apex -> partial release."""
  intensity = rng.uniform(0.7, 1.0) if intensity is None else intensity
  env = expression_envelope(num_frames, rng)
  target = apex_expression(emotion, intensity) - NEUTRAL
  sched = NEUTRAL[None] + env[:, None] * target[None]
  sched += rng.normal(0, 0.02, sched.shape).astype(np.float32)
  return sched.astype(np.float32)


def segment_schedule(segments: Sequence[tuple], rng: np.random.Generator,
                     transition: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Expression schedule made of consecutive segments, e.g. [("happy", 16), ("sad", 16), ...].

  Each segment is (emotion, num_frames) or (emotion, num_frames, intensity); the expression
  eases from the previous segment's into this one's apex over `transition` frames, then holds.

  Returns:
    (schedule (T, len(PARAMS)), per-frame emotion index (T,)).
  """
  rows, labels = [], []
  current = NEUTRAL.copy()
  for seg in segments:
    emotion, n = seg[0], int(seg[1])
    intensity = seg[2] if len(seg) > 2 else rng.uniform(0.8, 1.0)
    target = apex_expression(emotion, intensity)
    ramp = _smoothstep((np.arange(n) + 1) / max(1, min(transition, n)))
    rows.append(current[None] + ramp[:, None] * (target - current)[None])
    labels.append(np.full(n, emotion_index(emotion), np.int32))
    current = target
  sched = np.concatenate(rows).astype(np.float32)
  sched += rng.normal(0, 0.02, sched.shape).astype(np.float32)
  return sched, np.concatenate(labels)


def valence_arousal(emotion, intensity: float, rng: np.random.Generator) -> tuple[float, float]:
  v, a = VALENCE_AROUSAL[EMOTIONS[emotion_index(emotion)]]
  v = np.clip(v * intensity + rng.normal(0, 0.05), -1, 1)
  a = np.clip(a * intensity + rng.normal(0, 0.05), -1, 1)
  return float(v), float(a)


# ------------------------------------------------------------------------------------------------
# Drawing.
# ------------------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fill(img, pts, color):
  cv2.fillPoly(img, [np.round(np.asarray(pts) * _ONE).astype(np.int32)],
               [float(c) for c in color], cv2.LINE_AA, _SHIFT)


def _stroke(img, pts, color, thickness, closed=False):
  cv2.polylines(img, [np.round(np.asarray(pts) * _ONE).astype(np.int32)], closed,
                [float(c) for c in color], max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _ellipse(cx, cy, ax, ay, n=40, a0=0.0, a1=2 * np.pi):
  a = np.linspace(a0, a1, n)
  return np.stack([cx + ax * np.cos(a), cy + ay * np.sin(a)], axis=1)


def _bezier(p0, p1, p2, n=16):
  t = np.linspace(0, 1, n)[:, None]
  p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def render_background(identity: Identity, size: int) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  g = np.cos(identity.bg_angle) * xx + np.sin(identity.bg_angle) * yy
  g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
  img = (identity.bg_a[None, None] * (1 - g[..., None]) + identity.bg_b[None, None] * g[..., None])
  img = np.ascontiguousarray(img.astype(np.uint8))
  for center, axes, angle, color in identity.bg_blobs:
    cv2.ellipse(img, (int(center[0] * size), int(center[1] * size)),
                (max(1, int(axes[0] * size)), max(1, int(axes[1] * size))), float(angle), 0, 360,
                [float(c) for c in color], -1, cv2.LINE_AA)
  k = max(3, (size // 16) | 1)
  return cv2.GaussianBlur(img, (k, k), 0)


class _Projector:
  """Face-local coordinates (unit = face half-width, y down) -> image pixels under a pose."""

  def __init__(self, identity: Identity, pose: np.ndarray, size: int):
    yaw, roll, dx, dy, scale = (float(v) for v in pose)
    self.unit = identity.face_w * size * scale
    self.aspect = identity.face_h / identity.face_w
    self.cx = (identity.center[0] + dx) * size
    self.cy = (identity.center[1] + dy) * size
    self.cos_y, self.sin_y = np.cos(yaw), np.sin(yaw)
    self.cos_r, self.sin_r = np.cos(roll), np.sin(roll)

  def __call__(self, pts, depth=None) -> np.ndarray:
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    if depth is None:  # on the face: an ellipsoid bulge
      depth = 0.75 * np.sqrt(np.clip(1 - x ** 2 - (y / self.aspect) ** 2, 0, 1))
    x = x * self.cos_y + depth * self.sin_y
    xr = x * self.cos_r - y * self.sin_r
    yr = x * self.sin_r + y * self.cos_r
    return np.stack([self.cx + xr * self.unit, self.cy + yr * self.unit], axis=1)


def _draw_eye(img, proj, side, identity, expr, px):
  open_ = float(np.clip(expr[_P["eye_open"]], 0.05, 1.7))
  ex, ey, ew = side * identity.eye_dx, identity.eye_y, identity.eye_w
  eh = 0.6 * ew * open_
  upper = _bezier((ex - ew, ey), (ex, ey - 2 * eh), (ex + ew, ey))
  lower = _bezier((ex + ew, ey), (ex, ey + 1.6 * eh), (ex - ew, ey))
  _fill(img, proj(np.concatenate([upper, lower])), (245, 245, 240))
  iris_r = min(0.45 * ew, 0.9 * eh + 0.02)
  _fill(img, proj(_ellipse(ex, ey + 0.1 * eh, iris_r, iris_r, 20)), identity.iris)
  _fill(img, proj(_ellipse(ex, ey + 0.1 * eh, 0.45 * iris_r, 0.45 * iris_r, 12)), (15, 12, 12))
  lid = identity.skin * 0.45
  _stroke(img, proj(upper), lid, 0.035 * px)
  if open_ < 0.8:  # squint: the lower lid bunches up
    _stroke(img, proj(_bezier((ex - ew, ey + 0.03), (ex, ey + 2.2 * eh + 0.05),
                              (ex + ew, ey + 0.03))), identity.skin * 0.7, 0.02 * px)


def _draw_brow(img, proj, side, identity, expr, px):
  raise_, tilt = float(expr[_P["brow_raise"]]), float(expr[_P["brow_tilt"]])
  base = identity.eye_y - 0.22 - 0.13 * raise_
  inner = (side * 0.12, base - 0.11 * tilt + 0.02)
  outer = (side * (identity.eye_dx + identity.eye_w + 0.06), base + 0.02 + 0.03 * tilt)
  mid = (side * (identity.eye_dx - 0.02), base - 0.06 - 0.03 * max(raise_, 0))
  _stroke(img, proj(_bezier(inner, mid, outer)), identity.brow_color,
          identity.brow_thickness * px * 1.6)
  if tilt < -0.4 and side > 0:  # frown lines between the brows
    for x in (-0.04, 0.04):
      _stroke(img, proj([(x, base - 0.02), (x * 1.3, base + 0.1)]), identity.skin * 0.6, 0.015 * px)


def _draw_nose(img, proj, identity, expr, px):
  wrinkle = float(expr[_P["nose_wrinkle"]])
  shade = identity.skin * 0.65
  _stroke(img, proj([(0.02, identity.eye_y + 0.05), (0.06, 0.2), (0.0, 0.27)], depth=None),
          shade, 0.02 * px)
  for side in (-1, 1):
    _fill(img, proj(_ellipse(side * 0.07, 0.27 - 0.03 * wrinkle, 0.035, 0.02, 12)),
          identity.skin * 0.4)
  if wrinkle > 0.3:
    for k in range(3):
      y = identity.eye_y + 0.08 + 0.05 * k
      _stroke(img, proj([(-0.08, y), (0.0, y - 0.02), (0.08, y)]), identity.skin * 0.5,
              0.025 * px * wrinkle)


def _draw_mouth(img, proj, identity, expr, px):
  curve = float(expr[_P["mouth_curve"]])
  open_ = float(np.clip(expr[_P["mouth_open"]], 0, 1.2))
  width = identity.mouth_w * float(np.clip(expr[_P["mouth_width"]], 0.4, 1.6))
  asym = float(expr[_P["lip_asym"]])
  my = identity.mouth_y
  left = (-width, my - 0.13 * curve - 0.09 * asym)
  right = (width, my - 0.13 * curve)
  top = (0.0, my - 0.04 * open_ - 0.02 - 0.05 * asym - 0.03 * max(curve, 0))
  bottom = (0.0, my + 0.3 * open_ + 0.03 + 0.08 * max(curve, 0) * (open_ > 0.1))
  if open_ < 0.08:
    mid = (0.0, my + 0.05 * curve * (1 if curve > 0 else 0.4))
    _stroke(img, proj(_bezier(left, mid, right, 20)), identity.lips * 0.7, 0.06 * px)
  else:
    upper = _bezier(left, (top[0], 2 * top[1] - (left[1] + right[1]) / 2), right, 20)
    lower = _bezier(right, (bottom[0], 2 * bottom[1] - (left[1] + right[1]) / 2), left, 20)
    _fill(img, proj(np.concatenate([upper, lower])), (70, 20, 30))
    if curve > 0.4 and open_ > 0.2:  # teeth of an open smile
      teeth_lower = upper[::-1] + np.array([0.0, 0.45 * (bottom[1] - top[1])])
      _fill(img, proj(np.concatenate([upper, teeth_lower])), (240, 240, 235))
    _stroke(img, proj(np.concatenate([upper, lower])), identity.lips, 0.05 * px, closed=True)
  if curve > 0.4:  # cheek folds of a smile
    for side in (-1, 1):
      _stroke(img, proj(_bezier((side * 0.14, 0.3), (side * (width + 0.1), my - 0.12),
                                (side * (width + 0.04), my + 0.05))), identity.skin * 0.7,
              0.02 * px)


def _surface(identity: Identity, pose: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Brightness factor at frame coordinates x, y (fractions of the frame, any equal shapes):
  Lambertian shading of the head's ellipsoid and skin texture.

  Both move with the head: they are computed in face-local coordinates under the frame's pose.
  """
  yaw, roll, dx, dy, scale = (float(v) for v in pose)
  unit = identity.face_w * scale
  asp = identity.face_h / identity.face_w
  # Face-local coordinates: undo the projection's roll; yaw then turns the surface normals.
  u = (x - identity.center[0] - dx) / unit
  v = (y - identity.center[1] - dy) / unit
  u, v = u * np.cos(roll) + v * np.sin(roll), -u * np.sin(roll) + v * np.cos(roll)
  # The lit solid reaches a little above the drawn face ellipse, under the hair cap.
  r2 = u ** 2 + (v / (1.15 * asp)) ** 2
  z = np.sqrt(np.clip(1 - r2, 0, 1))
  nx, ny = u * np.cos(yaw) - z * np.sin(yaw), v / (1.15 * asp)
  nz = z * np.cos(yaw) + u * np.sin(yaw)
  lx, ly, lz = identity.shade_dir
  lambert = np.clip(nx * lx + ny * ly + nz * lz, 0, 1)
  inside = np.clip((1 - r2) * 8, 0, 1)  # fades out over the head's rim
  factor = 1 + identity.shade * inside * (lambert - 0.75)
  if identity.texture > 0:
    # A smooth random field fixed to the face (sampled in face coordinates): blotches of skin.
    field_rng = np.random.default_rng(identity.texture_seed)
    grid = field_rng.normal(0, 1, (24, 24)).astype(np.float32)
    gx = np.clip((u + 1.2) / 2.4 * 23, 0, 23).astype(np.float32)
    gy = np.clip((v / asp + 1.2) / 2.4 * 23, 0, 23).astype(np.float32)
    blotches = cv2.remap(cv2.GaussianBlur(grid, (5, 5), 0) * 2.5, gx, gy, cv2.INTER_CUBIC)
    factor = factor * (1 + identity.texture * inside * blotches)
  return factor.astype(np.float32)


def render_frame(expr: np.ndarray, pose: np.ndarray, identity: Identity, size: int,
                 background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One RGB uint8 frame of `identity` showing expression `expr` under `pose`."""
  img = background.astype(np.uint8).copy()
  proj = _Projector(identity, pose, size)
  px = proj.unit  # pixels per face unit
  asp = proj.aspect
  # Shoulders and neck.
  _fill(img, _ellipse(proj.cx, proj.cy + 2.45 * asp * px, 2.1 * px, 1.2 * asp * px, 40),
        identity.shirt)
  _fill(img, proj([(-0.45, 0.6 * asp), (0.45, 0.6 * asp), (0.5, 1.5 * asp), (-0.5, 1.5 * asp)],
                  depth=np.zeros(4)), identity.skin * 0.85)
  if identity.hair_style == 2:  # long hair behind the head
    _fill(img, proj(_ellipse(0, 0.05 * asp, 1.2, 1.1 * asp, 40), depth=np.full(40, -0.3)),
          identity.hair)
  for side in (-1, 1):  # ears
    _fill(img, proj(_ellipse(side * 0.98, -0.02 * asp, 0.14, 0.25, 16), depth=np.full(16, -0.2)),
          identity.skin * 0.92)
  _fill(img, proj(_ellipse(0, 0, 1.0, asp, 48), depth=np.zeros(48)), identity.skin)
  if identity.hair_style >= 1:  # hair cap over the forehead
    cap = np.concatenate([_ellipse(0, -0.15 * asp, 1.04, 0.92 * asp, 32, np.pi, 2 * np.pi),
                          _bezier((1.0, -0.4 * asp), (0.0, -0.85 * asp), (-1.0, -0.4 * asp), 12)])
    _fill(img, proj(cap, depth=np.full(len(cap), 0.1)), identity.hair)
  for side in (-1, 1):
    _draw_eye(img, proj, side, identity, expr, px)
    _draw_brow(img, proj, side, identity, expr, px)
  _draw_nose(img, proj, identity, expr, px)
  _draw_mouth(img, proj, identity, expr, px)
  # Lighting: a directional gradient over the frame, global exposure, then sensor noise.
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
  light = 1 + identity.light_strength * (np.cos(identity.light_dir) * xx
                                         + np.sin(identity.light_dir) * yy)
  if identity.shade > 0 or identity.texture > 0:
    light = light * _surface(identity, pose, xx + 0.5, yy + 0.5)
  out = img.astype(np.float32) * (light[..., None] * identity.brightness)
  out += rng.normal(0, identity.noise, out.shape).astype(np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def render_frames(schedule: np.ndarray, size: int, rng: np.random.Generator,
                  identity: Optional[Identity] = None, poses: Optional[np.ndarray] = None,
                  blink: bool = True) -> np.ndarray:
  """Renders a clip from an explicit per-frame expression schedule (T, len(PARAMS)).

  Args:
    schedule: expression vector per frame (see `expression_schedule`, `segment_schedule`).
    size: frame side in pixels.
    rng: source of every random choice.
    identity: appearance (a random one when None).
    poses: (T, 5) yaw/roll/dx/dy/scale (a random smooth track when None).
    blink: add at most one short blink.

  Returns:
    uint8 (T, size, size, 3) RGB.
  """
  schedule = np.asarray(schedule, np.float32).copy()
  num_frames = len(schedule)
  identity = identity or sample_identity(rng)
  poses = pose_track(identity, num_frames, rng) if poses is None else poses
  if identity.talk > 0:  # a little speech movement on top of the expression
    phase = rng.uniform(0, 2 * np.pi)
    schedule[:, _P["mouth_open"]] += identity.talk * np.clip(
        np.sin(np.arange(num_frames) * 1.7 + phase), 0, None)
  if blink and num_frames >= 6 and rng.uniform() < 0.3:
    at = int(rng.integers(1, num_frames - 2))
    schedule[at:at + 2, _P["eye_open"]] = 0.08
  background = render_background(identity, size)
  return np.stack([render_frame(schedule[t], poses[t], identity, size, background, rng)
                   for t in range(num_frames)])


@dataclasses.dataclass
class SyntheticClip:
  frames: np.ndarray   # uint8 (T, H, W, 3)
  emotion: int
  intensity: float
  valence: float
  arousal: float


def make_clip(emotion, num_frames: int, size: int, rng: np.random.Generator,
              variation: str = "full", identity: Optional[Identity] = None) -> SyntheticClip:
  """`identity` (a random one when None) showing `emotion` (neutral -> apex -> partial release),
  with its labels."""
  e = emotion_index(emotion)
  intensity = float(rng.uniform(0.7, 1.0))
  schedule = expression_schedule(e, num_frames, rng, intensity)
  if identity is None:
    identity = sample_identity(rng, variation)
  frames = render_frames(schedule, size, rng, identity=identity)
  v, a = valence_arousal(e, intensity, rng)
  return SyntheticClip(frames, e, intensity, v, a)


def render_clip(emotion: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 (T, size, size, 3) RGB clip of a random face showing `emotion` (DFEW index or name)."""
  return make_clip(emotion, num_frames, size, rng).frames


# ------------------------------------------------------------------------------------------------
# Datasets on disk.
# ------------------------------------------------------------------------------------------------


def _write_lines(path: str, lines: Sequence[str]) -> str:
  with open(path, "w") as f:
    f.writelines(line + "\n" for line in lines)
  return path


def _settings(num_clips_per_class, num_frames, size, seed, folds, test_fraction, fps=25.0,
              write_videos=True, write_frames=True, jpeg_quality=95, variation="full",
              actors=0) -> dict:
  """What a raw synthetic dataset was written with (decides whether it can be reused)."""
  settings = {"num_clips_per_class": num_clips_per_class, "num_frames": num_frames, "size": size,
              "seed": seed, "folds": folds, "test_fraction": test_fraction, "fps": fps,
              "write_videos": write_videos, "write_frames": write_frames,
              "jpeg_quality": jpeg_quality, "variation": variation}
  if actors:
    settings["actors"] = actors
  return settings


def _fold_of(j: int, n: int, folds: int, test_fraction: float) -> int:
  """1-based fold whose test split holds the j-th of n items (0: train only).

  The items are the clips of one class, or the actors of an `actors` dataset.
  """
  if folds > 1:
    return j % folds + 1
  n_test = min(n - 1, max(1, int(round(n * test_fraction)))) if n > 1 else 0
  return 1 if j >= n - n_test else 0


def actor_of(i: int, actors: int) -> int:
  """0-based actor of clip `i` (1-based) in a dataset of `actors` people: clips come in rounds
  of one clip per class, and every round is one actor's, so each actor shows every emotion."""
  return (i - 1) // len(EMOTIONS) % actors


def actor_identity(seed: int, actor: int, variation: str) -> Identity:
  """The appearance of `actor`, the same in all of the actor's clips."""
  return sample_identity(np.random.default_rng([seed, 1_000_003, actor]), variation)


def _write_clip(job: dict) -> dict:
  """Renders clip `job["i"]` from its own seed and writes its frames and/or video; returns its
  annotation (clips are independent, so any number of processes give the same files)."""
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top

  i = job["i"]
  emotion = (i - 1) % len(EMOTIONS)
  actors = job.get("actors", 0)
  identity = (actor_identity(job["seed"], actor_of(i, actors), job["variation"]) if actors
              else None)
  clip = make_clip(emotion, job["num_frames"], job["size"], np.random.default_rng([job["seed"], i]),
                   job["variation"], identity)
  name = f"{i:05d}"
  if job["frames_root"]:
    folder = os.path.join(job["frames_root"], name)
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(clip.frames, 1):
      ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                             [cv2.IMWRITE_JPEG_QUALITY, job["jpeg_quality"]])
      if not ok:
        raise RuntimeError(f"JPEG encoding failed for frame {t} of clip {name}")
      with open(os.path.join(folder, f"{t:05d}.jpg"), "wb") as f:
        f.write(buf.tobytes())
  if job["video_root"]:
    os.makedirs(job["video_root"], exist_ok=True)
    video_io.write_video(os.path.join(job["video_root"], name + ".mp4"), clip.frames, job["fps"],
                         job["codec"])
  annotation = {"id": name, "emotion": emotion, "emotion_name": EMOTIONS[emotion],
                "intensity": round(clip.intensity, 4), "valence": round(clip.valence, 4),
                "arousal": round(clip.arousal, 4)}
  if actors:
    annotation["actor"] = actor_of(i, actors)
  return annotation


def write_dataset(out_dir: str, num_clips_per_class: int = 8, num_frames: int = 24, size: int = 96,
                  seed: int = 0, folds: int = 1, test_fraction: float = 0.25, fps: float = 25.0,
                  write_videos: bool = True, write_frames: bool = True,
                  jpeg_quality: int = 95, variation: str = "full", workers: int = 1,
                  actors: int = 0) -> dict:
  """Writes a DFEW-like synthetic dataset (mp4 files and/or JPEG frame folders + lists).

  Layout (clip ids 00001, 00002, ...; class of clip i = (i - 1) % 7):
    Clip/frames/00001/00001.jpg ...                  frame folders
    Clip/original/00001.mp4                          the same clips as videos
    EmoLabel_DataSplit/{train,test}(single-labeled)/set_{k}.csv   video_name,label (1..7)
    lists/split0{k}/{train,test}.csv                 '<frame folder> <label 0..6>'
    lists/split0{k}/{train,test}_video.csv           '<mp4 path> <label>'
    lists/split0{k}/{train,test}_va.csv              '<frame folder> <valence> <arousal>'
    annotations.json                                 per-clip emotion, intensity, valence, arousal
  List paths are relative to the list's folder. With folds == 1 a `test_fraction` of every class
  is the test split of fold 1; with folds > 1 every clip is in the test split of exactly one fold.
  `actors` > 0 films that many people, each in every class (clip i is `actor_of(i, actors)`'s),
  the way lab datasets (RAVDESS, CREMA-D) and VoxCeleb2 hold many clips per person; the splits
  are then subject-independent: `test_fraction` (or a fold) of the actors, not of the clips.
  `variation` is "full", "studio", "closeup" or "aligned" (see `sample_identity`); `workers` > 1
  renders clips in that many processes (same files as one; a script calling this needs the usual
  `if __name__ == "__main__":` guard where Python starts processes by spawning).

  Raises:
    ValueError: neither videos nor frames to write, or `actors` too few for a test split.

  Returns:
    {"root", "lists": {fold: {split: path}}, "video_lists", "va_lists", "num_clips", "codec"}.
  """
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top

  if not (write_videos or write_frames):
    raise ValueError("write_dataset needs write_videos or write_frames")
  if actors < 0 or actors == 1 or (actors and actors < folds):
    raise ValueError(f"actors={actors}: give 0 (a new person per clip) or at least "
                     f"{max(2, folds)} people, so that every fold has test actors")
  frames_root = os.path.join(out_dir, "Clip", "frames")
  video_root = os.path.join(out_dir, "Clip", "original")
  codec = video_io.available_encoder() if write_videos else None
  total = num_clips_per_class * len(EMOTIONS)
  jobs = [dict(i=i, seed=seed, num_frames=num_frames, size=size, variation=variation,
               frames_root=frames_root if write_frames else None,
               video_root=video_root if write_videos else None, fps=fps, codec=codec,
               jpeg_quality=jpeg_quality, actors=actors) for i in range(1, total + 1)]
  if workers > 1:
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
      annotations = list(pool.map(_write_clip, jobs, chunksize=4))
  else:
    annotations = [_write_clip(job) for job in jobs]
  for i, a in enumerate(annotations):
    a["fold"] = (_fold_of(a["actor"], actors, folds, test_fraction) if actors else
                 _fold_of(i // len(EMOTIONS), num_clips_per_class, folds, test_fraction))
  lists: dict[int, dict[str, str]] = {}
  video_lists: dict[int, dict[str, str]] = {}
  va_lists: dict[int, dict[str, str]] = {}
  for k in range(1, max(folds, 1) + 1):
    list_dir = os.path.join(out_dir, "lists", f"split{k:02d}")
    os.makedirs(list_dir, exist_ok=True)
    lists[k], video_lists[k], va_lists[k] = {}, {}, {}
    frame_dir = os.path.relpath(frames_root, list_dir)
    video_dir = os.path.relpath(video_root, list_dir)
    for split in ("train", "test"):
      rows = [a for a in annotations if (a["fold"] == k) == (split == "test")]
      frame_paths = [f"{frame_dir}/{a['id']}" for a in rows]
      video_paths = [f"{video_dir}/{a['id']}.mp4" for a in rows]
      if write_frames:
        lists[k][split] = _write_lines(
            os.path.join(list_dir, f"{split}.csv"),
            [f"{p} {a['emotion']}" for p, a in zip(frame_paths, rows)])
      if write_videos:
        video_lists[k][split] = _write_lines(
            os.path.join(list_dir, f"{split}_video.csv"),
            [f"{p} {a['emotion']}" for p, a in zip(video_paths, rows)])
      va_lists[k][split] = _write_lines(
          os.path.join(list_dir, f"{split}_va.csv"),
          [f"{p} {a['valence']} {a['arousal']}"
           for p, a in zip(frame_paths if write_frames else video_paths, rows)])
      split_dir = os.path.join(out_dir, "EmoLabel_DataSplit", f"{split}(single-labeled)")
      os.makedirs(split_dir, exist_ok=True)
      _write_lines(os.path.join(split_dir, f"set_{k}.csv"),
                   ["video_name,label"] + [f"{int(a['id'])},{a['emotion'] + 1}" for a in rows])
  with open(os.path.join(out_dir, "annotations.json"), "w") as f:
    json.dump({"emotions": list(EMOTIONS), "settings": _settings(
        num_clips_per_class, num_frames, size, seed, folds, test_fraction, fps, write_videos,
        write_frames, jpeg_quality, variation, actors), "clips": annotations}, f, indent=1)
  return {"root": out_dir, "lists": lists, "video_lists": video_lists, "va_lists": va_lists,
          "num_clips": total, "codec": codec}


def make_synthetic_dataset(out_dir: str, num_clips_per_class: int = 8, num_frames: int = 24,
                           size: int = 96, seed: int = 0, *, folds: int = 1, fold: int = 1,
                           test_fraction: float = 0.25, source: str = "frames",
                           short_side: Optional[int] = None, face_crop: bool = False,
                           workers: int = 1, num_shards: Optional[int] = None,
                           with_values: bool = True, quiet: bool = True,
                           variation: str = "full", actors: int = 0) -> str:
  """Synthetic clips -> prepared face-clip dataset in one call; returns the prepared directory.

  Writes the raw dataset to `out_dir/raw` (see `write_dataset`) and prepares fold `fold` into
  `out_dir/prepared` (splits "train" and "test", 7 DFEW classes, valence/arousal values when
  `with_values`). `source` picks the frame folders ("frames") or the mp4 files ("video"),
  `variation` the appearance spread (see `sample_identity`). Calling it again with the same
  arguments reuses what is there.
  """
  from data_pipelines import build  # pylint: disable=g-import-not-at-top

  if source not in ("frames", "video"):
    raise ValueError(f"source must be 'frames' or 'video', got {source!r}")
  raw_dir = os.path.join(out_dir, "raw")
  prepared = os.path.join(out_dir, "prepared")
  marker = os.path.join(raw_dir, "annotations.json")
  settings = dict(num_clips_per_class=num_clips_per_class, num_frames=num_frames, size=size,
                  seed=seed, folds=folds, test_fraction=test_fraction, variation=variation,
                  actors=actors)
  existing = None
  if os.path.exists(marker):
    with open(marker) as f:
      existing = json.load(f).get("settings")
  if existing != _settings(**settings):
    write_dataset(raw_dir, workers=workers, **settings)
  list_dir = os.path.join(raw_dir, "lists", f"split{fold:02d}")
  suffix = "" if source == "frames" else "_video"
  argv = ["--out", prepared, "--label-names", ",".join(EMOTIONS),
          "--short-side", str(short_side or size), "--workers", str(workers), "--name",
          f"synthetic_fold{fold}"]
  for split in ("train", "test"):
    argv += ["--list", f"{split}={os.path.join(list_dir, f'{split}{suffix}.csv')}"]
    if with_values:
      va = os.path.join(list_dir, f"{split}_va.csv")
      if source == "video":
        va = _video_va_list(va, list_dir, split)
      argv += ["--regression", f"{split}={va}"]
  if with_values:
    argv += ["--value-names", "valence,arousal"]
  if face_crop:
    argv.append("--face-crop")
  if num_shards:
    argv += ["--num-shards", str(num_shards)]
  if quiet:
    argv.append("--quiet")
  code = build.main(argv)
  if code != 0:
    raise RuntimeError(f"prepare failed (exit {code}) for the synthetic dataset in {raw_dir}")
  return prepared


def _video_va_list(frames_va: str, list_dir: str, split: str) -> str:
  """The valence/arousal list rewritten to point at the mp4 files."""
  out = os.path.join(list_dir, f"{split}_video_va.csv")
  with open(frames_va) as f, open(out, "w") as g:
    for line in f:
      path, v, a = line.rsplit(None, 2)
      g.write(path.replace("/frames/", "/original/") + f".mp4 {v} {a}\n")
  return out
