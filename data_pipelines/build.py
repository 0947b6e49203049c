"""`prepare`: videos / frame folders / CSV lists -> sharded face-clip TFRecords.

Usage (through `python -m svfap_jax prepare ...`, or `main(argv)`):

  # Original SVFAP lists, one "<path> <label>" per line (0-based labels; the label is the LAST
  # whitespace-separated field, so paths may contain spaces; relative paths are resolved against
  # the list's folder). Each --list is "[SPLIT=]PATH": without "SPLIT=" it goes to --split.
  prepare --list train.csv --split train --out DIR [--num-classes 7 | --label-names a,b,...]
  prepare --list train=lists/train.csv --list test=lists/test.csv --out DIR

  # Lists numbered 1..K (DFEW's label files, many others): --label-base 1 stores them as 0..K-1.
  # Lists in which no clip has class 0 are refused until --label-base says how they count
  # (--label-base 0 keeps the numbers); dataset_info.json records the base.
  prepare --list train=train.txt --list test=test.txt --label-base 1 --out DIR

  # Regression targets, "<path> <v1> <v2> ..." per line (valence/arousal, Big-Five, ...): clips
  # also in a --list of the same split get both a class and values, others get label -1.
  # A clip one of its split's lists misses is kept and flagged, never dropped or silently
  # filled: without values it stores NaN values (training and metrics leave them out), without
  # a class (where the split has a class list) label -1; prepare_report.json lists each under
  # "missing_values" / "missing_labels", the summary warns, --strict stops at the first.
  prepare --regression train=va_train.csv --value-names valence,arousal --out DIR
  prepare --list train=cls.txt --regression train=va.txt --value-names valence,arousal --out DIR

  # Official dataset layouts (see data_pipelines/recipes.py).
  prepare --recipe dfew --src RAW_DIR --fold 1 --out DIR

  # --out may be a URL (gs://bucket/dir, ...): every shard, index, dataset_info.json and
  # prepare_report.json is written, and a re-run's resume scan read, through etils.epath.
  prepare --recipe voxceleb2 --src /data/voxceleb2 --out gs://bucket/vox2
  # Lists, and the clips they name, may be URLs too: lists are read, and each clip is copied to
  # a temporary local file (or folder) for decoding, through etils.epath. Relative paths in a
  # list at a URL resolve against the list's folder there.
  prepare --list train=gs://bucket/vox2/train.txt --out gs://bucket/vox2_prepared

  # Any tree of videos / frame folders; the label is the parent folder's name when it is one of
  # --label-names (case-insensitive), else -1.
  prepare --src-dir DIR [--split train] [--label-names ...] --out DIR

Common options: --short-side 176 (frames are stored with this shorter side; 1.1x the 160 crop),
--jpeg-quality 90, --face-crop (Haar face detection + smoothed square crop; frames are then
short-side x short-side), --max-frames N (keep the first N), --fps F (drop frames down to F),
--folder-fps 25 (rate assumed for frame folders), --num-shards N per split or --clips-per-shard M
(default 256), --workers N (processes), --strict, --quiet.

Behaviour:
  * Clips go to shards round-robin in input order, so the output depends only on the inputs and
    options, never on --workers: any worker count writes byte-identical shards.
  * Every unusable input (missing or empty file, truncated video, missing frame folder, unreadable
    image, list line without a label, label out of range, ...) is skipped and listed with its
    reason in OUT/prepare_report.json and the printed summary. --strict stops at the first one
    instead (list problems first, then clips in processing order, shard by shard), exits with
    status 2 and names the path and the reason.
  * Re-running resumes: a shard whose index matches (same clips, same options), whose record
    framing walks cleanly to the end of the file and whose last record passes its checksum is
    kept untouched; others are rewritten under a temporary name and renamed into place. Shards
    of an older shard count for the same split are removed. (Data checksums of the other records
    are checked by the readers, not here: that would mean reading the whole dataset.)
  * OUT/dataset_info.json is rebuilt from all shard indices in OUT at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import posixpath
import re
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator, Optional, Sequence

import cv2
from etils import epath
import numpy as np
import tqdm

from data_pipelines import face_crop as faces
from data_pipelines import records
from data_pipelines import recipes
from data_pipelines import video_io
from data_pipelines.recipes import ClipTask

REPORT_FILE = "prepare_report.json"


def _in(out_dir: str, name: str) -> str:
  """`name` inside the output directory, which may be a local path or a URL (gs://...)."""
  return os.fspath(epath.Path(out_dir) / name)


def check_out_dir(out_dir: str) -> str:
  """`out_dir` if etils.epath can write there; every output file goes through epath.

  Raises:
    ValueError: a URL whose scheme epath does not know (it would otherwise become a local
      folder named after the scheme).
  """
  out_dir = os.fspath(out_dir)
  try:
    epath.Path(out_dir)
  except (KeyError, NotImplementedError):
    scheme = out_dir.split("://", 1)[0]
    raise ValueError(f"--out {out_dir}: cannot write to {scheme}:// URLs; give a local folder or "
                     "a gs://, s3://, az:// or hf:// URL (written through etils.epath)") from None
  return out_dir


# ------------------------------------------------------------------------------------------------
# Options and tasks.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """How every clip is turned into a record."""
  short_side: int = 176
  jpeg_quality: int = 90
  face_crop: bool = False
  face: faces.FaceCropSpec = faces.FaceCropSpec()
  max_frames: Optional[int] = None
  fps: Optional[float] = None
  folder_fps: float = video_io.DEFAULT_FOLDER_FPS
  min_frames: int = 1
  # Face crops are taken from frames kept up to this many times the output size, so a face that
  # fills a quarter of the frame is still cropped without upscaling.
  face_source_factor: int = 4

  def validate(self) -> "PrepareOptions":
    errors = []
    if self.short_side < 8:
      errors.append(f"--short-side={self.short_side} must be >= 8")
    if not 1 <= self.jpeg_quality <= 100:
      errors.append(f"--jpeg-quality={self.jpeg_quality} must be in 1..100")
    if self.max_frames is not None and self.max_frames < 1:
      errors.append(f"--max-frames={self.max_frames} must be >= 1")
    if self.fps is not None and self.fps <= 0:
      errors.append(f"--fps={self.fps} must be > 0")
    if self.folder_fps <= 0:
      errors.append(f"--folder-fps={self.folder_fps} must be > 0")
    if errors:
      raise ValueError("invalid prepare options: " + "; ".join(errors))
    return self

  def spec(self) -> dict:
    """The preprocessing spec recorded in indices and dataset_info.json."""
    out = {
        "short_side": self.short_side,
        "jpeg_quality": self.jpeg_quality,
        "max_frames": self.max_frames,
        "target_fps": self.fps,
        "folder_fps": self.folder_fps,
        "min_frames": self.min_frames,
        "face_crop": self.face_crop,
        "decoder": "pyav (opencv fallback); frame folders: opencv",
        "resize": "shorter side to short_side, INTER_AREA down / INTER_LINEAR up",
    }
    out.update(faces.crop_description(self.face_crop, self.face, self.face_source_factor))
    return out


@dataclasses.dataclass
class Inputs:
  """Everything to build: tasks per split plus the problems found while reading the inputs."""
  tasks: list[ClipTask] = dataclasses.field(default_factory=list)
  skipped: list[dict] = dataclasses.field(default_factory=list)
  label_names: Optional[tuple[str, ...]] = None
  value_names: Optional[tuple[str, ...]] = None
  name: str = "custom"
  warnings: list[str] = dataclasses.field(default_factory=list)
  # True when no names were given and they were made up from the largest label seen.
  label_names_inferred: bool = False
  # Clips kept although a list of their split does not cover them: {"source", "split", "reason"}.
  # Without regression values (stored as NaN) / without a class (stored as -1).
  missing_values: list[dict] = dataclasses.field(default_factory=list)
  missing_labels: list[dict] = dataclasses.field(default_factory=list)
  # Per split: the numbers that denoted class 0 in its numeric source labels (1 for DFEW-style
  # files; the stored class is the source label minus it); None stands for labels given by name.
  label_base: dict[str, set] = dataclasses.field(default_factory=dict)


class StrictStop(Exception):
  """--strict met a bad input."""

  def __init__(self, source: str, reason: str):
    self.source, self.reason = source, reason
    super().__init__(f"{source}: {reason}")


def _skip(inputs_or_list, source: str, reason: str, strict: bool) -> None:
  if strict:
    raise StrictStop(source, reason)
  target = inputs_or_list.skipped if isinstance(inputs_or_list, Inputs) else inputs_or_list
  target.append({"source": source, "reason": reason})


# ------------------------------------------------------------------------------------------------
# Input lists.
# ------------------------------------------------------------------------------------------------

_SPLIT_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


def split_arg(arg: str, default_split: str) -> tuple[str, str]:
  """'[SPLIT=]PATH' -> (split, path); a path that exists as given is never split at '='."""
  m = _SPLIT_PREFIX.match(arg)
  if m and not os.path.exists(arg):
    return m[1], m[2]
  return default_split, arg


def _list_dir(list_path: str) -> str:
  """The folder a list's relative paths are resolved against (a URL for a list at a URL)."""
  if not records.is_local(list_path):
    return list_path.rsplit("/", 1)[0]
  return os.path.dirname(os.path.abspath(list_path))


def _resolve(path: str, base_dir: str) -> str:
  if not records.is_local(path):
    return path  # a URL (gs://...) names the clip as it is
  if not records.is_local(base_dir):
    scheme, rest = base_dir.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
  path = os.path.expanduser(path)
  return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of the non-empty, non-comment lines of a list (a path or a URL)."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"list file {path} does not exist")
  with epath.Path(path).open("r", encoding="utf-8-sig") as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if line and not line.startswith("#"):
        yield line_no, line


def read_label_list(path: str, split: str, num_classes: Optional[int], strict: bool,
                    skipped: list, label_base: int = 0,
                    out_of_range: Optional[list] = None) -> list[ClipTask]:
  """Parses an original-format list: '<path> <label>' per line (label = last field).

  Args:
    label_base: the number that denotes class 0 in the list (0, or 1 for lists numbered 1..K);
      stored classes are `label - label_base`. -1 always means "no class".
    out_of_range: when given, collects the raw labels of lines skipped as out of range.
  """
  base = _list_dir(path)
  tasks = []
  for line_no, line in _read_lines(path):
    origin = f"{path}:{line_no}"
    parts = line.rsplit(None, 1)
    if len(parts) < 2:
      _skip(skipped, origin, f"line {line!r} has no label (expected '<path> <label>')", strict)
      continue
    clip, label_txt = parts
    try:
      label = int(label_txt)
    except ValueError:
      _skip(skipped, origin, f"label {label_txt!r} is not an integer (expected '<path> <label>')",
            strict)
      continue
    if label != -1 and (label < label_base or (num_classes is not None
                                               and label - label_base >= num_classes)):
      if num_classes is not None:
        bound = f"{label_base}..{num_classes - 1 + label_base}"
      else:
        bound = f">= {label_base}"
      if label_base:
        bound += f" with --label-base {label_base}"
      hint = ""
      if not label_base and num_classes is not None and label == num_classes:
        hint = "; if the list numbers its classes from 1, give --label-base 1"
      if out_of_range is not None:
        out_of_range.append(label)
      _skip(skipped, origin, f"label {label} out of range ({bound}, or -1 for none){hint}",
            strict)
      continue
    stored = label - label_base if label != -1 else -1
    tasks.append(ClipTask(split, _resolve(clip, base), stored, (), "", origin))
  return tasks


def _previous_info(out_dir: str) -> dict:
  """dataset_info.json of an earlier run into `out_dir`, or {}."""
  try:
    return records.load_info(out_dir)
  except (OSError, ValueError):
    return {}


def one_based_message(paths: Sequence[str], labels: Sequence[int]) -> str:
  """Why lists numbered from 1 are refused, and the two ways on."""
  top = max(labels)
  where = ", ".join(dict.fromkeys(paths))
  return (f"labels in {where} run {min(labels)}..{top} and no clip has class 0: the list looks "
          f"1-based (as DFEW's label files are). Give --label-base 1 to store them as classes "
          f"0..{top - 1} ({top} classes), or --label-base 0 --num-classes {top + 1} to keep the "
          f"numbers as they are (class 0 then has no clips).")


def read_regression_list(path: str, split: str, num_values: Optional[int], strict: bool,
                         skipped: list) -> list[ClipTask]:
  """Parses '<path> <v1> <v2> ...' lines.

  The number of values is `num_values` when given, else the count of trailing numeric fields on
  the first valid line; every line must then have that many.
  """
  base = _list_dir(path)
  tasks = []
  for line_no, line in _read_lines(path):
    origin = f"{path}:{line_no}"
    fields = line.split()
    if num_values is None:
      trailing = 0
      for tok in reversed(fields[1:]):
        try:
          float(tok)
        except ValueError:
          break
        trailing += 1
      if trailing == 0:
        _skip(skipped, origin, "no numeric values (expected '<path> <v1> <v2> ...')", strict)
        continue
      num_values = trailing
    if len(fields) < num_values + 1:
      _skip(skipped, origin, f"expected '<path>' and {num_values} values, got {line!r}", strict)
      continue
    prefix, tail = line.rsplit(None, num_values)[0], line.split()[-num_values:]
    try:
      values = tuple(float(v) for v in tail)
    except ValueError:
      _skip(skipped, origin, f"non-numeric value among {tail}", strict)
      continue
    if not all(np.isfinite(values)):
      _skip(skipped, origin, f"non-finite value among {tail}", strict)
      continue
    tasks.append(ClipTask(split, _resolve(prefix, base), -1, values, "", origin))
  return tasks


def scan_src_dir(root: str, split: str, label_names: Optional[Sequence[str]]) -> list[ClipTask]:
  """Videos and frame folders below `root`; label from the parent folder name."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--src-dir {root} is not a directory")
  lookup = {n.lower(): i for i, n in enumerate(label_names or ())}
  tasks = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort(key=video_io.natural_key)
    images = [f for f in filenames if video_io.is_image_file(f)]
    if images and not dirnames and dirpath != root:
      parent = os.path.basename(os.path.dirname(dirpath)).lower()
      tasks.append(ClipTask(split, dirpath, lookup.get(parent, -1), (), "", dirpath))
      continue
    parent = os.path.basename(dirpath).lower()
    for f in sorted(filenames, key=video_io.natural_key):
      if video_io.is_video_file(f):
        path = os.path.join(dirpath, f)
        tasks.append(ClipTask(split, path, lookup.get(parent, -1), (), "", path))
  return sorted(tasks, key=lambda t: video_io.natural_key(t.path))


def _strip_ext(path: str) -> str:
  stem, ext = os.path.splitext(path)
  return stem if ext.lower() in video_io.VIDEO_EXTENSIONS else path


def _text_id(relpath: str) -> str:
  """A clip id that is valid UTF-8 whatever bytes the file name holds.

  Names that are not UTF-8 come from os.walk with lone surrogates (PEP 383); their raw bytes are
  written as \\xNN escapes, so the id stays readable, storable and distinct.
  """
  return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def assign_ids(tasks: list[ClipTask]) -> None:
  """Ids = paths relative to the common folder of each split's clips, without video extension.

  Ids are kept whole (any length, any script) and must be unique within a split.

  Raises:
    ValueError: two inputs of one split would get the same id (e.g. `a.mp4` and `a.avi`, or a
      video and a frame folder of the same name), naming both.
  """
  by_split: dict[str, list[ClipTask]] = {}
  for t in tasks:
    by_split.setdefault(t.split, []).append(t)
  clashes = []
  for split, group in by_split.items():
    if len(group) == 1:
      root = os.path.dirname(group[0].path)
    else:
      root = os.path.commonpath([t.path for t in group])
      if any(t.path == root for t in group):
        root = os.path.dirname(root)
    owner: dict[str, ClipTask] = {}
    for t in group:
      if not t.clip_id:
        t.clip_id = _text_id(_strip_ext(os.path.relpath(t.path, root)).replace(os.sep, "/"))
      first = owner.setdefault(t.clip_id, t)
      if first is not t:
        clashes.append(f"{first.origin or first.path} and {t.origin or t.path} would both get "
                       f"id {t.clip_id!r} in split {split!r}")
  if clashes:
    more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
    raise ValueError("clip ids must be unique within a split (an id is the path relative to the "
                     "split's common folder, without the video extension): "
                     + "; ".join(clashes[:5]) + more + ". Rename or leave out one of each pair.")


def merge_tasks(tasks: list[ClipTask], strict: bool, skipped: list) -> list[ClipTask]:
  """Joins entries of one split that name the same clip (a class list + a regression list)."""
  merged: dict[tuple[str, str], ClipTask] = {}
  order = []
  for t in tasks:
    key = (t.split, t.path)
    if key not in merged:
      merged[key] = dataclasses.replace(t)
      order.append(key)
      continue
    m = merged[key]
    if (t.label >= 0 and m.label >= 0) or (t.values and m.values):
      _skip(skipped, t.origin, f"duplicate of {m.origin} (same clip in split {t.split!r})", strict)
      continue
    if t.label >= 0:
      m.label = t.label
    if t.values:
      m.values = t.values
  return [merged[k] for k in order]


def note_uncovered(inputs: Inputs, class_lists: dict[str, list[str]],
                   value_lists: dict[str, list[str]], num_values: int, strict: bool) -> None:
  """Flags clips of a dataset with regression values that one of the lists does not cover.

  A clip without values keeps its class and gets `num_values` NaN values (the training loss and
  the metrics leave NaN targets out); a clip with values but no class, in a split that has
  class labels, keeps label -1. Both are listed in `inputs` (and so in prepare_report.json).

  Args:
    class_lists / value_lists: split -> the class inputs / --regression lists given for it.

  Raises:
    StrictStop: with `strict`, at the first such clip.
  """
  nan = (float("nan"),) * num_values
  for t in inputs.tasks:
    source = t.origin or t.path
    if not t.values:
      given = value_lists.get(t.split)
      why = (f"not in the --regression list of split {t.split!r} ({', '.join(given)})" if given
             else f"split {t.split!r} has no --regression list")
      reason = f"no regression values: {why}"
      if strict:
        raise StrictStop(source, reason)
      t.values = nan
      inputs.missing_values.append({"source": source, "split": t.split, "path": t.path,
                                    "reason": reason + "; kept with NaN values"})
    elif t.label < 0 and class_lists.get(t.split):
      reason = (f"no class label: not in the class list of split {t.split!r} "
                f"({', '.join(class_lists[t.split])})")
      if strict:
        raise StrictStop(source, reason)
      inputs.missing_labels.append({"source": source, "split": t.split, "path": t.path,
                                    "reason": reason + "; kept with label -1"})
  for kind, found, what in (("values", inputs.missing_values, "no regression values"),
                            ("labels", inputs.missing_labels, "no class label")):
    if found:
      splits = sorted({f["split"] for f in found})
      kept = "NaN values" if kind == "values" else "label -1"
      inputs.warnings.append(
          f"{len(found)} clip(s) of split(s) {', '.join(splits)} have {what} (a list of their "
          f"split does not name them); they are kept ({kept}) and listed under "
          f"\"missing_{kind}\" in {REPORT_FILE}; --strict stops instead")


def collect_inputs(args: argparse.Namespace) -> Inputs:
  """Reads every input named on the command line into an `Inputs`."""
  inputs = Inputs()
  label_names = tuple(n.strip() for n in args.label_names.split(",")) if args.label_names else None
  num_classes = len(label_names) if label_names else args.num_classes
  if args.value_names:
    inputs.value_names = tuple(n.strip() for n in args.value_names.split(","))
  raw: list[ClipTask] = []
  class_lists: dict[str, list[str]] = {}  # split -> the inputs that give its classes
  if args.recipe:
    if not args.src:
      raise ValueError("--recipe needs --src RAW_DATASET_DIR")
    result = recipes.run_recipe(args.recipe, args.src, args.fold, label_base=args.label_base)
    for s in result.skipped:
      _skip(inputs, s["source"], s["reason"], args.strict)
    raw += [dataclasses.replace(e, path=os.path.normpath(e.path), values=tuple(e.values))
            for e in result.entries]
    label_names = result.label_names
    num_classes = len(label_names) if label_names else None
    for e in result.entries:
      inputs.label_base.setdefault(e.split, set()).add(result.label_base)
      if e.label >= 0 and f"--recipe {result.name}" not in class_lists.setdefault(e.split, []):
        class_lists[e.split].append(f"--recipe {result.name}")
    inputs.name = f"{result.name}" + (f"_fold{args.fold}" if recipes.NUM_FOLDS.get(
        result.name, 1) > 1 else "")
  previous = _previous_info(args.out)
  list_base = args.label_base
  if list_base is None and args.list and isinstance(previous.get("label_base"), int) and \
      previous.get("label_names"):
    # A split added to a dataset whose lists were 1-based is read the same way, out loud.
    list_base = previous["label_base"]
    if list_base:
      inputs.warnings.append(f"--label-base not given: reading the lists with label base "
                             f"{list_base}, as recorded in {args.out}/{records.INFO_FILE}")
  list_tasks: list[ClipTask] = []
  list_paths: list[str] = []
  out_of_range: list[int] = []
  for arg in args.list or ():
    split, path = split_arg(arg, args.split)
    tasks = read_label_list(path, split, num_classes, args.strict, inputs.skipped,
                            list_base or 0, out_of_range)
    if not tasks:
      inputs.warnings.append(f"list {path} (split {split!r}) gave no clips")
    list_tasks += tasks
    list_paths.append(path)
    class_lists.setdefault(split, []).append(path)
    inputs.label_base.setdefault(split, set()).add(list_base or 0)
  if list_base is None:
    # Lists numbered 1..K would otherwise become K+1 classes with an empty class 0 (no names or
    # count given), or lose class K as "out of range" and shift the rest (names or count given).
    seen = [t.label for t in list_tasks if t.label >= 0]
    names_known = num_classes is not None or previous.get("label_names")
    if seen and 0 not in seen and (not names_known or num_classes in out_of_range):
      raise ValueError(one_based_message(list_paths, seen + out_of_range))
  raw += list_tasks
  num_values = len(inputs.value_names) if inputs.value_names else None
  value_lists: dict[str, list[str]] = {}
  for arg in args.regression or ():
    split, path = split_arg(arg, args.split)
    value_lists.setdefault(split, []).append(path)
    tasks = read_regression_list(path, split, num_values, args.strict, inputs.skipped)
    if not tasks:
      inputs.warnings.append(f"regression list {path} (split {split!r}) gave no clips")
    if tasks and num_values is None:
      num_values = len(tasks[0].values)
    raw += tasks
  if args.src_dir:
    tasks = scan_src_dir(args.src_dir, args.split, label_names)
    if not tasks:
      inputs.warnings.append(f"--src-dir {args.src_dir} holds no videos or frame folders")
    raw += tasks
  if label_names is None and num_classes is not None:
    label_names = tuple(str(i) for i in range(num_classes))
  if label_names is None:
    top = max((t.label for t in raw), default=-1)
    label_names = tuple(str(i) for i in range(top + 1)) if top >= 0 else None
    inputs.label_names_inferred = True
  inputs.label_names = label_names
  if num_values and not inputs.value_names:
    inputs.value_names = tuple(f"value{i}" for i in range(num_values))
  inputs.tasks = merge_tasks(raw, args.strict, inputs.skipped)
  if num_values:
    note_uncovered(inputs, class_lists, value_lists, num_values, args.strict)
  assign_ids(inputs.tasks)
  if args.name:
    inputs.name = args.name
  return inputs


# ------------------------------------------------------------------------------------------------
# One clip -> one record (runs in worker processes).
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
  """`path` itself, or for a URL (gs://...) a temporary local copy of the video or frame folder.

  The decoders need local files; the copy is read through etils.epath and removed afterwards.
  A URL that names nothing yields a path that does not exist, which the reader reports missing.
  """
  if records.is_local(path):
    yield path
    return
  src = epath.Path(path)
  with tempfile.TemporaryDirectory(prefix="svfap_clip_") as tmp:
    local = os.path.join(tmp, src.name or "clip")
    if src.is_dir():
      os.mkdir(local)
      for item in src.iterdir():
        if not item.is_dir():
          with open(os.path.join(local, item.name), "wb") as f:
            f.write(item.read_bytes())
    elif src.exists():
      with open(local, "wb") as f:
        f.write(src.read_bytes())
    yield local


def encode_jpeg(frame_rgb: np.ndarray, quality: int) -> bytes:
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise ValueError("JPEG encoding failed")
  return buf.tobytes()


def process_clip(task: ClipTask, options: PrepareOptions) -> tuple[str, Any, dict]:
  """Reads, crops/resizes and encodes one clip.

  Returns:
    ("ok", serialized Example, metadata) or ("skip", reason, {}).
  """
  cap = options.short_side * (options.face_source_factor if options.face_crop else 1)
  try:
    with _local_copy(task.path) as local:
      decoded = video_io.read_with(
          video_io.read_clip, local, max_frames=options.max_frames, target_fps=options.fps,
          folder_fps=options.folder_fps, max_short_side=cap)
    frames, fps, source_fps = decoded.frames, decoded.fps, decoded.source_fps
    if len(frames) < options.min_frames:
      return "skip", f"only {len(frames)} frames (--min-frames {options.min_frames})", {}
    meta: dict[str, Any] = {}
    if options.face_crop:
      frames, info = faces.crop_faces(frames, options.short_side, options.face, fps)
      meta.update(info)
    else:
      frames = [video_io.resize_short_side(f, options.short_side) for f in frames]
    jpegs = [encode_jpeg(f, options.jpeg_quality) for f in frames]
  except video_io.InputError as e:
    path = e.path
    if not records.is_local(task.path) and path.startswith(local):
      path = task.path + path[len(local):]  # name the frame in the bucket, not the copy
    where = "" if os.path.normpath(path) == os.path.normpath(task.path) else f"{path}: "
    return "skip", where + e.reason, {}
  except Exception as e:  # pylint: disable=broad-except
    # Whatever an odd file makes a library raise, the build goes on and the report names it.
    return "skip", f"unexpected {type(e).__name__}: {e}", {}
  h, w = frames[0].shape[:2]
  record = records.encode_clip(clip_id=task.clip_id, frames=jpegs, height=h, width=w, fps=fps,
                               label=task.label, values=task.values, source=task.path)
  meta.update({"num_frames": len(jpegs), "height": h, "width": w, "fps": fps,
               "source_fps": source_fps})
  return "ok", record, meta


def _process_in_worker(job):
  task, options = job
  return process_clip(task, options)


def _init_worker():
  # Several processes already use the cores; OpenCV's own threads would only contend.
  cv2.setNumThreads(1)


# ------------------------------------------------------------------------------------------------
# Shards.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShardPlan:
  split: str
  index: int
  count: int
  tasks: list[ClipTask]
  fingerprint: str = ""

  @property
  def name(self) -> str:
    return records.shard_name(self.split, self.index, self.count)


def plan_shards(tasks: Sequence[ClipTask], options: PrepareOptions, num_shards: Optional[int],
                clips_per_shard: int) -> list[ShardPlan]:
  by_split: dict[str, list[ClipTask]] = {}
  for t in tasks:
    by_split.setdefault(t.split, []).append(t)
  plans = []
  spec = options.spec()
  for split, group in by_split.items():
    count = num_shards or max(1, -(-len(group) // clips_per_shard))
    for k in range(count):
      plan = ShardPlan(split, k, count, group[k::count])
      blob = json.dumps({"spec": spec, "name": plan.name, "version": records.BUILDER_VERSION,
                         "tasks": [t.key() for t in plan.tasks]}, sort_keys=True)
      plan.fingerprint = hashlib.sha256(blob.encode()).hexdigest()
      plans.append(plan)
  return plans


def shard_is_complete(path: str, fingerprint: str) -> Optional[dict]:
  """The shard's index if the shard on disk is the finished result of this exact plan."""
  try:
    index = records.read_index(path)
  except (OSError, ValueError):
    return None
  shard = epath.Path(path)
  if index.get("fingerprint") != fingerprint or not shard.exists():
    return None
  if shard.stat().length != index.get("file_size"):
    return None
  try:
    offsets, lengths = records.scan_framing(path)
    if offsets != index["offsets"] or lengths != index["lengths"]:
      return None
    if offsets:  # the tail is the part an interrupted write would have lost
      with shard.open("rb") as f:
        f.seek(offsets[-1])
        records.unframe(path, len(offsets) - 1, offsets[-1], f.read(), lengths[-1])
  except records.CorruptRecordError:
    return None
  return index


def remove_stale(out_dir: str, plans: Sequence[ShardPlan], say: Callable[[str], None]) -> None:
  """Deletes temporaries and shards of a different shard count for the splits being written."""
  counts = {p.split: p.count for p in plans}
  for path in sorted(epath.Path(out_dir).iterdir()):
    name = path.name
    if ".tmp-" in name and ".tfrecord-" in name:
      path.unlink()
      continue
    base = name[:-len(records.INDEX_SUFFIX)] if name.endswith(records.INDEX_SUFFIX) else name
    parsed = records.parse_shard_name(base)
    if parsed and parsed[0] in counts and parsed[2] != counts[parsed[0]]:
      say(f"removing stale {name} (split {parsed[0]!r} now has {counts[parsed[0]]} shards)")
      path.unlink()


class _ShardWriter:
  """Writes one shard under a temporary name, then index + rename."""

  def __init__(self, out_dir: str, plan: ShardPlan, options: PrepareOptions):
    self.plan = plan
    self.final = _in(out_dir, plan.name)
    # Unique per attempt: a distributed runner may retry a shard on another machine meanwhile.
    self.tmp = f"{self.final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    self.writer = records.TFRecordWriter(self.tmp)
    self.meta: list[dict] = []
    self.skipped: list[dict] = []
    self.spec = options.spec()

  def add(self, task: ClipTask, record: bytes, meta: dict) -> None:
    self.writer.write(record)
    self.meta.append({**meta, "id": task.clip_id, "label": task.label, "source": task.path,
                      "values_missing": bool(np.isnan(task.values).any()) if task.values
                      else False})

  def finish(self) -> dict:
    self.writer.close()
    m = self.meta
    index = {
        "format": records.INDEX_FORMAT,
        "shard": self.plan.name,
        "split": self.plan.split,
        "fingerprint": self.plan.fingerprint,
        "builder_version": records.BUILDER_VERSION,
        "preprocessing": self.spec,
        "num_records": len(m),
        "file_size": self.writer.size,
        "offsets": self.writer.offsets,
        "lengths": self.writer.lengths,
        "ids": [x["id"] for x in m],
        "labels": [x["label"] for x in m],
        "num_frames": [x["num_frames"] for x in m],
        "heights": [x["height"] for x in m],
        "widths": [x["width"] for x in m],
        "fps": [round(x["fps"], 4) for x in m],
        "source_fps": [round(x["source_fps"], 4) for x in m],
        "face_detected_fraction": [round(x["detected_fraction"], 4) for x in m
                                   if "detected_fraction" in x],
        "sources": [x["source"] for x in m],
        "skipped": self.skipped,
        "missing_values": sum(1 for x in m if x["values_missing"]),
    }
    index_path = epath.Path(self.final + records.INDEX_SUFFIX)
    if index_path.exists():
      index_path.unlink()  # the old index must never describe the new shard
    epath.Path(self.tmp).replace(self.final)
    records.write_json_atomic(os.fspath(index_path), index)
    return index

  def abort(self) -> None:
    self.writer.close()
    tmp = epath.Path(self.tmp)
    if tmp.exists():
      tmp.unlink()


def _run_jobs(jobs: list, workers: int) -> Iterator:
  """process_clip over jobs, in order, in `workers` processes (or inline for 1)."""
  if workers <= 1 or len(jobs) <= 1:
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the same code path as the workers, for identical bytes
    try:
      for job in jobs:
        yield _process_in_worker(job)
    finally:
      cv2.setNumThreads(previous)
    return
  # spawn: the caller may have started JAX/TensorFlow threads, which do not survive fork().
  ctx = multiprocessing.get_context("spawn")
  pool = ctx.Pool(min(workers, len(jobs)), initializer=_init_worker)
  try:
    yield from pool.imap(_process_in_worker, jobs, chunksize=1)
    pool.close()
  finally:
    pool.terminate()
    pool.join()


def _one_base(bases: set):
  """A split's label base for dataset_info.json: the number, None (names), or a sorted list."""
  numbers = sorted(b for b in bases if b is not None)
  if not numbers:
    return None
  return numbers[0] if len(numbers) == 1 and None not in bases else numbers


def write_dataset_info(out_dir: str, inputs: Inputs, options: PrepareOptions) -> dict:
  """Rebuilds dataset_info.json from every complete split in `out_dir`."""
  previous = _previous_info(out_dir)
  label_names = list(inputs.label_names) if inputs.label_names else None
  earlier = previous.get("label_names")
  if earlier and (label_names is None or (inputs.label_names_inferred
                                          and len(earlier) >= len(label_names))):
    # A run that only added a split without naming the classes keeps the names given before.
    label_names = earlier
  splits = {}
  for split in records.list_splits(out_dir):
    try:
      shards = records.find_shards(out_dir, split)
      indices = [records.read_index(s) for s in shards]
    except (OSError, ValueError):
      continue
    block = records.summarize_split(indices, label_names)
    block["preprocessing"] = indices[0].get("preprocessing") if indices else None
    block["clips_missing_values"] = sum(ix.get("missing_values", 0) for ix in indices)
    if split in inputs.label_base:
      block["label_base"] = _one_base(inputs.label_base[split])
    else:
      block["label_base"] = (previous.get("splits", {}).get(split) or {}).get("label_base")
    splits[split] = block
  bases = [b["label_base"] for b in splits.values() if b["label_base"] is not None]
  info = {
      "format": records.FORMAT_NAME,
      "name": inputs.name if inputs.name != "custom" else previous.get("name", inputs.name),
      "builder_version": records.BUILDER_VERSION,
      "label_names": label_names,
      "num_classes": len(label_names) if label_names else 0,
      # Stored class = source label - label_base (per split in "splits"); null: names, or mixed.
      "label_base": bases[0] if bases and all(b == bases[0] and isinstance(b, int)
                                              for b in bases) else None,
      "value_names": list(inputs.value_names) if inputs.value_names else
                     previous.get("value_names", []),
      "preprocessing": options.spec(),
      "splits": splits,
      "features": records.FEATURES,
  }
  records.write_json_atomic(_in(out_dir, records.INFO_FILE), info)
  return info


@dataclasses.dataclass
class BuildState:
  """What a build (local pool or Beam) works from: the plan and the shards already finished.

  Attributes:
    plans: every shard of the splits being written, in output order.
    done: shard name -> index of each shard already finished (resumed, or written now).
    todo: the shards still to write, in plan order.
    start: `time.time()` when the build began.
  """
  plans: list[ShardPlan]
  done: dict[str, dict]
  todo: list[ShardPlan]
  start: float


def start_build(out_dir: str, inputs: Inputs, options: PrepareOptions, *,
                num_shards: Optional[int] = None, clips_per_shard: int = 256,
                say: Callable[[str], None] = print) -> BuildState:
  """Plans the shards of `inputs` in `out_dir` and finds those a previous run finished.

  Also removes the previous run's report and stale temporaries / shards of another count.

  Raises:
    ValueError: invalid options, shard counts or output URL.
  """
  options.validate()
  out_dir = check_out_dir(out_dir)
  if clips_per_shard < 1 or (num_shards is not None and num_shards < 1):
    raise ValueError("--num-shards and --clips-per-shard must be >= 1")
  start = time.time()
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  report_path = epath.Path(_in(out_dir, REPORT_FILE))
  if report_path.exists():
    # A stopped run must not leave the previous run's report behind.
    report_path.unlink()
  plans = plan_shards(inputs.tasks, options, num_shards, clips_per_shard)
  remove_stale(out_dir, plans, say)
  done: dict[str, dict] = {}
  todo: list[ShardPlan] = []
  for plan in plans:
    index = shard_is_complete(_in(out_dir, plan.name), plan.fingerprint)
    if index is not None:
      done[plan.name] = index
    else:
      todo.append(plan)
  if done:
    say(f"resuming: keeping {len(done)} finished shard(s), writing {len(todo)}")
  return BuildState(plans, done, todo, start)


def write_shard(out_dir: str, plan: ShardPlan, options: PrepareOptions, results: Iterator, *,
                strict: bool = False,
                on_clip: Optional[Callable[[str], None]] = None) -> dict:
  """Writes one shard from the `process_clip` results of its tasks, in task order.

  Args:
    results: an iterator yielding one `process_clip` result per task of `plan`, in order; exactly
      `len(plan.tasks)` items are taken from it.
    on_clip: called with each result's status ("ok" / "skip").

  Returns:
    The shard's index (also written beside the shard). Unusable clips are listed in its
    "skipped".

  Raises:
    StrictStop: with `strict`, at the first unusable clip (the shard is then not written).
  """
  writer = _ShardWriter(out_dir, plan, options)
  try:
    for task in plan.tasks:
      status, payload, meta = next(results)
      if status == "ok":
        writer.add(task, payload, meta)
      else:
        if strict:
          raise StrictStop(task.path, payload)
        writer.skipped.append({"source": task.path, "reason": payload})
      if on_clip is not None:
        on_clip(status)
    return writer.finish()
  except BaseException:
    writer.abort()
    raise


def finish_build(out_dir: str, inputs: Inputs, options: PrepareOptions, state: BuildState,
                 written_now: int) -> dict:
  """Writes dataset_info.json and prepare_report.json once every planned shard is finished.

  Args:
    state: with an index in `state.done` for every plan.
    written_now: clips encoded by this run (not counting resumed shards).

  Returns:
    The report dict (as written to prepare_report.json).
  """
  elapsed = time.time() - state.start
  skipped = list(inputs.skipped)
  splits: dict[str, int] = {}
  face_fracs = []
  written = set()
  for plan in state.plans:
    index = state.done[plan.name]
    skipped += index.get("skipped", [])
    splits[plan.split] = splits.get(plan.split, 0) + index["num_records"]
    face_fracs += index.get("face_detected_fraction", [])
    written.update((plan.split, source) for source in index.get("sources", []))
  # Only clips that made it into the shards (a clip that failed to decode is under "skipped").
  missing = {kind: [{k: m[k] for k in ("source", "split", "reason")} for m in found
                    if (m["split"], m["path"]) in written]
             for kind, found in (("missing_values", inputs.missing_values),
                                 ("missing_labels", inputs.missing_labels))}
  write_dataset_info(out_dir, inputs, options)
  todo = [p.name for p in state.todo]
  report = {
      "written": sum(splits.values()),
      "skipped": skipped,
      "splits": splits,
      **missing,
      "newly_encoded": written_now,
      "shards": {"kept": sorted(set(state.done) - set(todo)), "written": todo},
      "seconds": round(elapsed, 3),
      "clips_per_second": round(written_now / elapsed, 3) if elapsed > 0 else None,
  }
  if options.face_crop:
    report["face_crop"] = {
        "mean_detected_fraction": round(float(np.mean(face_fracs)), 4) if face_fracs else None,
        "clips_without_face": int(sum(1 for f in face_fracs if f == 0.0)),
    }
  records.write_json_atomic(_in(out_dir, REPORT_FILE), report)
  return report


def prepare(out_dir: str, inputs: Inputs, options: PrepareOptions, *,
            num_shards: Optional[int] = None, clips_per_shard: int = 256, workers: int = 1,
            strict: bool = False, say: Callable[[str], None] = print,
            progress: bool = True) -> dict:
  """Builds (or completes) the shards for `inputs` in `out_dir` with a process pool.

  `say` gets the status lines; `progress` shows a tqdm bar (clips done, written, rate, ETA) on
  stderr, refreshed every 10 s when stderr is not a terminal (logs).

  Returns:
    The report dict (as written to prepare_report.json).

  Raises:
    StrictStop: with `strict`, at the first input that cannot be used.
  """
  state = start_build(out_dir, inputs, options, num_shards=num_shards,
                      clips_per_shard=clips_per_shard, say=say)
  jobs = [(task, options) for plan in state.todo for task in plan.tasks]
  written = 0
  bar = tqdm.tqdm(total=len(jobs), unit="clip", desc="prepare", disable=not progress,
                  mininterval=0.5 if sys.stderr.isatty() else 10.0, file=sys.stderr)

  def note(status: str) -> None:
    nonlocal written
    written += status == "ok"
    bar.update(1)
    bar.set_postfix(written=written, refresh=False)

  results = _run_jobs(jobs, workers)
  try:
    for plan in state.todo:
      state.done[plan.name] = write_shard(out_dir, plan, options, results, strict=strict,
                                          on_clip=note)
  finally:
    results.close()
    bar.close()
  return finish_build(out_dir, inputs, options, state, written)


def summary_text(report: dict, out_dir: str) -> str:
  lines = [f"prepare: {report['written']} clips in {out_dir} ("
           + ", ".join(f"{k}: {v}" for k, v in sorted(report["splits"].items())) + ")",
           f"  encoded now: {report['newly_encoded']} in {report['seconds']:.1f}s; shards kept: "
           f"{len(report['shards']['kept'])}, written: {len(report['shards']['written'])}"]
  if report["skipped"]:
    lines.append(f"  skipped {len(report['skipped'])} input(s):")
    for s in report["skipped"][:20]:
      lines.append(f"    {s['source']}: {s['reason']}")
    if len(report["skipped"]) > 20:
      lines.append(f"    ... {len(report['skipped']) - 20} more in {REPORT_FILE}")
  else:
    lines.append("  skipped: none")
  for kind, what, kept in (("missing_values", "no regression values", "NaN values"),
                          ("missing_labels", "no class label", "label -1")):
    found = report.get(kind) or []
    if found:
      lines.append(f"  warning: {len(found)} clip(s) have {what} (not in a list of their split); "
                   f"kept with {kept}, listed under \"{kind}\":")
      for m in found[:5]:
        lines.append(f"    {m['source']}: {m['reason']}")
      if len(found) > 5:
        lines.append(f"    ... {len(found) - 5} more in {REPORT_FILE}")
  if "face_crop" in report:
    fc = report["face_crop"]
    lines.append(f"  face crop: mean detected fraction {fc['mean_detected_fraction']}, "
                 f"{fc['clips_without_face']} clip(s) without a face (centre crop)")
  lines.append(f"  report: {_in(out_dir, REPORT_FILE)}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="svfap prepare", description="Build sharded face-clip TFRecords.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n", 2)[2] if __doc__ else None)
  p.add_argument("--out", required=True, help="output dataset directory")
  src = p.add_argument_group("inputs (any combination)")
  src.add_argument("--list", action="append", metavar="[SPLIT=]PATH",
                   help="'<path> <label>' list; repeatable")
  src.add_argument("--regression", action="append", metavar="[SPLIT=]PATH",
                   help="'<path> <v1> <v2> ...' list; repeatable")
  src.add_argument("--src-dir", help="tree of videos / frame folders")
  src.add_argument("--recipe", help=f"official layout: {', '.join(sorted(recipes.RECIPES))}")
  src.add_argument("--src", help="raw dataset root for --recipe")
  src.add_argument("--fold", type=int, default=1, help="recipe fold (1-based)")
  src.add_argument("--split", default="train", help="split for inputs without 'SPLIT='")
  labels = p.add_mutually_exclusive_group()
  labels.add_argument("--label-names", help="comma-separated class names (label i = name i)")
  labels.add_argument("--num-classes", type=int, help="number of classes (names '0'..'K-1')")
  p.add_argument("--label-base", type=int, choices=(0, 1),
                 help="number that denotes the first class in --list files: 1 for lists "
                      "numbered 1..K (stored as 0..K-1). Lists without any class 0 are refused "
                      "unless this is given")
  p.add_argument("--value-names", help="comma-separated names of the regression values")
  p.add_argument("--name", help="dataset name recorded in dataset_info.json")
  proc = p.add_argument_group("processing")
  proc.add_argument("--short-side", type=int, default=176,
                    help="shorter side of the stored frames (default 176 = 1.1 x 160)")
  proc.add_argument("--jpeg-quality", type=int, default=90)
  proc.add_argument("--face-crop", action="store_true",
                    help="Haar face detection + smoothed square crop (short-side squares)")
  proc.add_argument("--face-margin", type=float, default=faces.FaceCropSpec.margin,
                    help="crop side / detected face box side")
  proc.add_argument("--face-detect-every", type=int, default=1,
                    help="run the detector on every n-th frame, interpolate between")
  proc.add_argument("--max-frames", type=int, help="keep at most the first N frames")
  proc.add_argument("--fps", type=float, help="resample (drop frames) down to this rate")
  proc.add_argument("--folder-fps", type=float, default=video_io.DEFAULT_FOLDER_FPS,
                    help="frame rate assumed for frame folders")
  proc.add_argument("--min-frames", type=int, default=1,
                    help="skip (and report) clips with fewer frames")
  out = p.add_argument_group("output")
  shards = out.add_mutually_exclusive_group()
  shards.add_argument("--num-shards", type=int, help="shards per split")
  shards.add_argument("--clips-per-shard", type=int, default=256,
                      help="sets the shard count when --num-shards is not given")
  out.add_argument("--workers", type=int, default=1,
                   help="decoding processes (with --runner beam: DirectRunner processes)")
  out.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local: a process pool on this machine; beam: an Apache Beam pipeline "
                        "(the same clips, shards and report; pip install -e .[beam])")
  out.add_argument("--beam-options", default="", metavar="FLAGS",
                   help="Beam pipeline flags for --runner beam, one quoted string, e.g. "
                        "\"--runner=DataflowRunner --project=P --region=R "
                        "--temp_location=gs://b/tmp\" (default: DirectRunner, multi-process)")
  out.add_argument("--strict", action="store_true", help="stop at the first bad input")
  out.add_argument("--quiet", action="store_true", help="print nothing but errors")
  return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """What argparse cannot say alone: an input is needed, --recipe needs --src, fold in range.

  Exits through `parser.error` (status 2, usage + message) on a bad combination.
  """
  if not (args.list or args.regression or args.src_dir or args.recipe):
    parser.error("give at least one input: --list, --regression, --src-dir or --recipe")
  if args.recipe and not args.src:
    parser.error(f"--recipe {args.recipe} needs --src RAW_DATASET_DIR (the dataset's root)")
  if args.beam_options and args.runner != "beam":
    parser.error("--beam-options is for --runner beam")
  if args.src and not args.recipe:
    parser.error("--src is the raw dataset root for --recipe; for a plain tree of videos use "
                 "--src-dir")
  if args.recipe:
    folds = recipes.NUM_FOLDS.get(recipes.canonical_name(args.recipe))
    if folds is not None and not 1 <= args.fold <= folds:
      parser.error(f"--fold {args.fold}: {args.recipe} has folds 1..{folds}")


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
  return PrepareOptions(
      short_side=args.short_side, jpeg_quality=args.jpeg_quality, face_crop=args.face_crop,
      face=faces.FaceCropSpec(margin=args.face_margin,
                                  detect_every=max(1, args.face_detect_every)),
      max_frames=args.max_frames, fps=args.fps, folder_fps=args.folder_fps,
      min_frames=args.min_frames)


def main(argv: Sequence[str]) -> int:
  """`prepare` entry point; returns the process exit code."""
  parser = build_parser()
  argv = list(argv)
  # The value of --beam-options is itself flags ("--runner=DataflowRunner ..."), which argparse
  # would take for options of ours; bound to the flag with "=", it stays one value.
  while "--beam-options" in argv[:-1]:
    i = argv.index("--beam-options")
    argv[i:i + 2] = [f"--beam-options={argv[i + 1]}"]
  args = parser.parse_args(argv)
  check_args(parser, args)
  say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
  try:
    options = options_from_args(args).validate()
    check_out_dir(args.out)
    inputs = collect_inputs(args)
    for w in inputs.warnings:
      print(f"prepare: warning: {w}", file=sys.stderr)
    if not inputs.tasks:
      print(f"prepare: no usable clips in the given inputs ({len(inputs.skipped)} skipped)",
            file=sys.stderr)
      for s in inputs.skipped[:20]:
        print(f"  {s['source']}: {s['reason']}", file=sys.stderr)
      return 1
    if args.runner == "beam":
      from data_pipelines import beam_build  # pylint: disable=import-outside-toplevel
      try:
        report = beam_build.prepare(args.out, inputs, options, num_shards=args.num_shards,
                                    clips_per_shard=args.clips_per_shard, workers=args.workers,
                                    strict=args.strict, beam_options=args.beam_options, say=say)
      except (beam_build.BeamUnavailable, beam_build.PipelineIncomplete) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    else:
      report = prepare(args.out, inputs, options, num_shards=args.num_shards,
                       clips_per_shard=args.clips_per_shard, workers=args.workers,
                       strict=args.strict, say=say, progress=not args.quiet)
  except StrictStop as e:
    print(f"prepare --strict: stopped at the first bad input: {e.source}: {e.reason}",
          file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, recipes.RecipeError) as e:
    print(f"prepare: {e}", file=sys.stderr)
    return 1
  say(summary_text(report, args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
