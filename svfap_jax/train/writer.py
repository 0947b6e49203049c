"""Run outputs: metrics.jsonl, TensorBoard events (clu), console lines, report.json.

Only process 0 writes. `metrics.jsonl` holds one JSON object per line: training rows carry `step`,
`loss`, `lr` (+ grad norm, throughput); evaluation rows carry `step`, `split` and the metrics.
Progress (steps/s, share of time in evaluation and checkpointing, ETA) is clu's
`periodic_actions.ReportProgress` (`RunWriter.progress`): TensorBoard scalars `steps_per_sec` and
`uptime`, and its notes in the log (`PROGRESS_NOTES` lets them through a WARNING-level console).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Optional

from clu import periodic_actions
import etils.epath as epath
import jax
import numpy as np


class _ProgressNotes(logging.Filter):
  """Passes warnings and clu's progress notes (logged at INFO by its local work unit)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or record.getMessage().startswith("Setting work unit notes"))


# Added to the absl logger by the training commands, which otherwise keep it at WARNING.
PROGRESS_NOTES = _ProgressNotes()


def _jsonable(value):
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


class RunWriter:

  def __init__(self, workdir: str):
    self.workdir = epath.Path(workdir)
    self.active = jax.process_index() == 0
    self.metrics_path = self.workdir / "metrics.jsonl"
    self._clu = None
    if self.active:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._clu = metric_writers.create_default_writer(
          str(self.workdir / "tensorboard"), asynchronous=False)

  def _append(self, row: dict):
    if not self.active:
      return
    with self.metrics_path.open("a") as f:
      f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")

  def truncate_after(self, step: int):
    """On resume: drops rows logged after the checkpoint we resume from (they will be redone)."""
    if not self.active or not self.metrics_path.exists():
      return
    kept = [line for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    self.metrics_path.write_text("".join(line + "\n" for line in kept))

  def progress(self, total_steps: int, every_steps: int) -> periodic_actions.ReportProgress:
    """clu's progress report for a run of `total_steps`, every `every_steps` steps.

    Call it after every step (and once at the first step, which only starts its clock); wrap
    evaluation and checkpointing in its `timed(name)` so the notes show their share of the time.
    Every process keeps one; only process 0's writes scalars.
    """
    return periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=self._clu if self.active else None,
                                           every_steps=max(int(every_steps), 1), every_secs=None)

  def write_train(self, row: dict, *, total_steps: int):
    self._append(row)
    if not self.active:
      return
    self._clu.write_scalars(row["step"], {k: v for k, v in row.items()
                                          if k != "step" and isinstance(v, (int, float))})
    print(f"step {row['step']}/{total_steps}  loss {row['loss']:.4f}  lr {row['lr']:.3g}  "
          f"{row['clips_per_s_per_device']:.1f} clips/s/device", flush=True)

  def write_eval(self, row: dict):
    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
    self._append({k: v for k, v in row.items() if k in ("step", "split") or k in scalars})
    if not self.active:
      return
    self._clu.write_scalars(row["step"], {f"{row['split']}/{k}": v for k, v in scalars.items()})
    shown = "  ".join(f"{k} {v}" if isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                      else f"{k} {v:.4f}" for k, v in scalars.items())
    print(f"eval {row['split']} @ step {row['step']}: {shown}", flush=True)

  def write_image(self, name: str, image: np.ndarray, step: int):
    if self.active:
      self._clu.write_images(step, {name: image[None]})

  def write_meta(self, meta: dict):
    self.write_json("run_meta.json", meta)

  def write_json(self, name: str, obj):
    if self.active:
      (self.workdir / name).write_text(json.dumps(obj, indent=2, default=str))

  def write_report(self, report: dict, name: str = "report.json"):
    if not self.active:
      return
    path = self.workdir / name
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(report)
    path.write_text(json.dumps(previous, indent=2, default=_jsonable))

  def flush(self):
    if self.active:
      self._clu.flush()
