#!/usr/bin/env python
"""A second, independent face generator: line-drawn cartoon faces with 4 expressions.

`data_pipelines/synthetic.py` draws the faces `make demo` trains on (shaded 3-D heads, 7 emotions).
This file shares none of its drawing code, geometry or colours: flat 2-D faces drawn with PIL,
strokes of varying width, optional hair and glasses, a lighting ramp and sensor noise, and only
4 classes (happy, sad, surprise, angry) whose cues are defined here. It exists to check that the
representation monitor (`svfap_jax/probe.py`) measures something that transfers: an encoder that
pretraining improved on one generator's faces should also probe above its random init here.

  python tools/sketch_faces.py --out /tmp/sketch                      # raw clips + prepared set
  python -m svfap_jax probe --data /tmp/sketch/prepared --workdir demo_out/pretrain --baseline

Layout: OUT/raw/frames/<id>/<t>.jpg (112 px, 40 frames: neutral, then the expression rising to
its apex), OUT/raw/{train,test}.csv ('<frame folder> <label 0..3>', 30 train and 10 test clips per
class by default), OUT/prepared (the `prepare` output, classes named as above).
Hardware: any CPU; 160 clips take ~45 s to draw and prepare on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("happy", "sad", "surprise", "angry")
# Apex cues per class: mouth corner lift, mouth opening, brow height, inner-brow lift, eye opening
# and mouth width (units: fractions of the face radius, except eye opening and mouth width,
# factors on the person's neutral eye height and mouth width).
APEX = {
    "happy": dict(corner=0.16, open=0.10, brow=0.02, inner=0.0, eye=0.75, wide=1.15),
    "sad": dict(corner=-0.13, open=0.0, brow=0.03, inner=0.12, eye=0.8, wide=0.95),
    "surprise": dict(corner=0.0, open=0.30, brow=0.14, inner=0.0, eye=1.45, wide=0.55),
    "angry": dict(corner=-0.05, open=0.02, brow=-0.08, inner=-0.12, eye=0.85, wide=0.8),
}
NEUTRAL = dict(corner=0.0, open=0.0, brow=0.0, inner=0.0, eye=1.0, wide=1.0)
SUPERSAMPLE = 2


def _person(rng: np.random.Generator, size: int) -> dict:
  """One cartoon person: everything about the face that does not change with the expression."""
  s = size * SUPERSAMPLE
  skin = rng.uniform([120, 80, 60], [255, 225, 200])
  return dict(
      cx=s * rng.uniform(0.46, 0.54), cy=s * rng.uniform(0.5, 0.56), r=s * rng.uniform(0.33, 0.4),
      aspect=rng.uniform(1.05, 1.3), skin=tuple(int(v) for v in skin),
      background=tuple(int(v) for v in rng.uniform(0, 255, 3)),
      ink=tuple(int(v) for v in rng.uniform(0, 70, 3)), width=int(rng.integers(5, 9)),
      eye_dx=rng.uniform(0.3, 0.42), eye_y=rng.uniform(-0.22, -0.1), eye_h=rng.uniform(0.06, 0.1),
      mouth_y=rng.uniform(0.38, 0.5), mouth_w=rng.uniform(0.28, 0.42),
      hair=(tuple(int(v) for v in rng.uniform(0, 160, 3)) if rng.random() < 0.7 else None),
      glasses=rng.random() < 0.3, light=rng.uniform(-1, 1, 2), light_strength=rng.uniform(0, 0.35))


def _draw(p: dict, cue: dict, size: int, shift: np.ndarray, noise: np.ndarray) -> np.ndarray:
  s = size * SUPERSAMPLE
  img = Image.new("RGB", (s, s), p["background"])
  d = ImageDraw.Draw(img)
  cx, cy, r = p["cx"] + shift[0], p["cy"] + shift[1], p["r"]
  ry = r * p["aspect"]
  if p["hair"]:
    d.ellipse([cx - 1.1 * r, cy - 1.2 * ry, cx + 1.1 * r, cy + 0.2 * ry], fill=p["hair"])
  d.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=p["skin"], outline=p["ink"], width=p["width"])
  w = p["width"]
  for side in (-1, 1):
    ex, ey = cx + side * p["eye_dx"] * r, cy + p["eye_y"] * ry
    eh, ew = p["eye_h"] * r * cue["eye"], 0.13 * r
    d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=(250, 250, 250), outline=p["ink"], width=w)
    pupil = 0.45 * min(ew, max(eh, 0.02 * r))
    d.ellipse([ex - pupil, ey - pupil, ex + pupil, ey + pupil], fill=p["ink"])
    by = ey - (0.16 + cue["brow"]) * r - eh * 0.5
    inner = (ex - side * 0.14 * r, by - cue["inner"] * r)
    outer = (ex + side * 0.16 * r, by + 0.3 * cue["inner"] * r)
    d.line([inner, outer], fill=p["ink"], width=2 * w)
    if p["glasses"]:
      d.rectangle([ex - 1.5 * ew, ey - 0.14 * r, ex + 1.5 * ew, ey + 0.14 * r], outline=p["ink"],
                  width=max(1, w - 1))
  mx, my, mw = cx, cy + p["mouth_y"] * ry, p["mouth_w"] * r * cue["wide"]
  corner_y = my - cue["corner"] * r
  # The lip line bends the other way from the corners, so a smile is a U and a frown an arch; an
  # open mouth also lifts the upper lip, so a wide-open one is an O.
  t = np.linspace(-1, 1, 24)
  upper = [(mx + mw * u, corner_y + (my - corner_y - 0.4 * cue["open"] * r) * (1 - u * u))
           for u in t]
  if cue["open"] > 0.015:
    lower = [(mx + mw * u, corner_y + (my - corner_y + cue["open"] * r) * (1 - u * u))
             for u in t[::-1]]
    d.polygon(upper + lower, fill=(90, 20, 30), outline=p["ink"])
  d.line(upper, fill=p["ink"], width=w + 1)
  img = img.filter(ImageFilter.GaussianBlur(0.6 * SUPERSAMPLE)).resize((size, size),
                                                                        Image.Resampling.LANCZOS)
  x = np.asarray(img, np.float32)
  yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
  ramp = 1 + p["light_strength"] * (p["light"][0] * xx + p["light"][1] * yy) * 2
  return np.clip(x * ramp[..., None] + noise, 0, 255).astype(np.uint8)


def clip_frames(label: int, rng: np.random.Generator, num_frames: int = 40,
                size: int = 112) -> np.ndarray:
  """uint8 (num_frames, size, size, 3): one person going from neutral to CLASSES[label]."""
  p = _person(rng, size)
  apex = APEX[CLASSES[label]]
  intensity = rng.uniform(0.6, 1.0)
  onset = rng.integers(3, num_frames // 3)
  rise = rng.integers(6, 14)
  drift = np.cumsum(rng.normal(0, 0.6 * SUPERSAMPLE, (num_frames, 2)), axis=0)
  frames = []
  for t in range(num_frames):
    a = intensity * float(np.clip((t - onset) / rise, 0, 1))
    cue = {k: NEUTRAL[k] + a * (apex[k] - NEUTRAL[k]) for k in NEUTRAL}
    frames.append(_draw(p, cue, size, drift[t], rng.normal(0, 4, (size, size, 3))))
  return np.stack(frames)


def write(out: str, clips_per_class: int, test_per_class: int, seed: int,
          num_frames: int = 40, size: int = 112) -> dict[str, str]:
  """Writes frame folders and the train/test lists under `out`; returns {split: list path}."""
  rows = {"train": [], "test": []}
  for label in range(len(CLASSES)):
    for j in range(clips_per_class):
      name = f"{CLASSES[label]}_{j:04d}"
      folder = os.path.join(out, "frames", name)
      os.makedirs(folder, exist_ok=True)
      frames = clip_frames(label, np.random.default_rng([seed, label, j]), num_frames, size)
      for t, frame in enumerate(frames, 1):
        Image.fromarray(frame).save(os.path.join(folder, f"{t:05d}.jpg"), quality=95)
      split = "test" if j >= clips_per_class - test_per_class else "train"
      rows[split].append(f"frames/{name} {label}")
  lists = {}
  for split, lines in rows.items():
    lists[split] = os.path.join(out, f"{split}.csv")
    with open(lists[split], "w") as f:
      f.write("\n".join(lines) + "\n")
  return lists


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--clips-per-class", type=int, default=40)
  parser.add_argument("--test-per-class", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
  args = parser.parse_args(argv)
  if not 0 < args.test_per_class < args.clips_per_class:
    parser.error("--test-per-class must be between 1 and --clips-per-class - 1")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from data_pipelines import build  # pylint: disable=g-import-not-at-top
  raw = os.path.join(args.out, "raw")
  lists = write(raw, args.clips_per_class, args.test_per_class, args.seed, size=args.size)
  prepared = os.path.join(args.out, "prepared")
  argv = ["--out", prepared, "--label-names", ",".join(CLASSES), "--short-side", str(args.size),
          "--quiet", "--name", "sketch_faces"]
  for split, path in lists.items():
    argv += ["--list", f"{split}={path}"]
  code = build.main(argv)
  if code == 0:
    print(f"prepared {prepared}: {len(CLASSES)} classes, "
          f"{args.clips_per_class - args.test_per_class} train / {args.test_per_class} test clips "
          "per class")
  return code


if __name__ == "__main__":
  sys.exit(main())
