"""Evaluation metrics on the host (scikit-learn and numpy).

Classification: UAR (mean per-class recall, the DFER headline metric), WAR (accuracy), weighted
and macro F1, confusion matrix. Regression: CCC, PCC, RMSE, MAE and 1 - MAE (the First
Impressions "accuracy"). Multi-view test scores are averaged per video (`aggregate_views`) and
k-fold results are pooled over all folds' predictions (`pool_folds`), as the paper reports them.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence
import warnings

import numpy as np
from sklearn import metrics as skm


def _labels(y_pred_or_probs: np.ndarray) -> np.ndarray:
  """Class predictions from labels (N,) or scores (N, K)."""
  y = np.asarray(y_pred_or_probs)
  return y.argmax(axis=-1) if y.ndim == 2 else y.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts; rows are true classes, columns predicted classes.

  Raises:
    ValueError: shapes differ, or a label is outside [0, K).
  """
  y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ")
  for y in (y_true, y_pred):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"labels must be in [0, {num_classes}); got [{y.min()}, {y.max()}]")
  if not y_true.size:  # sklearn refuses empty inputs
    return np.zeros((num_classes, num_classes), np.int64)
  return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.divide(num, den, out=np.zeros(np.shape(num), np.float64), where=den > 0)


def _uar_war(confusion: np.ndarray) -> tuple[float, float]:
  support = confusion.sum(axis=1)
  present = support > 0
  recall = _safe_div(np.diag(confusion), support)
  uar = float(recall[present].mean()) if present.any() else 0.0
  war = float(np.trace(confusion) / max(confusion.sum(), 1))
  return uar, war


def classification_metrics(y_true: np.ndarray, y_pred_or_probs: np.ndarray, num_classes: int,
                           label_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Scores of class predictions.

  Args:
    y_true: int labels (N,).
    y_pred_or_probs: predicted labels (N,) or class scores (N, K), argmax-ed.
    num_classes: K.
    label_names: names for `per_class_recall` (default "0" .. "K-1").

  Returns:
    dict with `uar` (mean recall over the classes present in y_true, sklearn's
    balanced_accuracy_score), `war` (accuracy), `weighted_f1` (F1 weighted by true support),
    `macro_f1` (unweighted mean over the classes present in y_true or y_pred, sklearn's
    default), `confusion` (K x K nested list, rows = true), `per_class_recall` ({name: recall or
    None when the class is absent from y_true}) and `support` (true count per class).
  """
  y_true = np.asarray(y_true, np.int64)
  y_pred = _labels(y_pred_or_probs)
  confusion = confusion_matrix(y_true, y_pred, num_classes)
  names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} label names for {num_classes} classes")
  support = confusion.sum(axis=1)
  recall = _safe_div(np.diag(confusion).astype(np.float64), support)
  if y_true.size:
    with warnings.catch_warnings():
      # A class predicted but absent from y_true is expected on small test splits; UAR averages
      # over the classes present in y_true, as documented above.
      warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
      uar = float(skm.balanced_accuracy_score(y_true, y_pred))
    war = float(skm.accuracy_score(y_true, y_pred))
    weighted_f1 = float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    macro_f1 = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
  else:
    uar = war = weighted_f1 = macro_f1 = 0.0
  return {
      "uar": uar,
      "war": war,
      "weighted_f1": weighted_f1,
      "macro_f1": macro_f1,
      "confusion": confusion.tolist(),
      "per_class_recall": {n: (float(r) if s > 0 else None)
                           for n, r, s in zip(names, recall, support)},
      "support": support.tolist(),
  }


def _as_columns(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x[:, None] if x.ndim == 1 else x


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
  """Concordance correlation per column, population moments; NaN where undefined."""
  t, p = _as_columns(y_true), _as_columns(y_pred)
  mt, mp = t.mean(axis=0), p.mean(axis=0)
  cov = ((t - mt) * (p - mp)).mean(axis=0)
  denom = t.var(axis=0) + p.var(axis=0) + (mt - mp) ** 2
  return np.divide(2.0 * cov, denom, out=np.full(cov.shape, np.nan), where=denom > 0)


def pcc(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
  """Pearson correlation per column; NaN where either column is constant."""
  t, p = _as_columns(y_true), _as_columns(y_pred)
  t, p = t - t.mean(axis=0), p - p.mean(axis=0)
  denom = np.sqrt((t * t).sum(axis=0) * (p * p).sum(axis=0))
  return np.divide((t * p).sum(axis=0), denom, out=np.full(denom.shape, np.nan),
                   where=denom > 0)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                       names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Scores of continuous predictions (N, K) or (N,).

  A NaN in `y_true` is a missing annotation: each dimension is scored over the rows where its
  target is present, and a dimension without any present value is left out of the means.

  Returns:
    dict with the mean over dimensions of `ccc`, `pcc`, `rmse`, `mae` and `acc_1_minus_mae`
    (1 - MAE, meaningful for targets in [0, 1]), and `per_dim`: {name: those five for that
    dimension and `count`, its number of present targets}. Names default to "0" .. "K-1".
    Without any present target the means are NaN.
  """
  t, p = _as_columns(y_true), _as_columns(y_pred)
  if t.shape != p.shape:
    raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ")
  k = t.shape[1]
  names = list(names) if names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"{len(names)} names for {k} output dimensions")
  present = ~np.isnan(t)
  keys = ("ccc", "pcc", "rmse", "mae", "acc_1_minus_mae")
  per = {key: np.full(k, np.nan) for key in keys}
  for j in range(k):
    rows = present[:, j]
    if not rows.any():
      continue
    tj, pj = t[rows, j], p[rows, j]
    per["ccc"][j] = ccc(tj, pj)[0]
    per["pcc"][j] = pcc(tj, pj)[0]
    per["rmse"][j] = skm.root_mean_squared_error(tj, pj)
    per["mae"][j] = skm.mean_absolute_error(tj, pj)
    per["acc_1_minus_mae"][j] = 1.0 - per["mae"][j]
  scored = present.any(axis=0)
  out: dict[str, Any] = {key: float(v[scored].mean()) if scored.any() else float("nan")
                         for key, v in per.items()}
  out["per_dim"] = {n: {**{key: float(v[i]) for key, v in per.items()},
                        "count": int(present[:, i].sum())} for i, n in enumerate(names)}
  return out


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def aggregate_views(ids: Sequence[Any], view_scores: np.ndarray, *,
                    from_logits: bool = False) -> tuple[list[Any], np.ndarray]:
  """Averages the scores of the test views (segments x crops) of each video.

  Args:
    ids: video id of each row, any hashable.
    view_scores: (N, ...) softmax scores or regression outputs, one row per view.
    from_logits: apply a softmax to each row first (the original averages probabilities).

  Returns:
    (unique ids in order of first appearance, (len(unique), ...) mean scores).
  """
  scores = np.asarray(view_scores, np.float64)
  if len(ids) != len(scores):
    raise ValueError(f"{len(ids)} ids for {len(scores)} score rows")
  if from_logits:
    scores = _softmax(scores)
  index: dict[Any, int] = {}
  rows = np.array([index.setdefault(i, len(index)) for i in ids], np.int64)
  sums = np.zeros((len(index),) + scores.shape[1:], np.float64)
  np.add.at(sums, rows, scores)
  counts = np.bincount(rows, minlength=len(index)).reshape((-1,) + (1,) * (scores.ndim - 1))
  return list(index), sums / counts


def pool_folds(folds: Sequence[tuple[np.ndarray, np.ndarray]],
               num_classes: Optional[int] = None) -> dict[str, Any]:
  """k-fold summary: UAR/WAR of all folds' predictions pooled, and per-fold mean and std.

  Args:
    folds: one (y_true (N,), y_pred labels (N,) or scores (N, K)) pair per fold.
    num_classes: K; inferred from the labels and score widths when None.

  Returns:
    dict with pooled `uar`, `war`; `fold_uar_mean`, `fold_uar_std`, `fold_war_mean`,
    `fold_war_std` (population std over folds); and `folds`: [{uar, war}] per fold.
  """
  if not folds:
    raise ValueError("no folds")
  pairs = [(np.asarray(t, np.int64), _labels(p)) for t, p in folds]
  if num_classes is None:
    widths = [np.asarray(p).shape[-1] for _, p in folds if np.asarray(p).ndim == 2]
    num_classes = int(max([t.max(initial=-1) + 1 for t, _ in pairs]
                          + [p.max(initial=-1) + 1 for _, p in pairs] + widths))
  per_fold = [_uar_war(confusion_matrix(t, p, num_classes)) for t, p in pairs]
  pooled = _uar_war(sum(confusion_matrix(t, p, num_classes) for t, p in pairs))
  uars, wars = np.array([u for u, _ in per_fold]), np.array([w for _, w in per_fold])
  return {
      "uar": pooled[0],
      "war": pooled[1],
      "fold_uar_mean": float(uars.mean()),
      "fold_uar_std": float(uars.std()),
      "fold_war_mean": float(wars.mean()),
      "fold_war_std": float(wars.std()),
      "folds": [{"uar": u, "war": w} for u, w in per_fold],
  }


def confusion_matrix_png(confusion: Sequence[Sequence[int]], label_names: Optional[Sequence[str]],
                         path: str, *, normalize: bool = True, title: str = "") -> str:
  """Writes the confusion matrix as a PNG heat map (rows = true class); returns `path`.

  With `normalize` each row is shown as recall fractions, with the counts in the cells. Uses the
  Agg canvas directly, so no display and no global matplotlib backend change are involved.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  counts = np.asarray(confusion, np.float64)
  k = counts.shape[0]
  names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
  shown = _safe_div(counts, counts.sum(axis=1, keepdims=True)) if normalize else counts
  size = 1.0 + 0.6 * k
  fig = Figure(figsize=(size + 1.0, size))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(k), names, rotation=45, ha="right")
  ax.set_yticks(range(k), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  # Light text on the dark half of the colour map.
  threshold = 0.5 if normalize else shown.max(initial=0.0) / 2.0
  for i in range(k):
    for j in range(k):
      text = f"{shown[i, j]:.2f}\n{int(counts[i, j])}" if normalize else f"{int(counts[i, j])}"
      ax.text(j, i, text, ha="center", va="center", fontsize=7,
              color="white" if shown[i, j] > threshold else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
