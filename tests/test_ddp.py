"""Two real processes (gloo on CPU) give the same retrieval metrics as one, on odd-sized splits."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import CONFIGS, read_metrics, tiny_overrides

ROOT = CONFIGS.parents[1]


def validate(run_dir, phantom_root, devices):
    cmd = [sys.executable, "-m", "experiments", "validate", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
           *tiny_overrides(run_dir, phantom_root), "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
           "--trainer.strategy=" + ("ddp" if devices > 1 else "auto"),
           "--data.init_args.batch_size=4", "--allow_untrained=true"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return read_metrics(run_dir)["val"]


@pytest.mark.slow
def test_two_process_validate_equals_single_process(phantom_root, tmp_path):
    single = validate(tmp_path / "single", phantom_root, devices=1)
    double = validate(tmp_path / "ddp", phantom_root, devices=2)
    # 3 test volumes x (3 + 2) slices = 15 queries, 5 x 5 = 25 gallery slices: neither divisible by 2.
    assert single["metrics"]["val/n_queries"] == 15 and single["metrics"]["val/n_gallery"] == 25
    assert double["metrics"].keys() == single["metrics"].keys()
    for key, value in single["metrics"].items():
        assert double["metrics"][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_two_process_fit_keeps_ranks_in_sync(phantom_root, tmp_path):
    """DDP averages gradients: after a few steps every rank holds bit-identical weights.

    (SyncBatchNorm is GPU-only in PyTorch; the multi-GPU recipe turns it on there.)
    """
    digest = json.dumps({"class_path": "tests.helpers.WeightsDigest", "init_args": {"folder": str(tmp_path)}})
    cmd = [sys.executable, "-m", "experiments", "fit", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
           *tiny_overrides(tmp_path, phantom_root), "--trainer.accelerator=cpu", "--trainer.devices=2",
           "--trainer.strategy=ddp", "--trainer.max_epochs=1",
           "--data.init_args.batch_size=4", f"--trainer.callbacks+={digest}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = ((tmp_path / f"rank{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    assert ckpt["global_step"] == 3  # 25 slices / (2 ranks x 4) -> 3 synchronised steps
