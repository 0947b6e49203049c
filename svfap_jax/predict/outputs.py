"""Writing `predict` / `extract` results: JSON, CSV, .npy (+ sidecar), Parquet and the overlay
video."""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

import cv2
import numpy as np

from data_pipelines import video_io
from svfap_jax.predict.frontend import PreparedVideo, crop_square
from svfap_jax.predict.windows import per_frame_scores

# Rendered frames are scaled up to at least this height so the overlay text stays legible.
RENDER_MIN_HEIGHT = 360


def public(result: dict) -> dict:
  """The result without its private (underscored) entries, as written to files."""
  return {k: v for k, v in result.items() if not k.startswith("_")}


def write_predictions(results: Sequence[dict], out: str, *, as_list: bool) -> None:
  """JSON (an object, or a list for list inputs) or CSV (one row per window) by extension."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.lower().endswith(".csv"):
    ok = [r for r in results if "error" not in r]
    if not ok:
      raise ValueError("no video could be scored; nothing to write")
    labels, key = ok[0]["labels"], ("p" if ok[0]["task"] == "classification" else "v")
    field = "probs" if key == "p" else "values"
    with open(out, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(["video", "index", "start_s", "end_s", "start_frame", "end_frame", "label",
                  "face_fraction", "mostly_no_face"] + [f"{key}_{n}" for n in labels])
      for r in ok:
        for win in r["windows"]:
          ff = "" if win["face_fraction"] is None else win["face_fraction"]
          w.writerow([r["video"], win["index"], win["start_s"], win["end_s"], win["start_frame"],
                      win["end_frame"], win["label"] or "", ff, int(win["mostly_no_face"])]
                     + [f"{p:.6f}" for p in win[field]])
    return
  payload = [public(r) for r in results] if as_list else public(results[0])
  with open(out, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1)
    f.write("\n")


def _sidecar_path(out: str) -> str:
  return os.path.splitext(out)[0] + ".json"


def write_embeddings(results: Sequence[dict], out: str) -> list[str]:
  """`.npy` (+ sidecar JSON) or `.parquet`; returns the files written."""
  ok = [r for r in results if "error" not in r]
  if not ok:
    raise ValueError("no video could be embedded; nothing to write")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  single = len(results) == 1
  if out.lower().endswith(".parquet"):
    try:
      import pyarrow as pa  # pylint: disable=g-import-not-at-top
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError("writing .parquet needs pyarrow (pip install pyarrow); or use .npy") from e
    dim = ok[0]["embedding_dim"]
    cols: dict[str, list] = {k: [] for k in ("video", "kind", "index", "start_s", "end_s",
                                              "start_frame", "end_frame", "face_fraction")}
    vectors = []
    for r in ok:
      for win, vec in zip(r["windows"], r["embeddings"]):
        for k in ("index", "start_s", "end_s", "start_frame", "end_frame", "face_fraction"):
          cols[k].append(win[k])
        cols["video"].append(r["video"])
        cols["kind"].append("window")
        vectors.append(vec)
      cols["video"].append(r["video"])
      cols["kind"].append("video")
      cols["index"].append(-1)
      cols["start_s"].append(0.0)
      cols["end_s"].append(r["windows"][-1]["end_s"])
      cols["start_frame"].append(0)
      cols["end_frame"].append(r["windows"][-1]["end_frame"])
      cols["face_fraction"].append(None)
      vectors.append(r["embedding"])
    types = {"video": pa.string(), "kind": pa.string(), "index": pa.int64(),
             "start_s": pa.float64(), "end_s": pa.float64(), "start_frame": pa.int64(),
             "end_frame": pa.int64(), "face_fraction": pa.float64()}
    flat = pa.array(np.stack(vectors).astype(np.float32).reshape(-1))
    table = pa.table({**{k: pa.array(v, type=types[k]) for k, v in cols.items()},
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
    pq.write_table(table, out)
    return [out]
  if not out.lower().endswith(".npy"):
    raise ValueError(f"{out}: embeddings are written as .npy or .parquet")
  windows = np.concatenate([r["embeddings"] for r in ok]).astype(np.float32)
  owner = np.concatenate([np.full(len(r["embeddings"]), i, np.int32) for i, r in enumerate(ok)])
  videos = np.stack([r["embedding"] for r in ok]).astype(np.float32)
  np.save(out, {"windows": windows, "video": videos[0] if single else videos,
                "window_video": owner}, allow_pickle=True)
  side = _sidecar_path(out)
  meta = [{k: v for k, v in r.items() if k not in ("embeddings", "embedding")} for r in results]
  with open(side, "w", encoding="utf-8") as f:
    json.dump(meta[0] if single else meta, f, indent=1)
    f.write("\n")
  return [out, side]



def _text(img, text, org, scale, color, thickness=1):
  cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2,
              cv2.LINE_AA)
  cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def render(result: dict, prepared: PreparedVideo, out: str) -> str:
  """Writes the video with the model's crop square and a per-frame score bar chart."""
  frames = prepared.frames
  if frames is None:
    raise ValueError("render needs the decoded frames (predict(..., keep_frames=True))")
  h, w = frames[0].shape[:2]
  scale = max(1.0, RENDER_MIN_HEIGHT / h)
  fh, fw = int(round(h * scale)) // 2 * 2, int(round(w * scale)) // 2 * 2
  labels = result["labels"]
  per_frame = per_frame_scores(result, len(frames))
  classification = result["task"] == "classification"
  panel_w = 240
  row_h = max(14, min(32, (fh - 40) // max(1, len(labels))))
  font = 0.45 * row_h / 20
  rendered = np.empty((len(frames), fh, fw + panel_w, 3), np.uint8)
  for t, frame in enumerate(frames):
    canvas = rendered[t]
    canvas[:] = 24
    canvas[:, :fw] = cv2.resize(frame, (fw, fh), interpolation=cv2.INTER_LINEAR)
    box = None if prepared.track is None else prepared.track.boxes[t]
    x0, y0, side = crop_square(frame.shape, box, prepared.prep)
    face_seen = prepared.detected is None or bool(prepared.detected[t])
    color = (60, 220, 60) if face_seen else (255, 150, 0)
    p0 = (int(x0 * fw / w), int(y0 * fh / h))
    p1 = (int((x0 + side) * fw / w), int((y0 + side) * fh / h))
    cv2.rectangle(canvas, p0, p1, color, 2)
    if not face_seen:
      _text(canvas, "no face", (p0[0] + 4, p0[1] + 18), 0.5, color)
    _text(canvas, f"{prepared.times[t]:6.2f} s", (8, fh - 10), 0.5, (255, 255, 255))
    scores = per_frame[t]
    best = int(np.argmax(scores)) if classification else -1
    for k, name in enumerate(labels):
      y = 20 + k * row_h
      x = fw + 8
      bar_x, bar_w = x + 90, panel_w - 106
      value = float(scores[k])
      fill = value if classification else (np.clip(value, -1, 1) + 1) / 2
      colour = (255, 210, 60) if k == best else (120, 170, 255)
      cv2.rectangle(canvas, (bar_x, y), (bar_x + bar_w, y + row_h - 6), (70, 70, 70), 1)
      cv2.rectangle(canvas, (bar_x, y), (bar_x + int(bar_w * fill), y + row_h - 6), colour, -1)
      _text(canvas, name[:11], (x, y + row_h - 8), font, (235, 235, 235))
      _text(canvas, f"{value:.2f}", (bar_x + 2, y + row_h - 8), font * 0.9, (255, 255, 255))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  # The overlay keeps the clip's own timeline (millisecond timestamps) unless frames come faster.
  times = prepared.times if np.all(np.diff(np.round(prepared.times * 1000)) > 0) else None
  video_io.write_video(out, rendered, prepared.fps, times=times)
  return out


