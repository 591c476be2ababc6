"""Slow check: SimSiam-HU training improves test mP@5 on the CT phantom beyond the equal-steps control (same
batches and steps, weights frozen, BatchNorm statistics updated), on 2 of 3 seeds, with >= 100 queries."""
import pytest

from callbacks import RetrievalEvaluation
from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import write_liver_phantom
from lightning_modules.simsiam import SimSiam
from tests.learning import assert_learns

TRAIN_VOLUMES, TEST_VOLUMES = 12, 11   # 120 training slices (the gallery), 110 test queries


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "not shown on the current CT phantom: at 48 px after 8 epochs (24 steps), untrained / control / trained "
    "mP@5 = 0.635 / 0.626 / 0.592 (seed 0) and 0.621 / 0.620 / 0.638 (seed 1), 110 queries. A 32 px version "
    "passed only because the untrained embedding was all zeros (0.500 for untrained and control); see the "
    "README, 'Trained vs untrained vs control'"))
def test_simsiam_hu_training_beats_the_equal_steps_control(tmp_path, one_thread):
    root = write_liver_phantom(tmp_path / "Task03_Liver", n_volumes=TRAIN_VOLUMES + TEST_VOLUMES, n_test_volumes=0,
                               shape=(48, 48, 24))

    def data():
        # 48 px, not less: at 32 px the untrained ResNet-18's last map is 1x1 and, with timm's zero-initialised
        # residual branches, its embedding of these mostly-dark slices is exactly 0 (a degenerate baseline).
        return DecathlonLiverDataModule(str(root), image_size=48, train_volumes=TRAIN_VOLUMES, batch_size=32,
                                        num_workers=0, min_liver_fraction=0.01)

    def callback():
        return RetrievalEvaluation(k_values=[5], metrics=["mP"])

    results = assert_learns(
        lambda: SimSiam(backbone="resnet18", proj_hidden_dim=256, proj_dim=256, pred_hidden_dim=64, lr=0.05),
        data, callback, epochs=8, key="test/mP@5", tmp_path=tmp_path, margin=0.02)
    assert all(r.n_queries >= 100 for r in results)
