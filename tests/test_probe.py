"""Representation probes: the classifiers on known features, the `probe` command end to end, the
MAE-encoder conversion, the pretraining monitor and the linear-probe standardisation."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from svfap_jax import api, optim, probe, sharding
from svfap_jax.models.registry import get_spec
from svfap_jax.train.state import TrainState

# Small inputs keep every compile in this file to seconds: a 32 px, 4-frame ViT.
MODEL = "vit_tiny"
SIZE = dict(img_size=32, num_frames=4)


# ----------------------------------------------------------------------- classifiers on features


def _blobs(rng, n, dim, centres, spread=1.0):
  labels = rng.integers(0, len(centres), n)
  return centres[labels] + spread * rng.standard_normal((n, dim)), labels


def test_far_apart_blobs_are_separated_perfectly():
  rng = np.random.default_rng(0)
  centres = np.stack([np.full(16, 10.0), np.full(16, -10.0)])
  centres[1, :8] = 10.0   # different directions, so cosine similarity separates them too
  train_x, train_y = _blobs(rng, 60, 16, centres)
  test_x, test_y = _blobs(rng, 40, 16, centres)
  out = probe.probe_features(train_x, train_y, test_x, test_y, knn_k=20)
  assert out["knn_uar"] == out["knn_war"] == 1.0
  assert out["linear_uar"] == out["linear_war"] == 1.0
  assert out["linear_converged"] and out["knn_k"] == 20
  assert (out["num_train"], out["num_test"]) == (60, 40)


def test_labels_unrelated_to_features_stay_near_chance():
  rng = np.random.default_rng(1)
  train_x, test_x = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
  train_y, test_y = rng.integers(0, 3, 600), rng.integers(0, 3, 600)
  out = probe.probe_features(train_x, train_y, test_x, test_y, num_classes=3)
  for key in ("knn_uar", "linear_uar"):
    assert abs(out[key] - 1 / 3) < 0.07, (key, out[key])


def test_knn_is_a_cosine_majority_vote():
  """Against a direct numpy vote; cosine ignores each vector's length, Euclidean would not."""
  rng = np.random.default_rng(2)
  train_x = rng.standard_normal((50, 6)) * rng.uniform(0.1, 10.0, (50, 1))
  train_y = rng.integers(0, 2, 50)
  test_x = rng.standard_normal((30, 6))
  k = 7
  got, used = probe.knn_predict(train_x, train_y, test_x, k)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(test_x) @ unit(train_x).T
  nearest = np.argsort(-sims, axis=1)[:, :k]
  want = (train_y[nearest].mean(axis=1) > 0.5).astype(int)
  assert used == k
  np.testing.assert_array_equal(got, want)
  rescaled, _ = probe.knn_predict(train_x * rng.uniform(0.01, 100.0, (50, 1)), train_y, test_x, k)
  np.testing.assert_array_equal(rescaled, want)
  # k is clipped to the training set.
  assert probe.knn_predict(train_x[:5], train_y[:5], test_x, 20)[1] == 5


def test_uar_is_balanced_accuracy_on_an_imbalanced_set():
  from sklearn.metrics import accuracy_score, balanced_accuracy_score
  rng = np.random.default_rng(3)
  centres = rng.standard_normal((3, 4)) * 1.2
  train_x, train_y = _blobs(rng, 200, 4, centres)
  test_y = np.array([0] * 60 + [1] * 15 + [2] * 5)
  test_x = centres[test_y] + rng.standard_normal((80, 4))
  out = probe.probe_features(train_x, train_y, test_x, test_y, num_classes=3)
  linear, _ = probe.linear_predict(train_x, train_y, test_x)
  assert out["linear_uar"] == pytest.approx(balanced_accuracy_score(test_y, linear))
  assert out["linear_war"] == pytest.approx(accuracy_score(test_y, linear))
  knn, _ = probe.knn_predict(train_x, train_y, test_x, 20)
  assert out["knn_uar"] == pytest.approx(balanced_accuracy_score(test_y, knn))
  with pytest.raises(probe.ProbeError, match="unlabelled"):
    probe.probe_features(train_x, np.r_[train_y[:-1], -1], test_x, test_y)


# ----------------------------------------------------------------------------- data and command


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """21 drawn-face clips (7 classes), one train and one test clip listed without a class."""
  from data_pipelines import build, synthetic
  root = tmp_path_factory.mktemp("probe_faces")
  raw = root / "raw"
  synthetic.write_dataset(str(raw), num_clips_per_class=3, num_frames=12, size=40, seed=0,
                          test_fraction=0.34, write_videos=False)
  lists = raw / "lists" / "split01"
  argv = ["--out", str(root / "prepared"), "--label-names", ",".join(synthetic.EMOTIONS),
          "--short-side", "36", "--quiet"]
  for split in ("train", "test"):
    lines = (lists / f"{split}.csv").read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " -1"
    (lists / f"{split}_probe.csv").write_text("\n".join(lines) + "\n")
    argv += ["--list", f"{split}={lists / f'{split}_probe.csv'}"]
  assert build.main(argv) == 0
  info = json.loads((root / "prepared" / "dataset_info.json").read_text())
  return str(root / "prepared"), info


def _counts(info, split):
  total = info["splits"][split]["num_clips"]
  return total - 1, 1   # labelled, unlabelled


def test_probe_command_end_to_end(dataset, tmp_path, monkeypatch, capsys):
  from svfap_jax import cli
  data, info = dataset
  monkeypatch.chdir(tmp_path)
  os.symlink(data, tmp_path / "ds")   # relative paths, from the current directory
  code = cli.main(["probe", "--data", "ds", "--random-init", "--model", MODEL, "--img-size", "32",
                   "--num-frames", "4", "--sampling-rate", "2", "--batch-size", "8",
                   "--baseline", "--seed", "1", "--out", "out/report.json"])
  printed = capsys.readouterr()
  assert code == 0, printed.err
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  res = report["probe"]
  n_train, _ = _counts(info, "train")
  n_test, _ = _counts(info, "test")
  assert (res["num_train"], res["num_test"]) == (n_train, n_test)
  assert res["num_unlabelled_train"] == res["num_unlabelled_test"] == 1
  assert res["num_corrupt"] == 0 and res["views_per_clip"] == 2
  assert res["knn_k"] == min(20, n_train)
  for part in (res, report["baseline"]):
    for key in ("knn_uar", "knn_war", "linear_uar", "linear_war"):
      assert 0.0 <= part[key] <= 1.0
  assert report["encoder"] == {"source": "random init (vit_tiny, seed 1)", "model": MODEL,
                               "img_size": 32, "num_frames": 4, "sampling_rate": 2,
                               "eval_resize": 32}
  assert "random init" in printed.out and "UAR" in printed.out
  assert f"{n_train} train / {n_test} test clips" in printed.out


def test_probe_command_refuses_bad_input_briefly(dataset, tmp_path, capsys):
  from svfap_jax import cli
  data, _ = dataset
  (tmp_path / "bad_info").mkdir()
  (tmp_path / "bad_info" / "dataset_info.json").write_text('{"splits": ')
  with pytest.raises(SystemExit) as exit_info:   # argparse: exit status 2 and a usage line
    cli.main(["probe", "--data", data, "--random-init"])
  assert exit_info.value.code == 2 and "needs --model" in capsys.readouterr().err
  cases = [
      (["--data", str(tmp_path / "nothing"), "--random-init", "--model", MODEL],
       "dataset_info.json is missing"),
      (["--data", str(tmp_path / "bad_info"), "--random-init", "--model", MODEL],
       "not readable JSON"),
      (["--data", data, "--random-init", "--model", MODEL, "--test-split", "val"],
       "has no split 'val'"),
      (["--data", data, "--random-init", "--model", "svfap_huge"], "unknown model"),
      (["--data", data, "--random-init", "--model", MODEL, "--img-size", "30"],
       "not a multiple of patch_size"),
      (["--data", data, "--workdir", str(tmp_path / "no_run")], "no Orbax checkpoint"),
  ]
  for argv, message in cases:
    assert cli.main(["probe", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


# ------------------------------------------------------------------ MAE encoder, workdir, monitor


_MAE_INIT = {}


def _mae(seed=0):
  """(spec, MAE module, host params for `seed`); one compiled initialiser for the file."""
  spec = get_spec(MODEL, **SIZE)
  module = api.build_module(spec, pretrain=True)
  if "init" not in _MAE_INIT:
    _MAE_INIT["init"] = jax.jit(lambda k: api.init_params(module, spec, k, True)[0])
  return spec, module, jax.device_get(_MAE_INIT["init"](jax.random.key(seed)))


def test_mae_encoder_params_are_what_fine_tuning_loads():
  """The in-memory conversion equals the PyTorch-key-space adaptation of `init_from`."""
  from svfap_jax.interop import load, mapping
  spec, _, mae = _mae()
  classifier = api.build_module(spec, num_classes=0)
  template = jax.device_get(jax.jit(
      lambda k: api.init_params(classifier, spec, k, False)[0])(jax.random.key(5)))
  matched, _ = load.match_state_dict(mapping.to_torch_state_dict(mae, pretrain=True), template,
                                     pretrain=False)
  full = mapping.to_torch_state_dict(template, pretrain=False)
  full.update(matched)
  want = mapping.from_torch_state_dict(full, template, pretrain=False)
  got = probe.classifier_encoder_params(mae)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A linear-probe classifier starts from the same checkpoint: its statistics start fresh.
  lp = api.build_module(spec, num_classes=7).clone(linear_probe=True)
  lp_template = jax.eval_shape(lambda k: api.init_params(lp, spec, k, False)[0],
                               jax.random.key(0))
  _, report = load.match_state_dict(mapping.to_torch_state_dict(mae, pretrain=True), lp_template,
                                    pretrain=False)
  assert {"head_norm.mean", "head_norm.var", "head.weight"} <= set(report.fresh)


def _pretrain_config(data):
  c = common.base("pretrain")
  c.model.name = MODEL
  c.data.dir = data
  c.data.img_size, c.data.num_frames, c.data.sampling_rate = 32, 4, 2
  c.batch_size = 8
  c.probe.data.dir = data
  c.probe.every_steps = 2
  return c


def test_probe_of_a_pretraining_workdir_and_file(dataset, tmp_path):
  """A pretraining checkpoint (Orbax workdir or PyTorch-keyed file) is probed through its
  encoder, as fine-tuning would load it."""
  from svfap_jax import checkpoint, optim
  from svfap_jax.train.state import TrainState
  data, _ = dataset
  spec, module, mae = _mae(seed=3)
  config = _pretrain_config(data)
  tx, _ = optim.make_optimizer(config, mae, pretrain=True, total_steps=10)
  writer = checkpoint.RunCheckpointer(str(tmp_path / "P"), async_save=False)
  writer.save(1, TrainState.create(mae, tx, 0), meta={
      "config": json.loads(config.to_json_best_effort()), "model": MODEL, "mode": "pretrain"},
      force=True)
  writer.wait()
  encoder = probe.load_encoder(workdir=str(tmp_path / "P"), **SIZE)
  assert (encoder.name, encoder.sampling_rate, encoder.spec.img_size) == (MODEL, 2, 32)
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  embedder = probe.Embedder(encoder.module, mesh)
  options = dict(batch_size=8, num_frames=4, sampling_rate=2, img_size=32)
  from_disk = embedder.embed(encoder.params, data, "test", **options)
  in_memory = embedder.embed(mae, data, "test", **options)
  np.testing.assert_allclose(from_disk.features, in_memory.features, rtol=1e-6, atol=1e-6)
  assert from_disk.num_unlabelled == 1 and from_disk.num_views == 1
  # Its random twin is the MAE initialisation the run started from (config.seed = 0).
  twin = probe.random_twin(encoder)
  assert encoder.mae_init and "MAE initialisation, seed 0" in twin.source
  for a, b in zip(jax.tree_util.tree_leaves(twin.params),
                  jax.tree_util.tree_leaves(probe.classifier_encoder_params(_mae(seed=0)[2]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  pytest.importorskip("safetensors")
  from svfap_jax.interop import files, mapping
  files.save_state_dict(mapping.to_torch_state_dict(mae, pretrain=True),
                        str(tmp_path / "mae.safetensors"))
  from_file = probe.load_encoder(torch=str(tmp_path / "mae.safetensors"), model=MODEL, **SIZE)
  np.testing.assert_allclose(embedder.embed(from_file.params, data, "test", **options).features,
                             in_memory.features, rtol=1e-6, atol=1e-6)
  with pytest.raises(probe.ProbeError, match="no such file"):
    probe.load_encoder(torch=str(tmp_path / "missing.pth"), model=MODEL)

  # A fine-tuned classifier's file (head of its own label set, DDP prefix): the encoder is probed.
  classifier = api.build_module(spec, num_classes=3)
  tuned = jax.device_get(jax.jit(
      lambda k: api.init_params(classifier, spec, k, False)[0])(jax.random.key(9)))
  files.save_state_dict({f"module.{k}": v for k, v in
                         mapping.to_torch_state_dict(tuned, pretrain=False).items()},
                        str(tmp_path / "tuned.safetensors"))
  from_tuned = probe.load_encoder(torch=str(tmp_path / "tuned.safetensors"), model=MODEL, **SIZE)
  assert "head" not in from_tuned.params
  np.testing.assert_allclose(
      embedder.embed(from_tuned.params, data, "test", **options).features,
      embedder.embed(tuned, data, "test", **options).features, rtol=1e-6, atol=1e-6)


def test_probe_monitor(dataset):
  data, info = dataset
  spec, module, mae = _mae(seed=0)   # the run's initialisation for config.seed = 0
  config = _pretrain_config(data)
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  off = _pretrain_config(data)
  off.probe.data.dir = ""
  assert probe.ProbeMonitor.from_config(off, mesh, module) is None
  monitor = probe.ProbeMonitor.from_config(config, mesh, module)
  assert monitor.due(4) and not monitor.due(3)
  # The baseline is the run's own initialisation for config.seed.
  for a, b in zip(jax.tree_util.tree_leaves(monitor._random_params()),
                  jax.tree_util.tree_leaves(mae)):
    np.testing.assert_array_equal(np.asarray(a), b)
  first = monitor.run(0, jax.device_put(mae))
  n_train, _ = _counts(info, "train")
  assert first["probe_num_train"] == first["probe_random_num_train"] == n_train
  assert first["probe_knn_uar"] == first["probe_random_knn_uar"]
  _, _, other = _mae(seed=7)
  later = monitor.run(2, other)
  assert not any(k.startswith("probe_random_") for k in later)
  assert later["probe_num_unlabelled_test"] == later["probe_num_unlabelled_train"] == 1
  assert set(later) >= {"probe_knn_uar", "probe_knn_war", "probe_linear_uar",
                        "probe_linear_war", "probe_num_test"}


# -------------------------------------------------------------------- linear-probe fine-tuning


def test_linear_probe_head_reads_standardised_features(dataset):
  data, _ = dataset
  spec = get_spec(MODEL, **SIZE)
  module = api.build_module(spec, num_classes=7).clone(linear_probe=True)
  params = jax.device_get(jax.jit(
      lambda k: api.init_params(module, spec, k, False)[0])(jax.random.key(0)))
  np.testing.assert_array_equal(params["head_norm"]["mean"], np.zeros(64))
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  config = ml_collections.ConfigDict(common.base("finetune").to_dict())
  config.data.update(dir=data, img_size=32, num_frames=4, sampling_rate=2)
  config.batch_size = 8
  config.finetune.mode = "linear_probe"
  tx, _ = optim.make_optimizer(config, params, pretrain=False, total_steps=10)
  state = probe.init_head_state(TrainState.create(params, tx, 0, ema=True), config,
                                        module, data, mesh)
  params = jax.device_get(state.params)
  # The EMA copy (what evaluation reads) holds the same statistics, in buffers of its own.
  for name in ("mean", "var"):
    np.testing.assert_array_equal(state.ema_params["head_norm"][name], params["head_norm"][name])
    assert state.ema_params["head_norm"][name] is not state.params["head_norm"][name]
  # Other runs are left alone.
  plain_state = TrainState.create(params, tx, 0)
  assert probe.init_head_state(plain_state, config, module.clone(linear_probe=False),
                                       data, mesh) is plain_state

  feats = probe.Embedder(module, mesh).embed(params, data, "train", batch_size=8, num_frames=4,
                                             sampling_rate=2, img_size=32).features
  mean, var = params["head_norm"]["mean"], params["head_norm"]["var"]
  np.testing.assert_allclose(mean, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, feats.var(axis=0), rtol=1e-4, atol=1e-7)
  z = (feats - mean) / np.sqrt(var + 1e-6)
  np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-3)

  video = np.asarray(jax.random.uniform(jax.random.key(2), (2, 4, 32, 32, 3)))
  features = module.apply({"params": params}, video, return_features=True)
  logits = module.apply({"params": params}, video)
  want = ((features - mean) / np.sqrt(var + 1e-6)) @ params["head"]["kernel"] \
      + params["head"]["bias"]
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  # A plain classifier on the same parameters ignores the statistics: the option matters.
  plain = module.clone(linear_probe=False).apply({"params": params}, video)
  assert not np.allclose(plain, logits)


def test_config_checks_and_the_linear_probe_config(dataset):
  from configs import linear_probe
  data, _ = dataset
  config = _pretrain_config(data)
  assert probe.config_errors(config) == []
  config.probe.every_steps, config.probe.test_split = 0, "val"
  errors = " | ".join(probe.config_errors(config))
  assert "probe.every_steps=0 must be >= 1" in errors
  assert "no split 'val'" in errors and "probe.test_split" in errors
  config.probe.data.dir = ""
  assert probe.config_errors(config) == []

  lp = linear_probe.get_config()
  assert lp.finetune.mode == "linear_probe" and optim.finetune_config_errors(lp) == []
  assert lp.model.drop_path_rate == 0.0 and lp.augment.mixup == 0.0
  spec = get_spec(lp.model.name)
  module = api.build_module(spec, num_classes=7).clone(linear_probe=True)
  tree = jax.eval_shape(lambda k: api.init_params(module, spec, k, False)[0], jax.random.key(0))
  mask = optim.trainable_mask_for(lp, tree, pretrain=False)
  assert [k for k, v in mask.items() if any(jax.tree_util.tree_leaves(v))] == ["head"]
  dfew = linear_probe.get_config("dataset=dfew,fold=2,model=svfap_small")
  assert (dfew.fold, dfew.model.name, dfew.finetune.mode) == (2, "svfap_small", "linear_probe")
  with pytest.raises(ValueError, match="unknown dataset"):
    linear_probe.get_config("dataset=nope")


def test_linear_probe_finetune_run_trains_only_the_head(dataset, tmp_path):
  """A whole `finetune` run with finetune.mode=linear_probe through the run loop."""
  from configs import demo
  from svfap_jax import checkpoint
  from svfap_jax.train import loop
  data, _ = dataset
  config = demo.get_config("finetune")
  config.data.update(dir=data, num_frames=16, sampling_rate=1, num_test_segments=1)
  config.update(batch_size=4, total_steps=3, eval_every_steps=3, checkpoint_every_steps=3)
  config.finetune.mode = "linear_probe"
  config.model.drop_path_rate = 0.0
  first = loop.Trainer(config, str(tmp_path / "init"))
  start = jax.device_get(first.state.params)
  loop.train(config, str(tmp_path / "run"))
  trained, _ = checkpoint.restore_params(str(tmp_path / "run"))
  # The encoder is bit-identical; the statistics were set before training and stay; the head moves.
  for a, b in zip(jax.tree_util.tree_leaves(start["encoder"]),
                  jax.tree_util.tree_leaves(trained["encoder"])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(start["head_norm"]["mean"], trained["head_norm"]["mean"])
  assert np.abs(start["head_norm"]["mean"]).max() > 0
  assert np.abs(start["head"]["kernel"] - trained["head"]["kernel"]).max() > 0
  # evaluate/predict rebuild the run's module with the standardisation.
  assert loop.build_module(config, first.spec, 7, False).linear_probe

  # The standardisation folds into the head: the exported file loads strictly into the PyTorch
  # twin (which has no such layer) and `init_from` into a plain classifier, with the same logits.
  import torch  # pylint: disable=g-import-not-at-top
  from svfap_jax.interop import files, torch_twin  # pylint: disable=g-import-not-at-top
  from svfap_jax.train import export  # pylint: disable=g-import-not-at-top
  video = np.asarray(jax.random.uniform(jax.random.key(3), (2, 16, 64, 64, 3)))
  want = np.asarray(loop.build_module(config, first.spec, 7, False).apply({"params": trained},
                                                                          video))
  out = tmp_path / "lp.pth"
  assert export.export_main(["--workdir", str(tmp_path / "run"), "--out", str(out)]) == 0
  state = files.load_state_dict(str(out))
  assert not any(k.startswith("head_norm") for k in state)
  twin = torch_twin.build_torch_model(first.spec, num_classes=7).eval()
  twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  with torch.no_grad():
    got = twin(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  plain = api.build_module(first.spec, num_classes=7)
  template = jax.device_get(jax.jit(
      lambda k: api.init_params(plain, first.spec, k, False)[0])(jax.random.key(1)))
  loaded, _ = checkpoint.load_initial_params(str(tmp_path / "run"), template, pretrain=False)
  np.testing.assert_allclose(plain.apply({"params": loaded}, video), want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())


# ------------------------------------------------------------------ LP-FT: a fitted starting head


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("num_fitted", [4, 2])
def test_fitted_head_gives_the_logistic_regression_probabilities(num_fitted):
  """The head's softmax equals sklearn's StandardScaler + LogisticRegression predict_proba, for a
  multinomial and a two-class fit; classes the training labels lack get (almost) no mass."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  rng = np.random.default_rng(4)
  centres = rng.standard_normal((num_fitted, 12)) * 1.5
  x, y = _blobs(rng, 120, 12, centres)
  x = x * rng.uniform(0.1, 20.0, 12) + rng.uniform(-5, 5, 12)   # unstandardised channels
  y = np.where(y == 1, 4, y)             # class 1 of the 5-way head is never seen
  kernel, bias, converged = probe.fit_linear_head(x, y, 5, mean=x.mean(0), var=x.var(0))
  assert converged and kernel.shape == (12, 5) and bias.shape == (5,)
  ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.LINEAR_C, max_iter=5000))
  ref.fit(x, y)
  test = x[:40] + rng.standard_normal((40, 12))
  z = (test - x.mean(0)) / np.sqrt(x.var(0) + 1e-6)
  got = _softmax(z @ kernel.astype(np.float64) + bias)
  fitted = got[:, ref.classes_] / got[:, ref.classes_].sum(axis=1, keepdims=True)
  np.testing.assert_allclose(fitted, ref.predict_proba(test), atol=1e-4)
  assert got[:, 1].max() < 1e-3 and np.all(kernel[:, 1] == 0)
  with pytest.raises(probe.ProbeError, match="outside the head's 3 classes"):
    probe.fit_linear_head(x, y, 3, mean=x.mean(0), var=x.var(0))


@pytest.mark.parametrize("standardized", [False, True])
def test_lp_ft_head_starts_at_the_linear_probe_fit(dataset, standardized):
  """init_head_state with finetune.head_init='linear_probe': the run's logits on the training
  clips are those of a logistic regression fitted on the same embeddings, with or without the
  standardisation layer (folded onto raw features without it); the encoder is untouched."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  data, _ = dataset
  spec = get_spec(MODEL, **SIZE)
  module = api.build_module(spec, num_classes=7).clone(linear_probe=standardized)
  params = jax.device_get(jax.jit(
      lambda k: api.init_params(module, spec, k, False)[0])(jax.random.key(0)))
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  config = ml_collections.ConfigDict(common.base("finetune").to_dict())
  config.data.update(dir=data, img_size=32, num_frames=4, sampling_rate=2)
  config.batch_size = 8
  config.finetune.head_init = "linear_probe"
  assert probe.head_config_errors(config) == []
  tx, _ = optim.make_optimizer(config, params, pretrain=False, total_steps=10)
  state = probe.init_head_state(TrainState.create(params, tx, 0, ema=True), config, module, data,
                                mesh)
  new = jax.device_get(state.params)
  np.testing.assert_array_equal(jax.device_get(state.ema_params)["head"]["kernel"],
                                new["head"]["kernel"])
  for a, b in zip(jax.tree_util.tree_leaves(params["encoder"]),
                  jax.tree_util.tree_leaves(new["encoder"])):
    np.testing.assert_array_equal(a, b)
  emb = probe.Embedder(module, mesh).embed(new, data, "train", batch_size=8, num_frames=4,
                                           sampling_rate=2, img_size=32)
  ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.LINEAR_C, max_iter=5000))
  ref.fit(emb.features.astype(np.float64), emb.labels)
  # The head as VideoClassifier applies it (the standardisation is checked against the module
  # in test_linear_probe_head_reads_standardised_features).
  feats = emb.features.astype(np.float64)
  if standardized:
    feats = (feats - new["head_norm"]["mean"]) / np.sqrt(new["head_norm"]["var"] + 1e-6)
  logits = feats @ new["head"]["kernel"] + new["head"]["bias"]
  np.testing.assert_allclose(_softmax(logits)[:, ref.classes_],
                             ref.predict_proba(emb.features.astype(np.float64)), atol=2e-3)


def test_head_init_config_errors():
  config = ml_collections.ConfigDict(common.base("finetune").to_dict())
  config.finetune.head_init = "pretrained"
  assert "must be one of ('random', 'linear_probe')" in probe.head_config_errors(config)[0]
  config.finetune.head_init = "linear_probe"
  config.task = "regression"
  assert "needs a classification fine-tuning run" in probe.head_config_errors(config)[0]
  config.task = "classification"
  config.model.keep_temporal_dim = True
  assert "keep_temporal_dim" in probe.head_config_errors(config)[0]
