"""Importing PyTorch checkpoints saved by other training stacks (wrappers, containers, misfits).

The reference for every loaded tensor is the state_dict the file was written from; a refused file
must give a short diagnosis (no key list of the whole model) that names the cause.
"""
import collections

import jax
import numpy as np
import pytest

import svfap_jax
from svfap_jax import api, cli
from svfap_jax.interop import files, load, mapping
from svfap_jax.models.registry import get_spec

torch = pytest.importorskip("torch")

MAX_MESSAGE = 1500


def _template(name="svfap_tiny", *, pretrain=False, num_classes=3, **overrides):
  """Parameter shapes of a model (jax.ShapeDtypeStruct tree), without running its init."""
  spec = get_spec(name, **overrides)
  module = api.build_module(spec, pretrain=pretrain, num_classes=num_classes)
  return jax.eval_shape(lambda: api.init_params(module, spec, jax.random.key(0), pretrain)[0])


def _random_state_dict(template, *, pretrain=False, seed=0):
  """{torch key: distinct random float32 values} in the template's PyTorch shapes."""
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(shape).astype(np.float32)
          for k, shape in mapping.torch_shapes(template, pretrain=pretrain).items()}


@pytest.fixture(scope="module")
def target_params():
  """svfap_tiny classifier with 3 classes (140 tensors), as shapes."""
  return _template()


@pytest.fixture(scope="module")
def source(target_params):
  """(target shapes, a state_dict that fits them exactly)."""
  return target_params, _random_state_dict(target_params, seed=5)


def _save(obj, path):
  """torch.save of nested containers whose numpy arrays become tensors."""
  def conv(x):
    if isinstance(x, np.ndarray):
      return torch.from_numpy(np.array(x))
    if isinstance(x, dict):
      return collections.OrderedDict((k, conv(v)) for k, v in x.items())
    return x
  torch.save(conv(obj), path)
  return str(path)


def _assert_loaded_all(matched, want):
  assert set(matched) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(matched[k], v, err_msg=k)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module.",
                                    "module.module._orig_mod."])
def test_compiled_and_ddp_prefixes_are_removed(tmp_path, source, target_params, prefix):
  _, sd = source
  path = _save({"model": {prefix + k: v for k, v in sd.items()}, "epoch": 3},
               tmp_path / "c.pth")
  matched, report = load.match_state_dict(files.load_state_dict(path), target_params,
                                          pretrain=False, source=path)
  _assert_loaded_all(matched, sd)
  assert len(report.loaded) == 140 and not report.dropped and not report.fresh
  assert f"removed the wrapper prefix {prefix!r} from 140 keys" in report.summary()
  assert "weights under ['model']" in report.summary()


def test_compiled_checkpoint_through_import_torch_and_without_torch(tmp_path, source):
  _, sd = source
  path = _save({"model": {"module._orig_mod." + k: v for k, v in sd.items()}},
               tmp_path / "ddp_compiled.pth")
  got = svfap_jax.import_torch(path, "svfap_tiny", num_classes=3, seed=99, verbose=False)
  _assert_loaded_all(got.state_dict(), sd)
  # The reader that works without torch sees the same keys and origin.
  plain = files._unwrap_state_dict(files._read_pth_without_torch(path), path)
  assert plain.origin == "weights under ['model']"
  assert set(plain) == {"module._orig_mod." + k for k in sd}


def test_deepspeed_checkpoint_with_and_without_torch(tmp_path, source, target_params):
  _, sd = source
  half = {k: v.astype(np.float16) for k, v in sd.items()}
  path = _save({"module": half, "param_shapes": [collections.OrderedDict(
      (k, torch.Size(v.shape)) for k, v in half.items())], "ds_config": {"fp16": {"enabled": True}},
                "sparse_tensor_module_names": set(), "global_steps": 12},
               tmp_path / "mp_rank_00_model_states.pt")
  read = {"torch": files.load_state_dict(path),
          "no torch": files._unwrap_state_dict(files._read_pth_without_torch(path), path)}
  for how, state_dict in read.items():
    assert state_dict.origin == "weights under ['module']", how
    matched, _ = load.match_state_dict(state_dict, target_params, pretrain=False)
    assert all(v.dtype == np.float16 for v in matched.values()), how
    _assert_loaded_all(matched, half)


def test_lightning_checkpoint(tmp_path, source, target_params):
  _, sd = source
  inner = {"model." + k: v for k, v in sd.items()}
  inner["criterion.weight"] = np.ones(3, np.float32)  # a loss buffer beside the model
  path = _save({"state_dict": inner, "epoch": 7, "global_step": 70,
                "optimizer_states": [{"state": {}, "param_groups": []}],
                "lr_schedulers": [], "pytorch-lightning_version": "2.2.0"},
               tmp_path / "lightning.ckpt")
  matched, report = load.match_state_dict(files.load_state_dict(path), target_params,
                                          pretrain=False, source=path)
  _assert_loaded_all(matched, sd)
  summary = report.summary()
  assert "weights under ['state_dict']" in summary
  assert "removed the wrapper prefix 'model.' from 140 keys" in summary
  assert report.dropped == ["criterion.weight (outside the 'model.' wrapper)"]


def test_ema_copy_is_noted_and_taken_only_alone(tmp_path, source, target_params):
  _, sd = source
  ema = {k: v + 1.0 for k, v in sd.items()}
  both = files.load_state_dict(_save({"model": sd, "model_ema": ema, "optimizer": {}},
                                     tmp_path / "both.pth"))
  assert both.origin == "weights under ['model'] (not used: 'model_ema')"
  _assert_loaded_all(both, sd)
  # timm's ModelEmaV2 keeps its copy under `module.`.
  only = files.load_state_dict(_save({"ema": {"module." + k: v for k, v in ema.items()},
                                      "epoch": 1}, tmp_path / "ema.pth"))
  assert only.origin == "weights under ['ema']"
  matched, _ = load.match_state_dict(only, target_params, pretrain=False)
  _assert_loaded_all(matched, ema)


def test_encoder_only_checkpoint_into_classifier(tmp_path, source, target_params):
  _, sd = source
  encoder = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
  for prefix in ("encoder.", "backbone.encoder.", "module.encoder."):
    path = files.save_state_dict({prefix + k: v for k, v in encoder.items()},
                                 str(tmp_path / "enc.safetensors"))
    matched, report = load.match_state_dict(files.load_state_dict(path), target_params,
                                            pretrain=False)
    _assert_loaded_all(matched, encoder)
    assert sorted(report.fresh) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]


def test_pretraining_keys_keep_their_encoder_prefix(tmp_path):
  template = _template("vit_tiny", pretrain=True)
  sd = _random_state_dict(template, pretrain=True, seed=2)
  for prefix in ("", "module.", "_orig_mod."):
    matched, report = load.match_state_dict({prefix + k: v for k, v in sd.items()}, template,
                                            pretrain=True)
    _assert_loaded_all(matched, sd)
    assert ("removed the wrapper prefix" in report.summary()) == bool(prefix)


def test_prefix_is_kept_when_removing_it_fits_worse():
  shapes = {"model.a": (2,), "model.b": (3,)}
  sd = {"model.a": np.zeros(2), "model.b": np.zeros(3)}
  out, prefix, n, dropped = load.strip_wrappers(sd, shapes, pretrain=False)
  assert (set(out), prefix, n, dropped) == (set(sd), "", 0, [])
  # Carried by only half the keys: not a wrapper.
  half = {"module.a": np.zeros(2), "b": np.zeros(3)}
  out, prefix, _, _ = load.strip_wrappers(half, {"a": (2,), "b": (3,)}, pretrain=False)
  assert prefix == "" and set(out) == set(half)


def _refusal(state_dict, template, pretrain=False):
  with pytest.raises(load.CheckpointMismatchError) as err:
    load.match_state_dict(state_dict, template, pretrain=pretrain, source="x.pth")
  msg = str(err.value)
  assert len(msg) < MAX_MESSAGE, msg
  assert "nothing was loaded" in msg
  return err.value, msg


def test_unknown_prefix_is_named_not_listed(source, target_params):
  _, sd = source
  err, msg = _refusal({"net." + k: v for k, v in sd.items()}, target_params)
  assert "every key of the file starts with 'net.', which the model's keys do not have" in msg
  assert "they match 136 of the 136 missing keys: strip it" in msg
  assert "136 model key(s) missing" in msg and "140 file key(s) the model does not have" in msg
  assert msg.count("net.blocks.") <= 5
  assert len(err.unexpected) == 140 and len(err.missing) == 136
  assert "model size" not in msg


def test_two_copies_side_by_side_are_diagnosed(source):
  _, sd = source
  both = {**{"model." + k: v for k, v in sd.items()}, **{"model_ema." + k: v for k, v in sd.items()}}
  err, msg = _refusal(both, source[0])
  assert "140 of the file's 280 keys start with 'model.'" in msg
  assert "keep only the keys under it and strip it" in msg
  assert len(err.unexpected) == 280


def test_other_width_names_shapes_and_size(source):
  wide = _random_state_dict(_template(embed_dim=96))
  template = source[0]
  err, msg = _refusal({"_orig_mod." + k: v for k, v in wide.items()}, template)
  assert "removed the wrapper prefix '_orig_mod.'" in msg
  assert "patch_embed.proj.weight: file (96, 3, 2, 16, 16) vs model (64, 3, 2, 16, 16)" in msg
  want = sorted(k for k, v in wide.items()
                if not k.startswith("head.") and v.shape != source[1][k].shape)
  assert sorted(k for k, _, _ in err.mismatched) == want and len(want) > 5
  assert f"{len(want)} key(s) with another shape" in msg
  assert sum(line.startswith("  ") and "vs model" in line for line in msg.splitlines()) == 5
  assert ("another model size: a TPSBT with embed_dim 96 and 6 blocks, the target is a TPSBT "
          "with embed_dim 64 and 6 blocks") in msg
  assert "no registered model has that size" in msg


def test_other_registered_model_is_suggested(source):
  vit = _random_state_dict(_template("vit_tiny"))
  err, msg = _refusal(vit, source[0])
  assert "a ViT with embed_dim 64 and 3 blocks, the target is a TPSBT" in msg
  assert "registered model(s) of that size: vit_tiny" in msg
  assert err.missing and not err.unexpected and not err.mismatched


def test_classifier_file_into_pretraining_model(source):
  _, msg = _refusal(source[1], _template(pretrain=True), pretrain=True)
  assert "the model's keys start with 'encoder.' and the file's do not" in msg
  assert "import it as a classifier (without --pretrain)" in msg


def test_import_command_prints_short_error(tmp_path, source, capsys):
  _, sd = source
  path = _save({"model": {"net." + k: v for k, v in sd.items()}}, tmp_path / "net.pth")
  rc = cli.main(["import", "--torch", path, "--workdir", str(tmp_path / "w"),
                 "--model", "svfap_tiny", "--num-classes", "3"])
  err = capsys.readouterr().err
  assert rc == 1
  assert err.startswith("svfap import: error: ") and "'net.'" in err
  assert "Traceback" not in err and len(err) < MAX_MESSAGE
  assert not (tmp_path / "w").exists()
