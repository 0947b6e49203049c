"""Command-line conventions shared by every command: argparse options with dashed names, and
`--config FILE[:ARGS]` with `--config.FIELD=VALUE` overrides handed to ml_collections."""
import pytest

from svfap_jax import cli
from svfap_jax.train import main as train_main


def _parser():
  parser = cli.config_parser("svfap test", "a test command")
  parser.add_argument("--workdir")
  parser.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int)
  return parser


def test_config_and_overrides_in_both_spellings():
  args = cli.parse_config_args(_parser(), [
      "--config", "configs/demo.py:finetune", "--workdir", "W", "--config.batch_size=3",
      "--config.data.dir", "/data/x", "--num-processes", "2", "--config.optim.lr=-0.5"])
  assert args.workdir == "W" and args.num_processes == 2
  assert args.config.mode == "finetune" and args.config.batch_size == 3
  assert args.config.data.dir == "/data/x" and args.config.optim.lr == -0.5
  # The underscore spelling is an alias, not a rewrite of the argument strings.
  assert cli.parse_config_args(_parser(), ["--config", "configs/demo.py:pretrain",
                                           "--num_processes", "4"]).num_processes == 4
  with pytest.raises(AttributeError):  # locked: a typo cannot add a field later
    args.config.no_such_field = 1


def test_config_file_found_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = cli.load_config("configs/demo.py:pretrain", ["--config.total_steps=7"])
  assert config.mode == "pretrain" and config.total_steps == 7


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/demo.py:pretrain", "--config.no_such_field=1"],
     "the config has no field named in --config.no_such_field=1"),
    (["--config", "configs/demo.py:pretrain", "--config.batch_size=many"],
     "--config.batch_size=many: invalid literal for int()"),
    (["--config", "configs/no_such_config.py"], "No such file or directory"),
    (["--config", "configs/demo.py:sideways"],
     "demo config argument must be 'pretrain' or 'finetune', got 'sideways'"),
    (["--config", "configs/demo.py:pretrain", "--workers", "2"],
     "unrecognized argument: --workers"),
    ([], "--config is required"),
])
def test_bad_command_lines_are_short_usage_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_config_args(_parser(), argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2
  assert message in err and "Traceback" not in err and err.startswith("usage: svfap test"), err


def test_run_commands_take_dashed_and_underscored_process_flags(monkeypatch):
  from svfap_jax import sharding  # pylint: disable=import-outside-toplevel
  seen = []
  monkeypatch.setattr(sharding, "initialize_distributed", lambda *a: seen.append(a))
  args = train_main.parse_flags(
      ["--config", "configs/demo.py:pretrain", "--workdir", "W", "--coordinator", "h:1",
       "--num-processes", "2", "--process_id", "1", "--checkpoint", "last"], "svfap evaluate",
      choose_checkpoint=True)
  assert seen == [("h:1", 2, 1)] and args.checkpoint == "last" and args.workdir == "W"
  with pytest.raises(SystemExit):   # which checkpoint to read is evaluate's option only
    train_main.parse_flags(["--config", "configs/demo.py:pretrain", "--workdir", "W",
                            "--checkpoint", "last"], "svfap pretrain")
  with pytest.raises(SystemExit) as exit_info:   # --workdir is required
    train_main.parse_flags(["--config", "configs/demo.py:pretrain"], "svfap pretrain")
  assert exit_info.value.code == 2


def test_compile_command_options():
  from svfap_jax import aot  # pylint: disable=import-outside-toplevel
  args = aot._parse(["--config", "configs/demo.py:finetune", "--topology", "cpu:8",  # pylint: disable=protected-access
                     "--batch-per-device", "2", "--host_crop", "72", "--json"])
  assert (args.topology, args.batch_per_device, args.host_crop, args.json) == ("cpu:8", 2, 72,
                                                                              True)
  assert args.num_outputs is None and not args.proxy and args.config.mode == "finetune"
