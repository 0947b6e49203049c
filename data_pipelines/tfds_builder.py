"""TFDS builder `svfap_face_clips`: prepared face-clip shards (or raw data) as a TFDS dataset.

Everything is read from the manual directory; nothing is downloaded:

  import tensorflow_datasets as tfds
  from data_pipelines import tfds_builder  # registers the builder

  builder = tfds.builder("svfap_face_clips/dfew_fold1", data_dir=DATA_DIR)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
  ds = builder.as_dataset(split="train")            # or tfds.load(..., data_dir=DATA_DIR)
  # Random access: builder.download_and_prepare(file_format="array_record", ...), then
  # tfds.data_sources("svfap_face_clips/dfew_fold1", data_dir=DATA_DIR)

MANUAL_DIR may hold
  * a prepared dataset (`dataset_info.json` + `{split}.tfrecord-*` shards from `prepare`): used as
    is, any config;
  * the raw dataset of the config's recipe (e.g. DFEW's EmoLabel_DataSplit/ + Clip/): prepared
    first with that recipe and fold;
  * original-format lists `{split}.csv` / `{split}.txt` ('<path> <label>'): prepared first.
Preparing uses `PREPARE_OPTIONS` (176 px short side, no face crop) into the download dir.

With Beam options (`tfds build --beam_pipeline_options=...`, or `DownloadConfig(beam_options=...)`)
the builder is distributed the same way as `prepare --runner beam`: raw data is prepared by the
Beam pipeline of `data_pipelines.beam_build` (same shards as the local pool), and the TFDS splits
are then written by TFDS's own Beam pipeline, one prepared shard per work item. Without them it
runs on one machine as before.

  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=MANUAL_DIR, beam_options=beam.options.pipeline_options.PipelineOptions(
          ["--runner=DataflowRunner", "--project=P", ...])))

Features: id (text), frames (Video of JPEG frames, sizes vary per clip), label (ClassLabel; -1 =
none), values (float32 vector, may be empty), fps (float32), source (text).
"""
from __future__ import annotations

import glob
import os
import shlex
from typing import Optional, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import build
from data_pipelines import records
from data_pipelines import recipes

PREPARE_OPTIONS = build.PrepareOptions()


class SvfapFaceClipsConfig(tfds.core.BuilderConfig):
  """A recipe + fold, or the generic config (labels taken from the prepared dataset)."""

  def __init__(self, *, recipe: Optional[str] = None, fold: int = 1,
               label_names: Optional[Sequence[str]] = None, **kwargs):
    super().__init__(**kwargs)
    self.recipe = recipe
    self.fold = fold
    self.label_names = tuple(label_names) if label_names is not None else None


def _configs() -> list[SvfapFaceClipsConfig]:
  out = [SvfapFaceClipsConfig(name="generic", description="Any prepared face-clip dataset; "
                              "label names come from its dataset_info.json.")]
  labels = {"dfew": recipes.DFEW_LABELS, "ferv39k": recipes.FERV39K_LABELS,
            "mafw": recipes.MAFW_LABELS, "crema_d": recipes.CREMA_D_LABELS,
            "ravdess": recipes.RAVDESS_LABELS, "enterface05": recipes.ENTERFACE_LABELS,
            "voxceleb2": ()}
  for recipe, names in labels.items():
    folds = recipes.NUM_FOLDS[recipe]
    for fold in range(1, folds + 1):
      name = recipe if folds == 1 else f"{recipe}_fold{fold}"
      out.append(SvfapFaceClipsConfig(name=name, recipe=recipe, fold=fold, label_names=names,
                                      description=f"{recipe} (fold {fold} of {folds})"))
  from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
  out.append(SvfapFaceClipsConfig(name="synthetic", label_names=synthetic.EMOTIONS,
                                  description="Synthetic drawn face clips (7 DFEW classes)."))
  return out


class SvfapFaceClips(tfds.core.GeneratorBasedBuilder):
  """Face video clips for dynamic facial expression recognition (SVFAP)."""

  VERSION = tfds.core.Version(records.BUILDER_VERSION)
  RELEASE_NOTES = {records.BUILDER_VERSION: "Face-clip records of svfap_jax."}
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "generic"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put in the manual dir either a prepared dataset (`python -m svfap_jax prepare ... --out DIR`:
  dataset_info.json + *.tfrecord-* shards), the raw dataset laid out as the config's recipe
  expects (see data_pipelines/recipes.py), or '<path> <label>' lists named {split}.csv.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default lookup imports `importlib_resources`, which it only requires on Python < 3.9.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    names = self.builder_config.label_names
    label = tfds.features.ClassLabel(names=list(names)) if names is not None else \
        tfds.features.ClassLabel()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "frames": tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg"),
            "label": label,
            "values": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "source": tfds.features.Text(),
        }),
        supervised_keys=("frames", "label"),
        homepage="https://github.com/sunlicai/SVFAP",
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # The Beam settings reach the split writers only; preparing raw data needs them too.
    self._beam = None
    if download_config is not None and (download_config.beam_options is not None
                                        or download_config.beam_runner is not None):
      self._beam = (download_config.beam_runner, download_config.beam_options)
    return super()._download_and_prepare(dl_manager, download_config)

  def _prepare_argv(self) -> list[str]:
    """`prepare` flags that run it on Beam when the build itself runs on Beam."""
    if getattr(self, "_beam", None) is None:
      return []
    from data_pipelines import beam_build  # pylint: disable=import-outside-toplevel
    runner, options = self._beam
    return ["--runner", "beam", "--beam-options",
            shlex.join(beam_build.options_to_flags(options, runner))]

  def _prepared_dir(self, dl_manager) -> str:
    manual = os.fspath(dl_manager.manual_dir)
    if os.path.exists(os.path.join(manual, records.INFO_FILE)):
      return manual
    out = os.path.join(os.fspath(dl_manager.download_dir), f"prepared_{self.builder_config.name}")
    argv = ["--out", out, "--quiet", "--short-side", str(PREPARE_OPTIONS.short_side),
            *self._prepare_argv()]
    config = self.builder_config
    lists = sorted(glob.glob(os.path.join(glob.escape(manual), "*.csv"))
                   + glob.glob(os.path.join(glob.escape(manual), "*.txt")))
    if config.recipe:
      argv += ["--recipe", config.recipe, "--src", manual, "--fold", str(config.fold)]
    elif lists:
      for path in lists:
        argv += ["--list", f"{os.path.splitext(os.path.basename(path))[0]}={path}"]
      if config.label_names:
        argv += ["--label-names", ",".join(config.label_names)]
    else:
      raise FileNotFoundError(
          f"{manual} holds neither a prepared dataset ({records.INFO_FILE}) nor '<path> <label>' "
          f"lists; config {config.name!r} has no recipe to read raw data with."
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    code = build.main(argv)
    if code != 0:
      raise RuntimeError(f"preparing {manual} for svfap_face_clips/{config.name} failed "
                         f"(exit {code}); run `python -m svfap_jax prepare` on it to see why")
    return out

  def _split_generators(self, dl_manager):
    prepared = self._prepared_dir(dl_manager)
    info = records.load_info(prepared)
    label_feature = self.info.features["label"]
    names = info.get("label_names") or []
    if self.builder_config.label_names is None:
      label_feature.names = list(names)
    elif names and list(names) != list(self.builder_config.label_names):
      raise ValueError(f"{prepared} has labels {names}, config "
                       f"{self.builder_config.name!r} expects {list(label_feature.names)}")
    if getattr(self, "_beam", None) is not None:
      beam = tfds.core.lazy_imports.apache_beam
      return {split: (beam.Create(records.find_shards(prepared, split))
                      | f"ReadShards_{split}" >> beam.FlatMap(shard_examples))
              for split in records.list_splits(prepared)}
    return {split: self._generate_examples(prepared, split)
            for split in records.list_splits(prepared)}

  def _generate_examples(self, prepared: str, split: str):
    stats = records.ReadStats()
    for clip in records.iter_clips(prepared, split, stats):
      yield clip["id"], _example(clip)
    _check_read(stats, f"{prepared} split {split!r}")


def _example(clip: dict) -> dict:
  return {
      "id": clip["id"],
      "frames": clip["frames"],  # encoded JPEGs pass through unchanged
      "label": clip["label"],
      "values": clip["values"],
      "fps": np.float32(clip["fps"]),
      "source": clip["source"],
  }


def _check_read(stats: records.ReadStats, where: str) -> None:
  if stats.corrupt or stats.truncated_shards:
    raise RuntimeError(f"{where}: {stats.corrupt} corrupt record(s), truncated shards "
                       f"{stats.truncated_shards}; re-run prepare")


def shard_examples(shard_path: str):
  """(id, example) of every record of one prepared shard (a Beam work item of the TFDS build).

  Raises:
    RuntimeError: a corrupt record or a truncated shard.
  """
  stats = records.ReadStats()
  try:
    offsets = records.read_index(shard_path)["offsets"]
  except (OSError, ValueError):
    offsets = None
  for _, _, data in records.iter_shard(shard_path, stats, offsets):
    try:
      clip = records.decode_clip(data)
    except (ValueError, UnicodeDecodeError):
      stats.corrupt += 1
      continue
    yield clip["id"], _example(clip)
  _check_read(stats, shard_path)
