"""Orbax checkpoints of a run: train state + data-iterator state + config/metadata.

Layout of a workdir:
  checkpoints/<step>/{state,data,meta}   last `keep` checkpoints, for resuming (async writes)
  best/<step>/{state,meta}               the best checkpoint by the selection metric
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a crash
(even SIGKILL) mid-write leaves the previous checkpoint intact and resuming picks it up.

Orbax accepts only absolute paths; every path handed to it here goes through `absolute_path`, so
callers may pass paths relative to the current directory (and gs:// URLs stay URLs).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

import etils.epath as epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def absolute_path(path) -> epath.Path:
  """`path` as an absolute epath.Path: local paths resolved against the current directory (and
  `~` expanded); URLs such as gs://bucket/run, which are already absolute, are left unchanged."""
  p = epath.Path(path)
  if p.is_absolute():
    return p
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def open_manager(directory, *, item_names=("state", "data", "meta"),
                 **options) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager for `directory` (relative, absolute or a URL).

  `options` are CheckpointManagerOptions fields; without any the manager only reads.
  """
  return ocp.CheckpointManager(
      absolute_path(directory), item_names=item_names,
      options=ocp.CheckpointManagerOptions(**options) if options else None)


def _options(**kw):
  return ocp.CheckpointManagerOptions(create=True, **kw)


class RunCheckpointer:
  """Last-N checkpoints (with data iterator) plus a best-by-metric checkpoint."""

  def __init__(self, workdir: str, *, keep: int = 2, best_metric: Optional[str] = None,
               best_mode: str = "max", async_save: bool = True):
    root = absolute_path(workdir)
    self.last = ocp.CheckpointManager(
        root / "checkpoints",
        options=_options(max_to_keep=keep, enable_async_checkpointing=async_save),
        item_names=("state", "data", "meta"))
    self.best = None
    self.best_metric = best_metric
    if best_metric:
      self.best = ocp.CheckpointManager(
          root / "best",
          options=_options(max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
                           keep_checkpoints_without_metrics=False,
                           enable_async_checkpointing=async_save),
          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.last.latest_step()

  def data_process_count(self, step: Optional[int] = None) -> Optional[int]:
    """How many processes wrote the data-iterator state of a checkpoint (None: it has none).

    grain saves one `process_<i>-of-<n>.json` per process and restores only into the same n.
    """
    step = self.last.latest_step() if step is None else step
    if step is None:
      return None
    counts = set()
    for path in (epath.Path(self.last.directory) / str(step) / "data").glob("process_*-of-*.json"):
      match = re.fullmatch(r"process_\d+-of-(\d+)\.json", path.name)
      if match:
        counts.add(int(match.group(1)))
    return counts.pop() if len(counts) == 1 else None

  def save(self, step: int, state, data_iterator=None, meta: Optional[dict] = None,
           force: bool = False) -> bool:
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.last.save(step, args=ocp.args.Composite(**items), force=force)

  def save_best(self, step: int, state, metrics: dict, meta: Optional[dict] = None) -> bool:
    if self.best is None or self.best_metric not in metrics:
      return False  # e.g. an evaluation split without labels has no metric to select by
    return self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

  def restore(self, abstract_state, data_iterator=None, step: Optional[int] = None,
              manager: Optional[ocp.CheckpointManager] = None):
    """Returns (state, meta, step). `abstract_state` gives shapes/shardings to restore into."""
    manager = manager or self.last
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    if data_iterator is not None and manager is self.last:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["meta"], step

  def reached_preemption(self, step: int) -> bool:
    """Orbax's multi-process preemption sync point (False without jax.distributed)."""
    return self.last.reached_preemption(step)

  def wait(self):
    self.last.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    self.last.close()
    if self.best is not None:
      self.best.close()


def find_checkpoint_dir(path: str) -> tuple[ocp.CheckpointManager, int]:
  """A workdir, its checkpoints/ or best/ dir, or one step dir -> (manager, step) to read."""
  p = absolute_path(path)
  candidates = [p / "checkpoints", p / "best", p]
  for c in candidates:
    if c.exists():
      mgr = open_manager(c)
      step = mgr.latest_step()
      if step is not None:
        return mgr, step
  if p.name.isdigit() and p.parent.exists():
    return open_manager(p.parent), int(p.name)
  raise FileNotFoundError(
      f"{path}: no Orbax checkpoint found (looked in {', '.join(str(c) for c in candidates)})")


def restore_params(path: str) -> tuple[Any, dict]:
  """Just the parameters (and meta) of the latest checkpoint under `path`, as host numpy trees."""
  mgr, step = find_checkpoint_dir(path)
  # numpy targets: whole arrays on every process, whatever mesh and process count wrote them.
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(mgr.directory) / str(step) / "state").tree
  target = jax.tree_util.tree_map(lambda m: np.broadcast_to(np.zeros((), m.dtype), m.shape), tree)
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  state = restored["state"]
  params = state["params"] if isinstance(state, dict) else state.params
  logging.info("restored parameters of step %d from %s", step, mgr.directory)
  return jax.tree_util.tree_map(lambda x: jax.device_get(x), params), dict(restored["meta"] or {})
