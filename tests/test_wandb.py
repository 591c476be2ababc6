"""W&B offline: a phantom run with --wandb.enabled=true is found in the offline folder with its metrics,
config and retrieval grids, without an account or a network."""
import time

import pytest

from experiments.cli import RetrievalCLI
from tests.conftest import CONFIGS, tiny_overrides


@pytest.mark.slow
def test_offline_run_holds_metrics_config_and_grids(phantom_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default must be offline by itself
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cli = RetrievalCLI(args=["fit", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
                             *tiny_overrides(tmp_path, phantom_root), "--trainer.max_epochs=1",
                             "--trainer.limit_train_batches=2", "--wandb.enabled=true",
                             "--model.init_args.base_lr=0.0123"])
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["CSVLogger", "WandbLogger"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected one offline run folder"
    keys = (b"val/mP@5", b"val/AP@10", b"train/loss")  # metrics under the CSV / metrics.json keys
    deadline = time.time() + 60  # W&B's service process may still be flushing its record log on a busy machine
    while True:
        log = next(runs[0].glob("run-*.wandb")).read_bytes()  # W&B's record log (synced later by `wandb sync`)
        if all(key in log for key in keys) or time.time() > deadline:
            break
        time.sleep(1)
    for key in keys:
        assert key in log, key
    assert b"0.0123" in log and b"lightning_modules.simsiam.SimSiam" in log  # the resolved run config
    grids = list(runs[0].glob("files/media/images/val/retrieval_grid_*.png"))
    assert grids and grids[0].read_bytes()[:4] == b"\x89PNG"
