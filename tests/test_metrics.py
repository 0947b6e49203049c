"""Host-side metrics against scikit-learn and direct formulas."""
import numpy as np
import pytest
from sklearn import metrics as skm

from svfap_jax import metrics


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(4))
def test_classification_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 7
  y_true = rng.integers(0, k, 200)
  if seed % 2:
    y_true[y_true == 3] = 4  # a class absent from y_true (but still predicted)
  probs = rng.dirichlet(np.ones(k), size=200)
  probs[np.arange(200), y_true] += rng.uniform(0, 0.6, 200)  # better than chance
  y_pred = probs.argmax(-1)
  names = ["Ha", "Sa", "Ne", "An", "Su", "Di", "Fe"]
  out = metrics.classification_metrics(y_true, probs, k, label_names=names)
  assert out["uar"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
  assert out["war"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
  assert out["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
  assert out["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
  assert out["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=range(k)).tolist()
  recall = skm.recall_score(y_true, y_pred, labels=range(k), average=None, zero_division=0)
  for i, name in enumerate(names):
    if (y_true == i).any():
      assert out["per_class_recall"][name] == pytest.approx(recall[i])
    else:
      assert out["per_class_recall"][name] is None
  # Labels and scores give the same result.
  assert metrics.classification_metrics(y_true, y_pred, k)["uar"] == out["uar"]


def test_classification_edge_cases():
  out = metrics.classification_metrics([0, 0, 1], [0, 0, 1], 3)
  assert out["uar"] == out["war"] == out["macro_f1"] == out["weighted_f1"] == 1.0
  assert out["per_class_recall"] == {"0": 1.0, "1": 1.0, "2": None}
  with pytest.raises(ValueError):
    metrics.classification_metrics([0, 5], [0, 1], 3)


def test_regression_metrics():
  rng = np.random.default_rng(0)
  y_true = rng.uniform(0, 1, (300, 3))
  y_pred = np.clip(0.7 * y_true + 0.3 * rng.uniform(0, 1, (300, 3)) + 0.05, 0, 1)
  out = metrics.regression_metrics(y_true, y_pred, names=["arousal", "valence", "dominance"])
  for i, name in enumerate(["arousal", "valence", "dominance"]):
    t, p = y_true[:, i], y_pred[:, i]
    ccc = 2 * np.cov(t, p, bias=True)[0, 1] / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    dim = out["per_dim"][name]
    assert dim["ccc"] == pytest.approx(ccc)
    assert dim["pcc"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert dim["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t, p)))
    assert dim["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    assert dim["acc_1_minus_mae"] == pytest.approx(1 - skm.mean_absolute_error(t, p))
  for key in ("ccc", "pcc", "rmse", "mae", "acc_1_minus_mae"):
    assert out[key] == pytest.approx(np.mean([d[key] for d in out["per_dim"].values()]))
  # A 1-D target is one dimension; a constant prediction has an undefined PCC and CCC 0.
  flat = metrics.regression_metrics(y_true[:, 0], np.full(300, 0.5))
  assert np.isnan(flat["pcc"]) and flat["ccc"] == pytest.approx(0.0)


def test_aggregate_views():
  ids = ["b", "a", "b", "c", "a", "b"]
  scores = np.arange(12, dtype=np.float64).reshape(6, 2)
  unique, mean = metrics.aggregate_views(ids, scores)
  assert unique == ["b", "a", "c"]
  np.testing.assert_allclose(mean, [scores[[0, 2, 5]].mean(0), scores[[1, 4]].mean(0),
                                    scores[3]])
  logits = np.random.default_rng(0).standard_normal((6, 4))
  _, probs = metrics.aggregate_views(ids, logits, from_logits=True)
  soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(probs[0], soft[[0, 2, 5]].mean(0))
  np.testing.assert_allclose(probs.sum(-1), 1.0)
  _, reg = metrics.aggregate_views([1, 1, 2], np.array([0.2, 0.4, 0.9]))
  np.testing.assert_allclose(reg, [0.3, 0.9])


def test_pool_folds():
  rng = np.random.default_rng(1)
  folds = []
  for size in (50, 80, 65):
    y = rng.integers(0, 5, size)
    scores = rng.dirichlet(np.ones(5), size=size)
    scores[np.arange(size), y] += rng.uniform(0, 0.5, size)
    folds.append((y, scores))
  out = metrics.pool_folds(folds)
  y_all = np.concatenate([y for y, _ in folds])
  p_all = np.concatenate([s.argmax(-1) for _, s in folds])
  assert out["uar"] == pytest.approx(skm.balanced_accuracy_score(y_all, p_all))
  assert out["war"] == pytest.approx(skm.accuracy_score(y_all, p_all))
  uars = [skm.balanced_accuracy_score(y, s.argmax(-1)) for y, s in folds]
  wars = [skm.accuracy_score(y, s.argmax(-1)) for y, s in folds]
  assert out["fold_uar_mean"] == pytest.approx(np.mean(uars))
  assert out["fold_uar_std"] == pytest.approx(np.std(uars))
  assert out["fold_war_mean"] == pytest.approx(np.mean(wars))
  assert out["fold_war_std"] == pytest.approx(np.std(wars))
  assert [f["uar"] for f in out["folds"]] == pytest.approx(uars)


def test_confusion_matrix_png(tmp_path):
  path = metrics.confusion_matrix_png([[5, 1, 0], [2, 3, 1], [0, 0, 4]], ["x", "y", "z"],
                                      str(tmp_path / "cm.png"), title="fold 1")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
