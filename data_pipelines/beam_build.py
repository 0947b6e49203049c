"""`prepare --runner beam`: the same build as the local process pool, as an Apache Beam pipeline.

  python -m svfap_jax prepare --list train=train.csv --out DIR --runner beam [--workers 2]
  python -m svfap_jax prepare --list train=gs://b/vox2/train.txt --out gs://b/vox2_prepared \\
      --runner beam --beam-options "--runner=DataflowRunner --project=P --region=R \\
      --temp_location=gs://b/tmp --extra_package=dist/svfap_jax-0.1.0.tar.gz"

Without `--beam-options` (or with options that name no runner) the pipeline runs on Beam's
DirectRunner in multi-process mode with `--workers` processes, so the Beam path can be tried on
one machine. `apache-beam` is an optional extra (`pip install -e .[beam]`).

What is shared with the local pool (`data_pipelines.build`), so that both write byte-identical
shards, indices, dataset_info.json and prepare_report.json for the same inputs and options:
  * the inputs (`build.collect_inputs`, on the launching machine), the shard plan
    (`build.plan_shards`: clips go round-robin to shards in input order) and the resume scan
    (`build.start_build`: finished shards are kept, never re-sent to the pipeline);
  * the per-clip work (`build.process_clip`, in pipeline workers);
  * the per-shard writing (`build.write_shard`: records in task order, temporary name, index,
    rename; unusable clips go to the shard index's "skipped", never silently dropped);
  * the report (`build.finish_build`, on the launching machine, from the shard indices).

Pipeline: shard plans are written once to a JSON-lines file in the output directory (the job
graph only carries each plan's byte range, so a million clips do not inflate it) -> each plan is
read back (etils.epath) -> its clips are spread over the workers (Reshuffle) and decoded ->
grouped back by shard (CoGroupByKey with the plan, so empty shards are written too) -> each shard
is sorted by position and written. Shards a retried or speculative bundle writes twice hold the
same bytes, each written under its own temporary name before the rename.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from typing import Callable, Iterator, Optional, Sequence

from etils import epath

from data_pipelines import build
from data_pipelines import records

PLAN_FILE = "_beam_plans.jsonl"
# Runners whose workers share the launching machine's file system (local --out is fine).
LOCAL_RUNNERS = ("directrunner", "direct", "fnapirunner", "prismrunner", "prism",
                 "interactiverunner", "bundlebaseddirectrunner", "switchingdirectrunner")
# Runners whose workers never see the launching machine's files.
CLOUD_RUNNERS = ("dataflowrunner", "dataflow")
INSTALL_HINT = "pip install -e .[beam]  (or: pip install 'apache-beam>=2.72,<3')"


class BeamUnavailable(ImportError):
  """apache-beam is not installed."""


class PipelineIncomplete(RuntimeError):
  """The pipeline ended without writing every planned shard completely."""


def _beam():
  try:
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise BeamUnavailable(f"--runner beam needs Apache Beam, which is not installed ({e}); "
                          f"{INSTALL_HINT}") from None
  return beam


# ------------------------------------------------------------------------------------------------
# Plans <-> JSON lines.
# ------------------------------------------------------------------------------------------------


def plan_to_json(plan: build.ShardPlan) -> str:
  """One shard plan as a single JSON line (NaN values, for missing targets, stay NaN)."""
  return json.dumps(dataclasses.asdict(plan), ensure_ascii=False, sort_keys=True)


def plan_from_json(text: str) -> build.ShardPlan:
  d = json.loads(text)
  tasks = [build.ClipTask(**{**t, "values": tuple(t["values"])}) for t in d["tasks"]]
  return build.ShardPlan(d["split"], d["index"], d["count"], tasks, d["fingerprint"])


def write_plans(path: str, plans: Sequence[build.ShardPlan]) -> list[tuple[str, int, int]]:
  """Writes `plans` as JSON lines to `path`; returns (shard name, byte offset, byte length)."""
  refs, offset, chunks = [], 0, []
  for plan in plans:
    blob = (plan_to_json(plan) + "\n").encode("utf-8")
    refs.append((plan.name, offset, len(blob)))
    chunks.append(blob)
    offset += len(blob)
  epath.Path(path).write_bytes(b"".join(chunks))
  return refs


def read_plan(path: str, offset: int, length: int) -> build.ShardPlan:
  with epath.Path(path).open("rb") as f:
    f.seek(offset)
    return plan_from_json(f.read(length).decode("utf-8"))


# ------------------------------------------------------------------------------------------------
# Pipeline options.
# ------------------------------------------------------------------------------------------------


def pipeline_options(beam_options: Sequence[str] | str = (), workers: int = 1):
  """Beam `PipelineOptions` from `--beam-options` flags, defaulting to the multi-process
  DirectRunner with `workers` processes.

  Args:
    beam_options: Beam flags, as a list or one shell-quoted string
      ("--runner=DataflowRunner --project=P ...").
    workers: processes of the DirectRunner when the flags name no runner and no worker count.

  Raises:
    ValueError: flags Beam does not know.
  """
  _beam()
  from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel
  flags = shlex.split(beam_options) if isinstance(beam_options, str) else list(beam_options)
  opts = po.PipelineOptions(flags)
  unknown = _unknown_flags(opts, flags)
  if unknown:
    raise ValueError(f"--beam-options: unknown Beam option(s) {', '.join(unknown)} (see "
                     "`python -m apache_beam.examples.wordcount --help` for the known ones)")
  std = opts.view_as(po.StandardOptions)
  if std.runner is None:
    std.runner = "DirectRunner"
  if _is_direct(std.runner):
    direct = opts.view_as(po.DirectOptions)
    if not any(f.startswith("--direct_running_mode") for f in flags):
      direct.direct_running_mode = "multi_processing"
    if not any(f.startswith("--direct_num_workers") for f in flags):
      direct.direct_num_workers = max(1, int(workers))
    if not any(f.startswith("--default_sdk_harness_log_level") for f in flags):
      # Local worker processes print on our terminal: their INFO lines would bury the summary.
      opts.view_as(po.WorkerOptions).default_sdk_harness_log_level = "ERROR"
  return opts


def options_to_flags(options=None, runner=None) -> list[str]:
  """Beam flags that rebuild `options` (a `PipelineOptions`, e.g. TFDS's `beam_options`).

  Args:
    options: the options; None for none.
    runner: a runner instance or name, used when `options` names no runner.
  """
  flags = []
  values = {}
  if options is not None:
    values = options.get_all_options(drop_default=True, retain_unknown_options=True)
  if runner is not None and not values.get("runner"):
    values["runner"] = runner if isinstance(runner, str) else type(runner).__name__
  for key, value in sorted(values.items()):
    if value is None or value is False:
      continue
    if value is True:
      flags.append(f"--{key}")
    elif isinstance(value, (list, tuple)):
      flags += [f"--{key}={v}" for v in value]
    elif isinstance(value, dict):
      flags.append(f"--{key}={json.dumps(value)}")
    else:
      flags.append(f"--{key}={value}")
  return flags


def _unknown_flags(opts, flags: Sequence[str]) -> list[str]:
  known = set(opts.get_all_options(retain_unknown_options=False))
  unknown = []
  for f in flags:
    if f.startswith("--"):
      name = f[2:].split("=", 1)[0].replace("-", "_")
      if name not in known and not (name.startswith("no_") and name[3:] in known):
        unknown.append(f.split("=", 1)[0])
  return unknown


def _runner_name(opts) -> str:
  from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel
  runner = opts.view_as(po.StandardOptions).runner or "DirectRunner"
  return runner if isinstance(runner, str) else type(runner).__name__


def _is_direct(runner) -> bool:
  name = runner if isinstance(runner, str) else type(runner).__name__
  return name.lower().rsplit(".", 1)[-1] in ("directrunner", "direct")


# ------------------------------------------------------------------------------------------------
# Pipeline steps (run in Beam workers; module-level, so they pickle by reference).
# ------------------------------------------------------------------------------------------------


def _load_plan(ref: tuple, plan_file: str) -> build.ShardPlan:
  _, offset, length = ref
  return read_plan(plan_file, offset, length)


def _process(item: tuple, options: build.PrepareOptions) -> tuple:
  """(shard, position, task) -> (shard, (position, status, payload, meta))."""
  from apache_beam.metrics import Metrics  # pylint: disable=import-outside-toplevel
  build._init_worker()  # pylint: disable=protected-access
  name, position, task = item
  status, payload, meta = build.process_clip(task, options)
  Metrics.counter("prepare", "clips_written" if status == "ok" else "clips_skipped").inc()
  return name, (position, status, payload, meta)


def _write(item: tuple, out_dir: str, options: build.PrepareOptions) -> tuple:
  """(shard, {"plan": [plan], "clips": results}) -> (shard, records, skipped)."""
  build._init_worker()  # pylint: disable=protected-access
  name, grouped = item
  plans = list(grouped["plan"])
  if len(plans) != 1:
    raise RuntimeError(f"shard {name}: {len(plans)} plans")
  plan = plans[0]
  results = sorted(grouped["clips"], key=lambda r: r[0])
  positions = [r[0] for r in results]
  if positions != list(range(len(plan.tasks))):
    raise RuntimeError(f"shard {name}: expected clip positions 0..{len(plan.tasks) - 1}, got "
                       f"{len(results)} results")
  index = build.write_shard(out_dir, plan, options, iter([r[1:] for r in results]))
  return name, index["num_records"], len(index["skipped"])


def _tasks_of(plan: build.ShardPlan) -> Iterator[tuple]:
  for position, task in enumerate(plan.tasks):
    yield plan.name, position, task


def _keyed(plan: build.ShardPlan) -> tuple:
  return plan.name, plan


def build_pipeline(pipeline, out_dir: str, plan_file: str, refs: Sequence[tuple],
                   options: build.PrepareOptions):
  """Adds the prepare steps to `pipeline`; returns the PCollection of (shard, records, skipped)."""
  beam = _beam()
  plans = (pipeline
           | "ShardRefs" >> beam.Create(list(refs))
           | "SpreadRefs" >> beam.Reshuffle()
           | "LoadPlans" >> beam.Map(_load_plan, plan_file))
  clips = (plans
           | "Clips" >> beam.FlatMap(_tasks_of)
           | "SpreadClips" >> beam.Reshuffle()
           | "ProcessClips" >> beam.Map(_process, options))
  keyed = plans | "KeyPlans" >> beam.Map(_keyed)
  return ({"plan": keyed, "clips": clips}
          | "GroupByShard" >> beam.CoGroupByKey()
          | "WriteShards" >> beam.Map(_write, out_dir, options))


# ------------------------------------------------------------------------------------------------
# Driver.
# ------------------------------------------------------------------------------------------------


def prepare(out_dir: str, inputs: build.Inputs, options: build.PrepareOptions, *,
            num_shards: Optional[int] = None, clips_per_shard: int = 256, workers: int = 1,
            strict: bool = False, beam_options: Sequence[str] | str = (),
            say: Callable[[str], None] = print) -> dict:
  """`build.prepare` on Apache Beam: same shards, indices, dataset_info.json and report.

  Args:
    out_dir: local folder or URL (gs://...). Dataflow needs a URL; Spark / Flink workers must
      see a local path at the same place (a warning says so).
    workers: DirectRunner processes (when `beam_options` name no runner nor worker count).
    strict: the pipeline processes every clip; then, if any was unusable, the shards holding
      unusable clips are removed and `StrictStop` names the first one in shard order (the clip
      the local pool would have stopped at).
    beam_options: Beam flags (see `pipeline_options`).

  Returns:
    The report dict (as written to prepare_report.json).

  Raises:
    BeamUnavailable: apache-beam is not installed.
    ValueError: bad options, or a local `out_dir` with Dataflow.
    StrictStop: with `strict`, when an input could not be used.
    PipelineIncomplete: the pipeline ended without writing every planned shard completely.
  """
  beam = _beam()
  opts = pipeline_options(beam_options, workers)
  runner = _runner_name(opts)
  out_dir = build.check_out_dir(out_dir)
  kind = runner.lower().rsplit(".", 1)[-1]
  if kind in CLOUD_RUNNERS:
    if records.is_local(out_dir):
      raise ValueError(f"--out {out_dir} is a local folder, which the workers of {runner} cannot "
                       "write to; give a URL they share (gs://bucket/dir)")
    local = [t.path for t in inputs.tasks if records.is_local(t.path)]
    if local:
      raise ValueError(f"{len(local)} input clip(s) are local paths (first: {local[0]}), which "
                       f"the workers of {runner} cannot read; name the clips by URL in the lists "
                       "(gs://bucket/..., or paths relative to a list at a URL)")
  elif records.is_local(out_dir) and kind not in LOCAL_RUNNERS:
    # A Spark or Flink cluster may share a mounted file system; only its owner knows.
    print(f"prepare: warning: --out {out_dir} is a local path: every {runner} worker must see "
          "it at that same path (a shared mount), or give a URL (gs://...)", file=sys.stderr)
  state = build.start_build(out_dir, inputs, options, num_shards=num_shards,
                            clips_per_shard=clips_per_shard, say=say)
  plan_file = os.fspath(epath.Path(out_dir) / PLAN_FILE)
  if state.todo:
    refs = write_plans(plan_file, state.todo)
    clips = sum(len(p.tasks) for p in state.todo)
    say(f"beam ({runner}): {clips} clips in {len(state.todo)} shard(s)")
    with beam.Pipeline(options=opts) as pipeline:
      build_pipeline(pipeline, out_dir, plan_file, refs, options)
    epath.Path(plan_file).unlink(missing_ok=True)
  written_now = 0
  incomplete = []
  for plan in state.todo:
    index = build.shard_is_complete(os.fspath(epath.Path(out_dir) / plan.name), plan.fingerprint)
    if index is None:
      incomplete.append(plan.name)
      continue
    state.done[plan.name] = index
    written_now += index["num_records"]
  if incomplete:
    raise PipelineIncomplete(f"the Beam pipeline ended without completing shard(s) "
                       f"{', '.join(incomplete[:5])}{' ...' if len(incomplete) > 5 else ''} in "
                       f"{out_dir}; re-run to complete them (finished shards are kept)")
  if strict:
    _strict_check(out_dir, state)
  return build.finish_build(out_dir, inputs, options, state, written_now)


def _strict_check(out_dir: str, state: build.BuildState) -> None:
  """Removes the new shards that hold unusable clips and raises for the first such clip."""
  first = None
  for plan in state.todo:
    skipped = state.done[plan.name].get("skipped") or []
    if skipped:
      first = first or skipped[0]
      for path in (epath.Path(out_dir) / plan.name,
                   epath.Path(out_dir) / (plan.name + records.INDEX_SUFFIX)):
        path.unlink(missing_ok=True)
  if first is not None:
    raise build.StrictStop(first["source"], first["reason"])
