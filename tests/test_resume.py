"""Exact resume: a run SIGKILLed mid-epoch and resumed with --ckpt_path last ends like the uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from callbacks.checkpoint_io import AtomicCheckpointIO
from tests.conftest import CONFIGS, read_metrics, tiny_overrides

ROOT = CONFIGS.parents[1]
EVERY_STEP = json.dumps({"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                         "init_args": {"save_top_k": 0, "save_last": True, "every_n_train_steps": 1}})


def fit_cmd(run_dir, phantom_root, *extra):
    return [sys.executable, "-m", "experiments", "fit", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
            *tiny_overrides(run_dir, phantom_root), "--trainer.max_epochs=3", "--trainer.accelerator=cpu",
            "--trainer.logger.init_args.version=run", f"--trainer.callbacks+={EVERY_STEP}", *extra]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def last_weights(run_dir):
    return torch.load(run_dir / "simsiam_hu_phantom" / "run" / "checkpoints" / "last.ckpt",
                      weights_only=False)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(phantom_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(fit_cmd(straight, phantom_root))
    # 25 training slices, batch 8, drop_last -> 3 steps per epoch; step 5 is in the middle of epoch 1.
    marker = tmp_path / "paused"
    pause = json.dumps({"class_path": "tests.helpers.PauseAtStep", "init_args": {"step": 5, "marker": str(marker)}})
    proc = subprocess.Popen(fit_cmd(killed, phantom_root, f"--trainer.callbacks+={pause}"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before reaching the pause step"
        time.sleep(0.5)
    assert marker.read_text() == "1 1"  # epoch 1, second batch: mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(killed / "simsiam_hu_phantom" / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # the last completed step before the kill
    run(fit_cmd(killed, phantom_root, "--ckpt_path=last"))
    assert read_metrics(killed)["val"]["metrics"] == read_metrics(straight)["val"]["metrics"]
    a, b = last_weights(straight), last_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind
