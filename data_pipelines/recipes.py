"""Dataset recipes: raw dataset directory -> (split, clip path, label) lists with label names.

Each recipe follows the layout the dataset is distributed with (and the protocol the SVFAP /
MAE-DFER papers evaluate on):

  dfew         EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv (video_name,label
               1..7) + clip frame folders Clip/clip_224x224/00001/ (also accepted: Clip/jpg_256,
               Clip/frames, or videos in Clip/original/00001.mp4). 7 classes.
  ferv39k      4_setups/All_scenes/{train,test}_All.csv ("<relative clip path> <Emotion>") + frame
               folders under 2_ClipsforFaceCrop/ (or 1_ClipsforFaceCrop/, or the root). 7 classes.
  mafw         Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt ("00001.mp4 anger")
               + data/frames/00001/ or data/clips/00001.mp4. 11 classes.
               (ferv39k / mafw lists may number the classes instead: counted from 0 when a 0
               occurs, from 1 when K occurs, else `--label-base` must say which.)
  crema_d      any tree of clips named 1001_DFA_ANG_XX(.flv/.mp4/folder); emotion = 3rd field.
               5 actor-independent folds (sorted actor ids cut into 5 contiguous groups). 6 classes.
  ravdess      Actor_XX/MM-VV-EE-II-SS-RR-AA(.mp4/folder); emotion EE = 3rd field (01..08).
               Speech clips (VV=01); the video-only version (MM=02) when present, else the
               audio-visual one (MM=01). 6 folds of 4 actors. 8 classes.
  enterface05  subject N/<emotion>/sentence K/*.avi (spaces or underscores); emotion from the folder
               (or the file's two-letter code). 5 subject-independent folds. 6 classes.
  voxceleb2    **/id*/<youtube id>/*.mp4, unlabeled (label -1), single split "train".

Folds are 1-based. Stored classes are always 0-based; `RecipeResult.label_base` (recorded as
`label_base` in dataset_info.json) says what the source numbers were shifted by. Regression targets (valence/arousal, Big-Five, ...) come as lists
`<path> <v1> <v2> ...`; `convert_*` below turn the annotation files of Werewolf-XL, AVCAffe and
First Impressions into that form.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import pickle
import re
from typing import Callable, Iterable, Optional, Sequence

from data_pipelines import video_io

log = logging.getLogger(__name__)

DFEW_LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
FERV39K_LABELS = DFEW_LABELS
MAFW_LABELS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
               "contempt", "anxiety", "helplessness", "disappointment")
CREMA_D_LABELS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
CREMA_D_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
RAVDESS_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
ENTERFACE_LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
ENTERFACE_CODES = ("an", "di", "fe", "ha", "sa", "su")
BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


@dataclasses.dataclass
class ClipTask:
  """One clip to prepare, from a recipe, a list or a folder scan (`prepare` builds these).

  Attributes:
    split: split the clip goes to ("train", "test", ...).
    path: video file or frame folder.
    label: class index, -1 without one.
    values: regression targets (float; NaN where one is missing), empty without any.
    clip_id: the record's id; "" until `build.assign_ids` gives one.
    origin: where the clip came from, for messages ("file.csv:12").
  """
  split: str
  path: str
  label: int = -1
  values: tuple = ()
  clip_id: str = ""
  origin: str = ""

  def key(self) -> list:
    return [self.path, self.label, list(self.values), self.clip_id]


@dataclasses.dataclass
class RecipeResult:
  name: str
  entries: list[ClipTask]
  label_names: Optional[tuple[str, ...]]
  skipped: list[dict] = dataclasses.field(default_factory=list)  # {"source", "reason"}
  value_names: Optional[tuple[str, ...]] = None
  # The number that denotes class 0 in the dataset's numeric label files (DFEW, RAVDESS: 1; the
  # entries already hold label - label_base); None when the labels are names or codes.
  label_base: Optional[int] = None


class RecipeError(Exception):
  """The raw directory does not have the layout a recipe expects."""


def _need(path: str, what: str, recipe: str) -> str:
  if not os.path.exists(path):
    raise RecipeError(f"{recipe}: {what} not found at {path}; point --src at the dataset root "
                      f"(see data_pipelines/recipes.py for the expected layout)")
  return path


def _check_fold(recipe: str, fold: int, num_folds: int) -> None:
  if not 1 <= fold <= num_folds:
    raise RecipeError(f"{recipe}: --fold must be in 1..{num_folds}, got {fold}")


def _clip_in(dirs: Sequence[str], stem: str) -> str:
  """The frame folder or video called `stem` in the first of `dirs` that has it."""
  for d in dirs:
    folder = os.path.join(d, stem)
    if os.path.isdir(folder):
      return folder
    for ext in video_io.VIDEO_EXTENSIONS:
      if os.path.isfile(folder + ext):
        return folder + ext
  # Not found: point at the most likely place so the builder reports it as missing.
  return os.path.join(dirs[0], stem)


def _clips_under(root: str, name_re: re.Pattern) -> list[str]:
  """Videos and frame folders below `root` whose stem matches `name_re`, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for d in list(dirnames):
      if name_re.fullmatch(d):
        found.append(os.path.join(dirpath, d))
        dirnames.remove(d)  # a frame folder: do not descend
    for f in sorted(filenames):
      stem, ext = os.path.splitext(f)
      if ext.lower() in video_io.VIDEO_EXTENSIONS and name_re.fullmatch(stem):
        found.append(os.path.join(dirpath, f))
  return sorted(found, key=video_io.natural_key)


def _groups(ids: Iterable, num_folds: int) -> list[list]:
  """Sorted ids cut into `num_folds` contiguous, nearly equal groups."""
  ids = sorted(set(ids))
  n = len(ids)
  return [ids[n * k // num_folds:n * (k + 1) // num_folds] for k in range(num_folds)]


# ------------------------------------------------------------------------------------------------


def dfew(src: str, fold: int = 1) -> RecipeResult:
  _check_fold("dfew", fold, 5)
  split_dir = _need(os.path.join(src, "EmoLabel_DataSplit"), "EmoLabel_DataSplit/", "dfew")
  clip_dirs = [os.path.join(src, "Clip", d) for d in
               ("clip_224x224", "jpg_256", "frames", "clip_224x224_16f", "original")]
  clip_dirs = [d for d in clip_dirs if os.path.isdir(d)] or [_need(
      os.path.join(src, "Clip", "clip_224x224"), "clip folder Clip/clip_224x224", "dfew")]
  result = RecipeResult("dfew", [], DFEW_LABELS, label_base=1)
  for split in ("train", "test"):
    csv_path = _need(os.path.join(split_dir, f"{split}(single-labeled)", f"set_{fold}.csv"),
                     f"{split} list of fold {fold}", "dfew")
    with open(csv_path, newline="") as f:
      rows = list(csv.reader(f))
    for line_no, row in enumerate(rows, 1):
      origin = f"{csv_path}:{line_no}"
      if not row or not "".join(row).strip():
        continue
      if len(row) < 2:
        result.skipped.append({"source": origin, "reason": "line has no label column"})
        continue
      name, label = row[0].strip(), row[1].strip()
      if not label.lstrip("-").isdigit():
        if line_no == 1:
          continue  # header "video_name,label"
        result.skipped.append({"source": origin, "reason": f"label {label!r} is not an integer"})
        continue
      label_int = int(label)
      if not 1 <= label_int <= 7:
        result.skipped.append({"source": origin,
                               "reason": f"label {label_int} out of range 1..7 (DFEW classes)"})
        continue
      stem = f"{int(name):05d}" if name.isdigit() else name
      result.entries.append(ClipTask(split, _clip_in(clip_dirs, stem), label_int - 1,
                                     origin=origin))
  return result


def _label_index(label: str, names: Sequence[str]) -> Optional[int]:
  low = label.strip().lower()
  for i, n in enumerate(names):
    if n.lower() == low:
      return i
  return None


def _two_column_list(path: str, split: str, names: Sequence[str], locate: Callable[[str], str],
                     result: RecipeResult, numeric: list, sep: Optional[str] = None) -> None:
  """Reads '<clip> <label>' lines; labels are class names, or numbers collected in `numeric`.

  Numeric labels get a placeholder entry whose position is appended to `numeric`;
  `_number_labels` sets them once every list of the dataset has been read.
  """
  with open(path, newline="") as f:
    for line_no, line in enumerate(f, 1):
      origin = f"{path}:{line_no}"
      if not line.strip():
        continue
      parts = line.strip().rsplit(sep, 1) if sep else line.strip().rsplit(None, 1)
      if len(parts) < 2:
        result.skipped.append({"source": origin, "reason": "line has no label"})
        continue
      text = parts[1].strip()
      label = _label_index(text, names)
      if label is None and text.lstrip("-").isdigit():
        numeric.append(len(result.entries))
        result.entries.append(ClipTask(split, locate(parts[0].strip()), int(text),
                                       origin=origin))
        continue
      if label is None:
        if line_no == 1 and text.lower() in ("label", "emotion", "class"):
          continue
        result.skipped.append({"source": origin,
                               "reason": f"label {text!r} is not one of {', '.join(names)}"})
        continue
      result.entries.append(ClipTask(split, locate(parts[0].strip()), label, origin=origin))


def _number_labels(result: RecipeResult, numeric: list, names: Sequence[str],
                   label_base: Optional[int]) -> None:
  """Turns the numeric labels of `result` into classes with one label base for the dataset.

  Without `label_base`, a 0 among the numbers means 0-based, the number K (= len(names)) means
  1-based; numbers with neither are ambiguous and refused. Lines out of range are skipped.

  Raises:
    RecipeError: ambiguous numbering (the message names --label-base).
  """
  if not numeric:
    return
  k = len(names)
  raw = [result.entries[i].label for i in numeric]
  if label_base is None:
    if 0 in raw:
      label_base = 0
    elif k in raw:
      label_base = 1
    else:
      raise RecipeError(
          f"{result.name}: numeric labels {min(raw)}..{max(raw)} in "
          f"{result.entries[numeric[0]].origin} and others include neither 0 nor {k}, so it is "
          f"unclear whether they count the {k} classes from 0 or from 1; give --label-base 0 or "
          f"--label-base 1")
  result.label_base = label_base
  drop = set()
  for i in numeric:
    e = result.entries[i]
    if 0 <= e.label - label_base < k:
      e.label -= label_base
    else:
      drop.add(i)
      result.skipped.append({
          "source": e.origin, "reason": f"label {e.label} out of range "
          f"{label_base}..{k - 1 + label_base} ({result.name} classes, label base {label_base})"})
  if drop:
    result.entries = [e for i, e in enumerate(result.entries) if i not in drop]


def ferv39k(src: str, fold: int = 1, label_base: Optional[int] = None) -> RecipeResult:
  _check_fold("ferv39k", fold, 1)
  setup = _need(os.path.join(src, "4_setups", "All_scenes"), "4_setups/All_scenes/", "ferv39k")
  roots = [os.path.join(src, d) for d in ("2_ClipsforFaceCrop", "1_ClipsforFaceCrop")]
  roots = [d for d in roots if os.path.isdir(d)] + [src]
  result = RecipeResult("ferv39k", [], FERV39K_LABELS)
  numeric: list[int] = []
  for split in ("train", "test"):
    path = _need(os.path.join(setup, f"{split}_All.csv"), f"{split}_All.csv", "ferv39k")
    _two_column_list(path, split, FERV39K_LABELS, lambda rel: _clip_in(roots, rel), result,
                     numeric)
  _number_labels(result, numeric, FERV39K_LABELS, label_base)
  return result


def mafw(src: str, fold: int = 1, label_base: Optional[int] = None) -> RecipeResult:
  _check_fold("mafw", fold, 5)
  set_dir = _need(os.path.join(src, "Train & Test Set", "single", "no_caption", f"set_{fold}"),
                  f"'Train & Test Set/single/no_caption/set_{fold}'", "mafw")
  roots = [os.path.join(src, "data", d) for d in ("frames", "clips")]
  roots = [d for d in roots if os.path.isdir(d)] or [os.path.join(src, "data", "frames")]
  result = RecipeResult("mafw", [], MAFW_LABELS)
  numeric: list[int] = []
  for split in ("train", "test"):
    path = _need(os.path.join(set_dir, f"{split}.txt"), f"{split}.txt", "mafw")
    _two_column_list(path, split, MAFW_LABELS,
                     lambda name: _clip_in(roots, os.path.splitext(name)[0]), result, numeric)
  _number_labels(result, numeric, MAFW_LABELS, label_base)
  return result


_CREMA_RE = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")


def crema_d(src: str, fold: int = 1) -> RecipeResult:
  _check_fold("crema_d", fold, 5)
  _need(src, "dataset root", "crema_d")
  clips = _clips_under(src, _CREMA_RE)
  if not clips:
    raise RecipeError(f"crema_d: no clips named like 1001_DFA_ANG_XX below {src}")
  result = RecipeResult("crema_d", [], CREMA_D_LABELS)
  parsed = []
  for path in clips:
    m = _CREMA_RE.fullmatch(os.path.splitext(os.path.basename(path))[0])
    if m[3] not in CREMA_D_CODES:
      result.skipped.append({"source": path, "reason": f"unknown emotion code {m[3]!r}"})
      continue
    parsed.append((path, int(m[1]), CREMA_D_CODES.index(m[3])))
  test_actors = set(_groups((a for _, a, _ in parsed), 5)[fold - 1])
  for path, actor, label in parsed:
    split = "test" if actor in test_actors else "train"
    result.entries.append(ClipTask(split, path, label, origin=path))
  return result


_RAVDESS_RE = re.compile(r"(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})")


def ravdess(src: str, fold: int = 1) -> RecipeResult:
  _check_fold("ravdess", fold, 6)
  _need(src, "dataset root", "ravdess")
  clips = _clips_under(src, _RAVDESS_RE)
  if not clips:
    raise RecipeError(f"ravdess: no clips named like 02-01-06-01-02-01-12 below {src}")
  result = RecipeResult("ravdess", [], RAVDESS_LABELS, label_base=1)
  by_key: dict[tuple, dict[str, str]] = {}
  for path in clips:
    m = _RAVDESS_RE.fullmatch(os.path.splitext(os.path.basename(path))[0])
    modality, channel = m[1], m[2]
    if modality == "03" or channel != "01":
      continue  # audio-only, or song
    key = m.groups()[2:]
    by_key.setdefault(key, {})[modality] = path
  entries = []
  for key in sorted(by_key):
    versions = by_key[key]
    path = versions.get("02", versions.get("01"))
    emotion, actor = int(key[0]), int(key[4])
    if not 1 <= emotion <= 8:
      result.skipped.append({"source": path, "reason": f"emotion code {emotion:02d} not in 01..08"})
      continue
    entries.append((path, actor, emotion - 1))
  test_actors = set(_groups((a for _, a, _ in entries), 6)[fold - 1])
  for path, actor, label in sorted(entries, key=lambda e: video_io.natural_key(e[0])):
    result.entries.append(ClipTask("test" if actor in test_actors else "train", path, label,
                                   origin=path))
  return result


_SUBJECT_RE = re.compile(r"subject[ _-]?(\d+)", re.IGNORECASE)
_ENTERFACE_FILE_RE = re.compile(r"s_?(\d+)_([a-z]{2})_\d+", re.IGNORECASE)


def enterface05(src: str, fold: int = 1) -> RecipeResult:
  _check_fold("enterface05", fold, 5)
  _need(src, "dataset root", "enterface05")
  result = RecipeResult("enterface05", [], ENTERFACE_LABELS)
  found = []
  for dirpath, dirnames, filenames in os.walk(src):
    dirnames.sort()
    parts = os.path.relpath(dirpath, src).split(os.sep)
    frame_folder = any(video_io.is_image_file(f) for f in filenames) and not dirnames
    names = [""] if frame_folder else [f for f in sorted(filenames) if video_io.is_video_file(f)]
    for name in names:
      path = os.path.join(dirpath, name) if name else dirpath
      comps = [p.lower() for p in parts] + ([os.path.splitext(name)[0].lower()] if name else [])
      emotion = next((ENTERFACE_LABELS.index(c) for c in comps if c in ENTERFACE_LABELS), None)
      file_m = _ENTERFACE_FILE_RE.search(comps[-1])
      if emotion is None and file_m and file_m[2].lower() in ENTERFACE_CODES:
        emotion = ENTERFACE_CODES.index(file_m[2].lower())
      subject = next((int(m[1]) for m in map(_SUBJECT_RE.search, parts) if m), None)
      if subject is None and file_m:
        subject = int(file_m[1])
      if emotion is None or subject is None:
        result.skipped.append({"source": path, "reason": "cannot tell the subject and emotion "
                               "from the path (expected 'subject N/<emotion>/sentence K/...')"})
        continue
      found.append((path, subject, emotion))
  if not found:
    raise RecipeError(f"enterface05: no clips below {src}")
  test_subjects = set(_groups((s for _, s, _ in found), 5)[fold - 1])
  for path, subject, label in sorted(found, key=lambda e: video_io.natural_key(e[0])):
    split = "test" if subject in test_subjects else "train"
    result.entries.append(ClipTask(split, path, label, origin=path))
  return result


def voxceleb2(src: str, fold: int = 1) -> RecipeResult:
  _check_fold("voxceleb2", fold, 1)
  _need(src, "dataset root", "voxceleb2")
  paths = []
  for dirpath, dirnames, filenames in os.walk(src):
    dirnames.sort()
    parent = os.path.basename(os.path.dirname(dirpath))
    if re.fullmatch(r"id\d+", parent):
      paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".mp4")]
  if not paths:
    raise RecipeError(f"voxceleb2: no id*/<video id>/*.mp4 below {src}")
  return RecipeResult("voxceleb2", [ClipTask("train", p, -1, origin=p) for p in paths], None)


RECIPES: dict[str, Callable[..., RecipeResult]] = {
    "dfew": dfew, "ferv39k": ferv39k, "mafw": mafw, "crema_d": crema_d, "ravdess": ravdess,
    "enterface05": enterface05, "voxceleb2": voxceleb2,
}
NUM_FOLDS = {"dfew": 5, "ferv39k": 1, "mafw": 5, "crema_d": 5, "ravdess": 6, "enterface05": 5,
             "voxceleb2": 1}


# Recipes whose list files may number the classes (either from 0 or from 1) instead of naming them.
NUMERIC_LABEL_RECIPES = ("ferv39k", "mafw")


def canonical_name(name: str) -> str:
  """'CREMA-D' -> 'crema_d', 'enterface' -> 'enterface05' (the keys of RECIPES)."""
  key = name.lower().replace("-", "_")
  return {"enterface": "enterface05", "cremad": "crema_d"}.get(key, key)


def run_recipe(name: str, src: str, fold: int = 1,
               label_base: Optional[int] = None) -> RecipeResult:
  """Runs recipe `name` on the raw dataset at `src`.

  Args:
    label_base: for ferv39k / mafw lists that give numbers instead of class names, the number of
      the first class (0 or 1); None detects it (see `_number_labels`). DFEW's and RAVDESS's
      official files are always 1-based and ignore it.

  Raises:
    RecipeError: unknown recipe, a layout that does not match, or ambiguous numeric labels.
  """
  key = canonical_name(name)
  if key not in RECIPES:
    raise RecipeError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
  if key in NUMERIC_LABEL_RECIPES:
    return RECIPES[key](src, fold, label_base=label_base)
  return RECIPES[key](src, fold)


# ------------------------------------------------------------------------------------------------
# Regression annotations -> `<path> <v1> <v2> ...` lists.
# ------------------------------------------------------------------------------------------------


def write_regression_list(rows: Iterable[tuple[str, Sequence[float]]], out_path: str) -> int:
  """Writes `<path> <v1> <v2> ...` lines; returns how many."""
  n = 0
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w") as f:
    for path, values in rows:
      f.write(path + " " + " ".join(f"{float(v):.6g}" for v in values) + "\n")
      n += 1
  return n


def _locate_video(video_dir: str, name: str, ext: str) -> str:
  stem = name if os.path.splitext(name)[1] else name + ext
  return os.path.join(video_dir, stem)


def convert_table(table_path: str, video_dir: str, out_path: str, *, id_column: str,
                  value_columns: Sequence[str], video_ext: str = ".mp4",
                  delimiter: Optional[str] = None) -> int:
  """Converts a CSV/TSV annotation table (one row per clip) into a regression list.

  Args:
    table_path: annotation file with a header row.
    video_dir: folder the clip ids / file names are relative to.
    out_path: the `<path> <v1> ...` list to write.
    id_column: column holding the clip file name or id (extension `video_ext` added if missing).
    value_columns: columns to copy, in order (e.g. ("valence", "arousal")).
    delimiter: column separator; sniffed from the header when None.

  Returns:
    Number of clips written.

  Raises:
    KeyError: a named column is absent (the message lists the header).
    ValueError: a value that is not a number (with its row).
  """
  with open(table_path, newline="") as f:
    text = f.read()
  if delimiter is None:
    header = text.splitlines()[0] if text else ""
    delimiter = "\t" if "\t" in header else ";" if header.count(";") > header.count(",") else ","
  reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
  fields = [c.strip() for c in (reader.fieldnames or [])]
  lower = {c.lower(): c for c in fields}
  missing = [c for c in [id_column, *value_columns] if c.lower() not in lower]
  if missing:
    raise KeyError(f"{table_path}: column(s) {missing} not in the header {fields}")
  rows = []
  for row_no, row in enumerate(reader, 2):
    row = {k.strip(): v for k, v in row.items() if k is not None}
    name = row[lower[id_column.lower()]].strip()
    try:
      values = [float(row[lower[c.lower()]]) for c in value_columns]
    except (TypeError, ValueError) as e:
      raise ValueError(f"{table_path}:{row_no}: non-numeric value in {value_columns}: {e}") from e
    rows.append((_locate_video(video_dir, name, video_ext), values))
  return write_regression_list(rows, out_path)


def convert_werewolf_xl(annotation_csv: str, video_dir: str, out_path: str,
                        id_column: str = "clip", value_columns=("valence", "arousal", "dominance"),
                        video_ext: str = ".mp4") -> int:
  """Werewolf-XL per-clip dimensional annotations -> `<path> <valence> <arousal> <dominance>`.

  The annotation table has one row per clip with a clip-name column and continuous valence,
  arousal and dominance columns; pass the column names if your release spells them differently.
  """
  return convert_table(annotation_csv, video_dir, out_path, id_column=id_column,
                       value_columns=value_columns, video_ext=video_ext)


def convert_avcaffe(annotation_csv: str, video_dir: str, out_path: str, id_column: str = "video",
                    value_columns=("arousal", "valence"), video_ext: str = ".avi") -> int:
  """AVCAffe self-reported affect per task clip -> `<path> <arousal> <valence>`.

  Cognitive-load columns (mental demand, effort, ...) can be added to `value_columns`.
  """
  return convert_table(annotation_csv, video_dir, out_path, id_column=id_column,
                       value_columns=value_columns, video_ext=video_ext)


class _PlainDataUnpickler(pickle.Unpickler):
  """Unpickler that only rebuilds builtin dict/list/str/float, never arbitrary classes."""
  _ALLOWED = {("builtins", "dict"), ("builtins", "list"), ("builtins", "str"),
              ("builtins", "float"), ("__builtin__", "dict"), ("__builtin__", "list"),
              ("__builtin__", "str"), ("__builtin__", "float"), ("__builtin__", "unicode")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return {"dict": dict, "list": list, "str": str, "float": float, "unicode": str}[name]
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: annotation pickles must hold only dicts, lists, "
        "strings and floats")


def load_plain_pickle(path: str):
  """Loads a pickle of plain data (First Impressions annotations) without executing code."""
  with open(path, "rb") as f:
    # latin1: the annotation files were written by Python 2.
    return _PlainDataUnpickler(f, encoding="latin1").load()


def convert_first_impressions(annotation_pkl: str, video_dir: str, out_path: str,
                              traits: Sequence[str] = BIG_FIVE) -> int:
  """ChaLearn First Impressions (v2) annotation pickle -> `<path> O C E A N` regression list.

  The pickle maps trait name -> {video file name: score in [0, 1]} (also an "interview" key,
  ignored unless listed in `traits`). Videos missing any trait are left out of the list, with a
  logged warning that counts them and names the first few with the traits they lack (a
  `prepare` class list naming them then reports them under "missing_values").

  Raises:
    ValueError: the pickle is not shaped like that.
  """
  data = load_plain_pickle(annotation_pkl)
  if not isinstance(data, dict):
    raise ValueError(f"{annotation_pkl}: expected a dict of traits, got {type(data).__name__}")
  keys = {str(k).lower(): k for k in data}
  missing = [t for t in traits if t.lower() not in keys]
  if missing:
    raise ValueError(f"{annotation_pkl}: traits {missing} absent; it has {sorted(keys)}")
  tables = [data[keys[t.lower()]] for t in traits]
  videos = sorted(set.intersection(*(set(t) for t in tables)), key=video_io.natural_key)
  partial = sorted(set.union(*(set(t) for t in tables)) - set(videos), key=video_io.natural_key)
  if partial:
    lacking = [f"{v} (no {', '.join(n for n, t in zip(traits, tables) if v not in t)})"
               for v in partial[:5]]
    log.warning("%s: %d video(s) lack some of the traits and are left out of %s: %s%s",
                annotation_pkl, len(partial), out_path, "; ".join(lacking),
                " ..." if len(partial) > 5 else "")
  rows = [(os.path.join(video_dir, v), [float(t[v]) for t in tables]) for v in videos]
  return write_regression_list(rows, out_path)
