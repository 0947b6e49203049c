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


def restore_params(path: str, *, prefer_ema: bool = False) -> tuple[Any, dict]:
  """The parameters and meta of the latest checkpoint under `path`: the one parameter reader
  (`evaluate`, `predict`, `export` and `init_from` all restore through it).

  Args:
    path: a workdir, its checkpoints/ or best/ directory, or one step directory; relative,
      absolute or a URL.
    prefer_ema: the run's EMA copy of the parameters when it kept one (what evaluation scores);
      otherwise, and by default, the trained parameters.

  Returns:
    (params, meta): params as host numpy arrays, whole on every process whatever mesh and
    process count wrote them; meta the checkpoint's JSON metadata with "step" set.

  Raises:
    FileNotFoundError: no Orbax checkpoint under `path`.
  """
  mgr, step = find_checkpoint_dir(path)
  # numpy targets: whole arrays on every process, whatever mesh and process count wrote them.
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(mgr.directory) / str(step) / "state").tree
  target = jax.tree_util.tree_map(lambda m: np.broadcast_to(np.zeros((), m.dtype), m.shape), tree)
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  state = restored["state"]
  get = state.get if isinstance(state, dict) else lambda k: getattr(state, k, None)
  params = (get("ema_params") if prefer_ema else None) or get("params")
  logging.info("restored %sparameters of step %d from %s",
               "EMA " if params is get("ema_params") else "", step, mgr.directory)
  meta = dict(restored["meta"] or {})
  meta.setdefault("step", int(step))
  return jax.tree_util.tree_map(jax.device_get, params), meta


def load_initial_params(path: str, template, *, pretrain: bool):
  """Parameters for `template` from a pretraining/fine-tuning checkpoint (Orbax) or a PyTorch
  file, adapted through the PyTorch key space: a pretraining decoder is dropped for a
  classifier, a head of another size is replaced by the template's.

  Args:
    path: an Orbax workdir/checkpoint (`restore_params`) or a .pth/.pt/.bin/.safetensors file.
    template: the target's parameter tree (host arrays), which also supplies what `path` lacks.
    pretrain: whether the target is the MAE pretraining model.

  Returns:
    (params like `template`, `interop.load` match report).

  Raises:
    FileNotFoundError: nothing at `path`.
    svfap_jax.interop.load.CheckpointMismatchError: shapes or keys that cannot be adapted.
  """
  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import files, load, mapping
  # pylint: enable=g-import-not-at-top
  if path.endswith((".pth", ".pt", ".bin", ".safetensors")):
    state_dict = files.load_state_dict(path)
  else:
    params, _ = restore_params(path)
    if "head_norm" not in template:
      # A linear-probe run's head reads standardised features; a target without the
      # standardisation gets the same head folded onto the raw ones.
      from svfap_jax.models import classifier  # pylint: disable=g-import-not-at-top
      params = classifier.fold_feature_standardization(params)
    state_dict = mapping.to_torch_state_dict(params, pretrain="decoder" in params)
  matched, report = load.match_state_dict(state_dict, template, pretrain=pretrain, source=path)
  full = mapping.to_torch_state_dict(template, pretrain=pretrain)
  full.update(matched)
  logging.info("init_from %s: %s", path, report.summary())
  return mapping.from_torch_state_dict(full, template, pretrain=pretrain), report
