"""The run loop shared by pretraining and fine-tuning.

Wires config -> mesh -> model/optimizer/state -> data -> jitted step -> checkpoints/metrics. A run
restarted with the same workdir resumes from its latest checkpoint, including the data order.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
from typing import Any, Optional, Sequence

from clu import periodic_actions
import etils.epath as epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import augment, grain_pipeline
from svfap_jax import api, checkpoint, optim, sharding
from svfap_jax import probe as probe_lib
from svfap_jax.train import config_check, evaluate, steps
from svfap_jax.train.state import TrainState
from svfap_jax.train.writer import RunWriter

# Clips of the host batch whose masked-tube reconstruction is split into static and motion parts
# (visualize.reconstruction_fit) at each reconstruction step: one extra forward of at most this
# many clips.
_RECON_FIT_CLIPS = 16


class Callback:
  """Hooks into `Trainer.run`; subclass and override the methods you need.

  Every process calls its callbacks, in the order given, on the host between steps: whatever
  they do is on the step's critical path. Tests use them to record the data order or to kill a
  run at a chosen step; nothing in the training itself depends on them.
  """

  def on_batch(self, step: int, batch: dict) -> None:
    """Called with each host batch, as read, before it is fed to the device.

    Args:
      step: the optimizer step (0-based) this batch is part of; with accumulation several
        micro-batches share a step.
      batch: this process's rows of the global batch, numpy: "video" uint8 (b, T, H, W, 3),
        "label" int32 (b,), "values" float32 (b, K), "index" int64 (b,) record numbers in the
        split.
    """

  def on_step_end(self, step: int, trainer: "Trainer") -> None:
    """Called after optimizer step `step` (1-based: updates done) and, when due, its checkpoint
    save (possibly still in flight: `trainer.checkpointer.wait()`) and evaluation."""


class _MeetAfterCompiling:
  """A jitted step whose first call compiles, then waits for every process before running.

  Processes finish compiling minutes apart, and the first collective of the step gives a late
  peer little time (gloo, on CPU, 30 s); the coordination service's barrier waits.
  """
  _meetings = 0

  def __init__(self, jitted):
    self.jitted = jitted
    self.met = False

  def __call__(self, *args):
    if not self.met:
      from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
      self.jitted.lower(*args).compile()
      _MeetAfterCompiling._meetings += 1
      multihost.sync_global_processes(f"svfap_step_compiled_{_MeetAfterCompiling._meetings}",
                                      timeout=3600)
      self.met = True
    return self.jitted(*args)


class _Preemption:
  """Turns SIGTERM (what TPU/GPU schedulers send before eviction) into a checkpoint + clean exit.

  Every process must stop at the same step: one that stops alone leaves its peers waiting in the
  next step's collectives. With jax.distributed running, the preemption service of its
  coordination service catches SIGTERM on whichever process gets it and agrees with all
  processes on one step to stop at (`reached`, through Orbax's `reached_preemption`; it must be
  asked at every step). A single process without jax.distributed catches SIGTERM itself.
  """

  def __init__(self, checkpointer):
    self.checkpointer = checkpointer
    self.requested = False
    self.collective = _preemption_service_running()
    if self.collective:
      return  # the service's own SIGTERM handler must stay in place
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
      pass

  def _handler(self, *_):
    logging.warning("SIGTERM received: checkpointing and stopping at the end of this step")
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`; the same answer on every process."""
    if self.collective:
      if self.checkpointer.reached_preemption(step):
        logging.warning("preemption: every process checkpoints and stops at step %d", step)
        return True
      return False
    return self.requested


def _preemption_service_running() -> bool:
  # jax.distributed.initialize starts the service unless this option turns it off.
  return bool(jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service)


class TrainingDiverged(FloatingPointError):
  """Too many consecutive updates had non-finite gradients; the message says why and what to do."""


class _UpdateHealth:
  """Consecutive non-finite updates (skipped by the step's guard) and missing target values.

  `add` takes each update's host metrics in order and says when the run of non-finite updates
  reaches `limit`; the run continues across calls, so the stop does not depend on how the
  updates are grouped (logging windows, accumulation).
  """

  def __init__(self, limit: int):
    self.limit = max(int(limit), 1)
    self.run = 0                  # current run of consecutive non-finite updates
    self.total = 0                # all non-finite updates of this process's run
    self.missing_targets = 0      # NaN target values left out of the loss, over the run
    self.missing_in_run = 0       # ... during the current run of non-finite updates

  def add(self, metrics: list) -> bool:
    stop = False
    for m in metrics:
      missing = int(m.get("missing_targets", 0))
      self.missing_targets += missing
      if int(m["nonfinite"]):
        self.run += 1
        self.total += 1
        self.missing_in_run += missing
        stop = stop or self.run >= self.limit
      else:
        self.run, self.missing_in_run = 0, 0
    return stop

  def message(self, step: int, *, task: str, saved_step: int) -> str:
    head = (f"loss/gradients were NaN or Inf for {self.run} consecutive updates up to step "
            f"{step} (nan_max_consecutive={self.limit}); the updates were skipped and the "
            f"step-{saved_step} checkpoint holds the last finite parameters. ")
    if self.missing_in_run and task == "regression":
      return head + (
          f"Cause in the data: those batches held {self.missing_in_run} missing (NaN) regression "
          "target values; give every clip its values when preparing the dataset (or leave those "
          "clips out)")
    if self.missing_in_run:
      return head + (
          f"Cause in the data: those batches held {self.missing_in_run} unlabelled clips "
          "(label -1); give every training clip a class when preparing the dataset")
    return head + "Lower optim.lr, enable optim.clip_grad or check the data"


def resolve_schedule(config, num_train_clips: int) -> tuple[int, int, int]:
  """(total_steps, warmup_steps, steps_per_epoch) from steps or epochs."""
  clips = num_train_clips * (config.data.num_views if config.mode == "pretrain" else 1)
  steps_per_epoch = max(1, clips // config.batch_size)
  total = config.total_steps or config.num_epochs * steps_per_epoch
  warmup = config.optim.warmup_steps or config.warmup_epochs * steps_per_epoch
  return total, min(warmup, max(total - 1, 0)), steps_per_epoch


# Kept under their former names for callers of the training module.
build_module = api.module_from_config
load_initial_params = checkpoint.load_initial_params


def num_outputs_of(config, info: dict, dataset_dir: str) -> int:
  if config.mode == "pretrain":
    return 0
  if config.task == "classification":
    return int(info["num_classes"])
  names = info.get("value_names") or []
  if names:
    return len(names)
  from data_pipelines import records  # pylint: disable=g-import-not-at-top
  first = records.ClipDataSource(dataset_dir, config.data.train_split)[0]
  if len(first["values"]) == 0:
    raise config_check.ConfigError(
        f"{dataset_dir}: clips carry no regression values; prepare the lists with --regression")
  return len(first["values"])


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Trainer:
  """Holds everything a run needs; `run()` trains to the end (or to a preemption).

  Building one validates the config against the dataset (`config_check.ConfigError` names every
  bad field), creates the mesh, the sharded model and optimizer state, and restores nothing yet:
  `run` resumes from the workdir's latest checkpoint when there is one.
  """

  def __init__(self, config, workdir: str, callbacks: Sequence[Callback] = ()):
    self.callbacks = tuple(callbacks)
    self.mode = config.mode
    self.pretrain = self.mode == "pretrain"
    self.info = config_check.validate(config, mode=self.mode)
    self.config = config
    self.workdir = workdir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    self.dataset_dir = config_check.data_dir(config)
    self.spec = config_check.spec_of(config)
    self.mesh = sharding.create_mesh({k: config.mesh[k] for k in config.mesh})
    self.num_outputs = num_outputs_of(config, self.info, self.dataset_dir)
    n_train = self.info["splits"][config.data.train_split]["num_clips"]
    self.total_steps, self.warmup_steps, self.steps_per_epoch = resolve_schedule(config, n_train)
    self.module = build_module(config, self.spec, self.num_outputs, self.pretrain)
    self.writer = RunWriter(workdir)
    self._build_state()
    if self.checkpointer.latest_step() is None:  # a resumed run restores the head it set
      self.state = probe_lib.init_head_state(self.state, config, self.module, self.dataset_dir,
                                             self.mesh)
    self.preemption = _Preemption(self.checkpointer)
    self._build_steps()
    # None unless config.probe.data.dir names a labelled dataset.
    self.probe = probe_lib.ProbeMonitor.from_config(config, self.mesh, self.module)

  # ----------------------------------------------------------------------------------- state
  def _build_state(self):
    config, spec = self.config, self.spec
    args, kwargs = api.example_inputs(spec, 1, self.pretrain)
    boxed = jax.eval_shape(lambda: self.module.init(jax.random.key(0), *args, **kwargs))["params"]
    logical = nn.get_partition_spec(boxed)
    abstract_params = nn.meta.unbox(boxed)
    self.param_shardings = sharding.tree_shardings(logical, abstract_params, self.mesh)
    optim_cfg = optim_config(config, self.warmup_steps)
    self.tx, self.schedule = optim.make_optimizer(optim_cfg, abstract_params,
                                                  pretrain=self.pretrain,
                                                  total_steps=self.total_steps)
    init_params = jax.jit(
        lambda key: nn.meta.unbox(self.module.init(key, *args, **kwargs)["params"]),
        out_shardings=self.param_shardings)
    params = init_params(jax.random.key(config.seed))
    self.init_report = None
    self.checkpointer = checkpoint.RunCheckpointer(
        self.workdir, keep=config.keep_checkpoints,
        best_metric=None if self.pretrain else config.best_metric,
        best_mode="min" if config.best_metric == "rmse" else "max")
    resuming = self.checkpointer.latest_step() is not None
    if config.init_from and not resuming:
      host_params, self.init_report = load_initial_params(
          config.init_from, jax.tree_util.tree_map(sharding.global_to_host, params),
          pretrain=self.pretrain)
      params = jax.device_put(host_params, self.param_shardings)
    ema = config.optim.ema_decay > 0
    make_state = jax.jit(lambda p: TrainState.create(p, self.tx, config.seed, ema),
                         in_shardings=(self.param_shardings,))
    self.state = make_state(params)
    self.state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, self.state)
    self.writer.write_json("param_shardings.json", {
        "/".join(str(k.key) for k in path): str(s.spec)
        for path, s in jax.tree_util.tree_leaves_with_path(self.param_shardings)})

  def _build_steps(self):
    config = self.config
    batch_shardings = {"video": sharding.batch_sharding(self.mesh, 5),
                       "label": sharding.batch_sharding(self.mesh, 1),
                       "values": sharding.batch_sharding(self.mesh, 2)}
    step = make_train_step(config, self.module, self.tx, self.spec, self.num_outputs,
                           self.pretrain)
    self.trace_count = 0

    def counted(state, batch):
      self.trace_count += 1  # runs only while tracing
      return step(state, batch)

    self.train_step = jax.jit(
        counted, in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
        donate_argnums=(0,))
    if jax.process_count() > 1:
      self.train_step = _MeetAfterCompiling(self.train_step)

  # ------------------------------------------------------------------------------------ data
  def _train_iterator(self, start_record: int = 0):
    """This process's rows of the global batches (the same batches for any process count)."""
    global_batch = self.config.batch_size // self.config.optim.accum_steps
    return iter(train_pipeline(
        self.config, self.dataset_dir, self.pretrain,
        rows=grain_pipeline.process_rows(sharding.batch_sharding(self.mesh), global_batch),
        start_record=start_record))

  def _resume(self):
    """Restores the latest checkpoint; returns (train iterator, step).

    grain keeps one iterator state per process. When the checkpoint was written by another
    number of processes that state cannot be restored; the data stream, which does not depend on
    the process count, is then re-entered at the record the checkpoint's step has reached.
    """
    saved_count = self.checkpointer.data_process_count()
    if saved_count == jax.process_count():
      train_iter = self._train_iterator()
      self.state, _, start = self.checkpointer.restore(_abstract(self.state), train_iter)
      return train_iter, start
    self.state, meta, start = self.checkpointer.restore(_abstract(self.state))
    saved = meta.get("config") or {}
    views = saved.get("data", {}).get("num_views", 1) if self.pretrain else 1
    start_record = start * int(saved.get("batch_size", self.config.batch_size)) // max(views, 1)
    logging.warning(
        "data iterator state of step %d was saved by %s process(es), this run has %d: grain "
        "iterator state is per process and cannot be carried across a changed process count; "
        "continuing the process-count-invariant data stream at record %d instead (exact unless "
        "corrupt records were skipped)", start, saved_count or "no", jax.process_count(),
        start_record)
    return self._train_iterator(start_record), start

  def _meta(self, step: int, extra: Optional[dict] = None) -> dict:
    info = self.info
    meta = {"step": int(step), "config": json.loads(self.config.to_json_best_effort()),
            "model": self.config.model.name, "mode": self.mode,
            "num_outputs": self.num_outputs, "task": self.config.task,
            "label_names": info.get("label_names"), "value_names": info.get("value_names"),
            "preprocessing": info.get("preprocessing"),
            "dataset_dir": str(checkpoint.absolute_path(self.dataset_dir))}
    meta.update(extra or {})
    return meta

  # ------------------------------------------------------------------------------------- run
  def run(self) -> dict:
    """Trains from the latest checkpoint (or step 0) to `total_steps` or a preemption.

    Writes metrics.jsonl, TensorBoard events, checkpoints (every `checkpoint_every_steps` and at
    the end, the best one under best/) and, after fine-tuning, the multi-view test of the last and
    best checkpoints with their predictions. Every process must call it.

    Returns:
      The summary also written to report.json: steps (int, optimizer updates done),
      total_steps, preempted (bool), compilations (traces of the train step, 1 when nothing
      recompiled), nonfinite_steps (skipped updates), missing_target_values (when any), and
      after fine-tuning test_last / test_best (metric dicts) and best_step.

    Raises:
      TrainingDiverged: `nan_max_consecutive` updates in a row were non-finite (the state is
        checkpointed first; the message names the cause in the data when it can).
    """
    config = self.config
    start = 0
    if self.checkpointer.latest_step() is not None:
      train_iter, start = self._resume()
      self.writer.truncate_after(start)
      logging.info("resumed from step %d of %s", start, self.workdir)
    else:
      train_iter = self._train_iterator()
      self.writer.write_meta(self._meta(0, {"init_from": config.init_from,
                                            "init_report": self.init_report and
                                            self.init_report.summary()}))
    eval_every = config.eval_every_steps or self.steps_per_epoch
    progress = self.writer.progress(self.total_steps, config.log_every_steps)
    progress(start)  # the first call starts its clock
    profiler = self._profiler(start)
    window, window_start, window_time = [], start, time.time()
    stopped_early = False
    self._health = _UpdateHealth(config.nan_max_consecutive)
    if self.probe and start == 0:
      self._write_probe(0)
    pending = None  # the previous update's metrics, checked once the next one is under way
    try:
      for step in range(start, self.total_steps):
        update = []
        for _ in range(config.optim.accum_steps):  # micro-batches of one optimizer update
          batch = next(train_iter)
          for callback in self.callbacks:
            callback.on_batch(step, batch)
          global_batch = sharding.host_to_global(
              {k: batch[k] for k in ("video", "label", "values")}, self.mesh)
          self.state, metrics = self.train_step(self.state, global_batch)
          update.append(metrics)
        window.extend(update)
        done = step + 1
        if pending is not None:
          self._check_health(*pending, train_iter)
        pending = (done, update)
        progress(done)
        if profiler:
          profiler(done)
        if done % config.log_every_steps == 0 or done == self.total_steps:
          self._log_window(done, window, window_start, window_time)
          window, window_start, window_time = [], done, time.time()
        if self.pretrain and config.recon_image_every_steps and (
            done % config.recon_image_every_steps == 0 or done == self.total_steps):
          self._write_reconstruction(done, batch)
        # The checkpoint comes before the evaluation: whatever happens in it, the trained state
        # is on disk (the last step's included, before the final test).
        saved = done % config.checkpoint_every_steps == 0 or done == self.total_steps
        if saved:
          with progress.timed("checkpoint", wait_jax_async_dispatch=False):
            self.checkpointer.save(done, self.state, train_iter, self._meta(done), force=True)
        if self.probe and (self.probe.due(done) or done == self.total_steps):
          with progress.timed("probe", wait_jax_async_dispatch=False):
            self._write_probe(done)
        if not self.pretrain and (done % eval_every == 0 or done == self.total_steps):
          with progress.timed("eval", wait_jax_async_dispatch=False):
            result = self.evaluate_split(config.data.eval_split, kind="eval", step=done)
            self.checkpointer.save_best(done, self.state, result, self._meta(done, result))
        for callback in self.callbacks:
          callback.on_step_end(done, self)
        if self.preemption.reached(done):
          if not saved:
            self.checkpointer.save(done, self.state, train_iter, self._meta(done), force=True)
          stopped_early = done < self.total_steps
          break
      if pending is not None:
        self._check_health(*pending, train_iter)
    finally:
      # Lets an asynchronous save in flight finish even when the loop raised.
      self.checkpointer.wait()
    summary = {"steps": int(jax.device_get(self.state.step)), "total_steps": self.total_steps,
               "preempted": stopped_early, "compilations": self.trace_count,
               "nonfinite_steps": self._health.total}
    if self._health.missing_targets:
      summary["missing_target_values"] = self._health.missing_targets
    if self._health.total:
      logging.warning("%d update(s) had NaN/Inf loss or gradients and were skipped (below "
                      "nan_max_consecutive=%d in a row)", self._health.total,
                      self._health.limit)
    if not self.pretrain and not stopped_early:
      summary.update(self.final_test())
    self.writer.write_report(summary)
    self.writer.flush()
    return summary

  def _profiler(self, start: int) -> Optional[periodic_actions.Profile]:
    """clu's profiler for `config.profile_steps` ('A,B': a jax.profiler trace of the updates
    after step A up to step B, into WORKDIR/profile); None when unset or already past A."""
    text = self.config.profile_steps
    if not text:
      return None
    bounds = [int(s) for s in text.split(",")]
    first, last = bounds[0], bounds[-1]
    if start > first:
      return None
    profiler = periodic_actions.Profile(
        logdir=os.path.join(self.workdir, "profile"), num_profile_steps=max(last - first, 1),
        profile_duration_ms=None, first_profile=first, every_secs=None)
    profiler(start)
    return profiler

  def _check_health(self, step: int, update: list, train_iter) -> None:
    """Counts the non-finite updates of optimizer step `step`; stops a diverging run.

    Runs one step behind the dispatch, so the host never waits on the step it just queued; the
    count and its limit do not depend on the logging interval. Before stopping, the state is
    checkpointed: skipped updates leave the parameters at their last finite values.
    """
    stop = self._health.add(jax.device_get([
        {k: m[k] for k in ("nonfinite", "missing_targets") if k in m} for m in update]))
    if not stop:
      return
    done = int(jax.device_get(self.state.step)) // self.config.optim.accum_steps
    if self.checkpointer.latest_step() != done:
      self.checkpointer.save(done, self.state, train_iter, self._meta(done), force=True)
    self.checkpointer.wait()
    raise TrainingDiverged(self._health.message(step, task=self.config.task, saved_step=done))

  def _log_window(self, step, window, window_start, window_time):
    host = jax.device_get(window)
    losses = np.array([float(m["loss"]) for m in host])
    nonfinite = int(sum(int(m["nonfinite"]) for m in host))
    elapsed = max(time.time() - window_time, 1e-9)
    clips_per_s = (step - window_start) * self.config.batch_size / elapsed  # per optimizer step
    lr = float(self.schedule(max(step - 1, 0)))
    finite = losses[np.isfinite(losses)]
    row = {"step": step, "loss": float(finite.mean()) if finite.size else float("nan"), "lr": lr,
           "grad_norm": float(host[-1]["grad_norm"]), "nonfinite_steps": nonfinite,
           "clips_per_s_per_device": clips_per_s / jax.device_count()}
    if "missing_targets" in host[0]:
      row["missing_targets"] = int(sum(int(m["missing_targets"]) for m in host))
    self.writer.write_train(row, total_steps=self.total_steps)

  def _write_probe(self, step: int) -> None:
    """k-NN and linear probe of the current encoder (every process joins: params are sharded)."""
    self.writer.write_eval({"step": step, "split": "probe",
                            **self.probe.run(step, self.state.params)})

  def _write_reconstruction(self, step, batch):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from svfap_jax import visualize  # pylint: disable=g-import-not-at-top
    # Every process joins the gather: parameters may be sharded across processes.
    params = jax.tree_util.tree_map(sharding.global_to_host, self.state.params)
    if jax.process_index() != 0:
      return
    image = visualize.reconstruction_grid(self.module, params, self.spec, batch["video"][:2],
                                          mask_ratio=self.config.mask.ratio, seed=step,
                                          normalize_target=self.config.mask.normalize_target)
    # The grid shows two clips; the fit numbers average more of the batch.
    self.writer.write_eval({"step": step, "split": "reconstruction", **visualize.reconstruction_fit(
        self.module, params, self.spec, batch["video"][:_RECON_FIT_CLIPS],
        mask_ratio=self.config.mask.ratio, seed=step,
        normalize_target=self.config.mask.normalize_target)})
    directory = epath.Path(self.workdir) / "reconstructions"  # local or gs://
    directory.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    (directory / f"step_{step:07d}.png").write_bytes(png.getvalue())
    self.writer.write_image("reconstruction", image, step)

  # ------------------------------------------------------------------------------- evaluation
  def eval_params(self):
    return self.state.ema_params if self.state.ema_params is not None else self.state.params

  def evaluate_split(self, split: str, *, kind: str, step: int, params=None,
                     tag: Optional[str] = None) -> dict:
    result = evaluate.evaluate(
        self.module, self.eval_params() if params is None else params, self.config,
        self.dataset_dir, split, kind=kind, mesh=self.mesh, task=self.config.task,
        label_names=self.info.get("label_names"), value_names=self.info.get("value_names"))
    row = {"step": step, "split": tag or split, **result["metrics"]}
    self.writer.write_eval(row)
    return result["metrics"]

  def final_test(self) -> dict:
    """Multi-view test of the last and the best checkpoint; predictions CSV and plots."""
    config = self.config
    out = {}
    candidates = [("last", self.eval_params())]
    if self.checkpointer.best is not None and self.checkpointer.best.latest_step() is not None:
      best_state, _, best_step = self.checkpointer.restore(
          _abstract(self.state), manager=self.checkpointer.best,
          step=self.checkpointer.best.best_step())
      params = best_state.ema_params if best_state.ema_params is not None else best_state.params
      candidates.append(("best", params))
      out["best_step"] = int(best_step)
    for name, params in candidates:
      result = evaluate.evaluate(
          self.module, params, config, self.dataset_dir, config.data.test_split, kind="test",
          mesh=self.mesh, task=config.task, label_names=self.info.get("label_names"),
          value_names=self.info.get("value_names"))
      self.writer.write_eval({"step": int(jax.device_get(self.state.step)),
                              "split": f"{config.data.test_split}/{name}", **result["metrics"]})
      if jax.process_index() == 0:
        evaluate.write_outputs(result, self.workdir, prefix=f"test_{name}",
                               label_names=self.info.get("label_names"))
      out[f"test_{name}"] = result["metrics"]
    return out


def train_pipeline(config, dataset_dir: str, pretrain: bool, *, rows=None,
                   start_record: int = 0):
  """The grain pipeline of the training split that `train` reads, from the config's data fields.

  Yields host batches of `batch_size // optim.accum_steps // process_count` clips (`rows`: this
  process's rows of each global batch, see `grain_pipeline.process_rows`; None = all of them).
  """
  config_data = config.data
  if pretrain:
    options = dict(pretrain_crop=config_data.crop, num_views=config_data.num_views,
                   pretrain_resize=config_data.pretrain_resize or None)
  else:
    options = dict(train_resize=config_data.train_resize or None,
                   train_crop_size=config_data.train_crop_size or None,
                   train_crop=config_data.train_crop)
  global_batch = config.batch_size // config.optim.accum_steps
  return grain_pipeline.make_pipeline(
      "pretrain" if pretrain else "finetune", dataset_dir, config_data.train_split,
      batch_size=global_batch // jax.process_count(), num_frames=config_data.num_frames,
      sampling_rate=config_data.sampling_rate, img_size=config_data.img_size, seed=config.seed,
      worker_count=config_data.worker_count, rows=rows, start_record=start_record, **options)


def make_train_step(config, module, tx, spec, num_outputs: int, pretrain: bool):
  """The (state, batch) -> (state, metrics) step a run config trains with (not jitted).

  One place that reads the step's options from the config (mask, target normalisation,
  augmentation, EMA), so the trainer, `compile` and the step benchmark build the same step.
  """
  if pretrain:
    return steps.make_pretrain_step(module, tx, spec, mask_kind=config.mask.kind,
                                    mask_ratio=config.mask.ratio,
                                    normalize_target=config.mask.normalize_target,
                                    ema_decay=config.optim.ema_decay)
  return steps.make_finetune_step(module, tx, task=config.task, num_outputs=num_outputs,
                                  augment_cfg=augment_config(config),
                                  ema_decay=config.optim.ema_decay)


def augment_config(config) -> augment.AugmentConfig:
  a = config.augment
  return augment.AugmentConfig(
      img_size=config.data.img_size, crop_scale=(a.min_scale, 1.0),
      flip_prob=0.5 if a.flip else 0.0, rand_augment=a.randaug_num_ops > 0,
      ra_num_ops=max(a.randaug_num_ops, 1), ra_magnitude=float(a.randaug_magnitude),
      erase_prob=a.reprob, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix,
      mixup_switch_prob=a.mixup_switch_prob, label_smoothing=a.label_smoothing)


def optim_config(config, warmup_steps: int):
  """The config with optim.warmup_steps resolved from warmup_epochs."""
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.optim.warmup_steps = int(warmup_steps)
  return resolved


def train(config, workdir: str, callbacks: Sequence[Callback] = ()) -> dict:
  """Trains `config` in `workdir` (resuming its latest checkpoint); returns `Trainer.run`'s
  summary. `callbacks` see every batch and step (`Callback`)."""
  return Trainer(config, workdir, callbacks).run()
