"""Long check: SimSiam-HU training improves test mP@5 on the CT phantom beyond the equal-steps control (same
batches and steps, weights frozen, BatchNorm statistics updated), on 2 of 3 seeds, with >= 100 queries.

It needs about 1,200 optimiser steps (80 epochs of 240 slices at batch 16), 12-17 minutes per seed on two
CPU cores, which the CI budget cannot hold; it is marked ``long`` and deselected by default:
``python -m pytest -m long tests/test_training_improves.py``. Measured (untrained / control / trained):
seed 0: 0.687 / 0.644 / 0.898, seed 1: 0.652 / 0.597 / 0.924 (120 queries). At the CI-sized budget
(120 slices, 20 epochs: 160 steps) training did not beat the untrained network (seed 0: 0.635 / 0.581 /
0.616; seed 1: 0.621 / 0.595 / 0.649); with the paper's augmentation at batch 32, 80 epochs gave 0.687 /
0.657 / 0.754."""
import pytest

from callbacks import RetrievalEvaluation
from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import write_liver_phantom
from lightning_modules.simsiam import SimSiam
from tests.learning import assert_learns

TRAIN_VOLUMES, TEST_VOLUMES = 24, 12   # 240 training slices (the gallery), 120 test queries


@pytest.mark.slow
@pytest.mark.long
def test_simsiam_hu_training_beats_the_equal_steps_control(tmp_path):
    root = write_liver_phantom(tmp_path / "Task03_Liver", n_volumes=TRAIN_VOLUMES + TEST_VOLUMES, n_test_volumes=0,
                               shape=(48, 48, 24))

    def data():
        # 48 px, not less: at 32 px the untrained ResNet-18's last map is 1x1 and, with timm's zero-initialised
        # residual branches, its embedding of these mostly-dark slices is exactly 0 (a degenerate baseline).
        return DecathlonLiverDataModule(str(root), image_size=48, train_volumes=TRAIN_VOLUMES, batch_size=16,
                                        num_workers=0, min_liver_fraction=0.01)

    def callback():
        return RetrievalEvaluation(k_values=[5], metrics=["mP"])

    def model():   # the demo's setting (experiments/configs/simsiam_hu_demo.yaml): lighter view augmentation
        return SimSiam(backbone="resnet18", proj_hidden_dim=256, proj_dim=256, pred_hidden_dim=64, lr=0.05,
                       crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)

    results = assert_learns(model, data, callback, epochs=80, key="test/mP@5", tmp_path=tmp_path, margin=0.05)
    assert all(r.n_queries >= 100 for r in results)
