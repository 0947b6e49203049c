"""Sliding windows over a decoded video and the per-second / per-frame views of their scores."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def window_starts(num_frames: int, window: int, stride: int, rate: int) -> list[int]:
  """0, stride, 2 * stride, ... while start + (window - 1) * rate < num_frames; [0] if none."""
  span = (window - 1) * rate
  if num_frames <= span:
    return [0]
  return list(range(0, num_frames - span, stride))


def window_frames(num_frames: int, window: int, rate: int, start: int) -> np.ndarray:
  """Sampled frame numbers of one window; past the clip's end the last frame repeats."""
  return np.minimum(start + rate * np.arange(window), num_frames - 1).astype(np.int64)




def rounded(values: np.ndarray) -> list[float]:
  return [round(float(v), 6) for v in values]


def timeline(windows: Sequence[dict], scores: np.ndarray, duration_s: float, labels, task
              ) -> list[dict]:
  key = "probs" if task == "classification" else "values"
  out = []
  starts = np.array([w["start_s"] for w in windows])
  ends = np.array([w["end_s"] for w in windows])
  for second in range(int(np.ceil(duration_s - 1e-9))):
    overlap = (starts < second + 1) & (ends > second)
    if not overlap.any():
      continue
    mean = scores[overlap].mean(axis=0)
    label = labels[int(np.argmax(mean))] if task == "classification" else None
    out.append({"second": second, key: rounded(mean), "label": label})
  return out



def per_frame_scores(result: dict, num_frames: int) -> np.ndarray:
  """(num_frames, K): mean of the windows covering each frame (nearest window where none does)."""
  key = "probs" if result["task"] == "classification" else "values"
  scores = np.array([w[key] for w in result["windows"]], np.float32)
  starts = np.array([w["start_frame"] for w in result["windows"]])
  ends = np.array([w["end_frame"] for w in result["windows"]])
  out = np.empty((num_frames, scores.shape[1]), np.float32)
  for t in range(num_frames):
    cover = (starts <= t) & (ends >= t)
    if cover.any():
      out[t] = scores[cover].mean(axis=0)
    else:
      out[t] = scores[np.argmin(np.minimum(np.abs(starts - t), np.abs(ends - t)))]
  return out

