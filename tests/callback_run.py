"""`python -m svfap_jax pretrain|finetune ...` with test callbacks in the trainer.

  python tests/callback_run.py [--audit DIR] [--kill-after-step N] -m svfap_jax COMMAND ARGS...

The `-m svfap_jax` in the middle lets launchers that start `PYTHON -m svfap_jax ...` run this
script instead, through a one-line wrapper as their interpreter (tests/test_scale_out.py).

  --audit DIR           every process appends the record numbers of each batch it reads to
                        DIR/process_<i>.jsonl (one JSON list per line)
  --kill-after-step N   SIGKILL this process once step N's checkpoint is on disk, like a machine
                        loss (no cleanup, no final save)
"""
import json
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from svfap_jax.train import loop, main  # pylint: disable=g-import-not-at-top,wrong-import-position


class AuditBatches(loop.Callback):
  """Appends each host batch's record numbers to DIR/process_<i>.jsonl."""

  def __init__(self, directory: str):
    self.directory = directory

  def on_batch(self, step, batch):
    import jax  # pylint: disable=g-import-not-at-top
    # The process index is known once the command has joined jax.distributed.
    os.makedirs(self.directory, exist_ok=True)
    path = os.path.join(self.directory, f"process_{jax.process_index()}.jsonl")
    with open(path, "a") as f:
      f.write(json.dumps([int(i) for i in batch["index"]]) + "\n")


class KillAfterStep(loop.Callback):
  """SIGKILLs the process once step `step`'s checkpoint is written."""

  def __init__(self, step: int):
    self.step = step

  def on_step_end(self, step, trainer):
    if step == self.step:
      trainer.checkpointer.wait()
      os.kill(os.getpid(), signal.SIGKILL)


def run(argv: list[str]) -> int:
  audit, kill_after = None, None
  while argv and argv[0] != "-m":
    option, value, argv = argv[0], argv[1], argv[2:]
    if option == "--audit":
      audit = value
    elif option == "--kill-after-step":
      kill_after = int(value)
    else:
      raise SystemExit(f"callback_run: unknown option {option}")
  if argv[:2] != ["-m", "svfap_jax"] or len(argv) < 3:
    raise SystemExit("callback_run: expected -m svfap_jax COMMAND ARGS...")
  command, rest = argv[2], argv[3:]
  entry = {"pretrain": main.pretrain_main, "finetune": main.finetune_main}.get(command)
  if entry is None:
    raise SystemExit(f"callback_run: {command} takes no callbacks (pretrain or finetune)")
  callbacks = ([AuditBatches(audit)] if audit else []) + (
      [KillAfterStep(kill_after)] if kill_after else [])
  return entry(rest, callbacks=callbacks)


if __name__ == "__main__":
  sys.exit(run(sys.argv[1:]))
