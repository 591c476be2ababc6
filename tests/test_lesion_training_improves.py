"""Slow check: SimCLR-GeM training improves cross-patient lesion retrieval (mP@10, the paper's "mAP@10") on the
DeepLesion phantom beyond the equal-steps control (weights frozen, BatchNorm statistics updated), on 2 of 3
seeds. Queries: the training lesions of 24 patients (>= 100), leave-one-out across patients; the lesion types
are written for this check only and never reach the self-supervised training."""
import pytest

from callbacks import RetrievalEvaluation
from datamodules.deeplesion import DeepLesionDataModule
from datamodules.synthetic.deeplesion import write_deeplesion_phantom
from lightning_modules.simclr_gem import SimCLRGeM
from tests.learning import assert_learns


@pytest.mark.slow
def test_simclr_gem_training_beats_the_equal_steps_control(tmp_path, one_thread):
    root = write_deeplesion_phantom(tmp_path / "DeepLesion", n_patients=40, image_size=128, seed=0,
                                    unlabelled_fraction=0.0)
    results = assert_learns(
        lambda: SimCLRGeM(backbone="resnet18", extra_channels=(128, 128), proj_hidden_dim=256, proj_dim=64,
                          optimizer="sgd", lr=0.05),
        lambda: DeepLesionDataModule(str(root), crop_size=32, crop_mm=50, batch_size=32, num_workers=0),
        lambda: RetrievalEvaluation(gallery_split=None, test_query_split="train", k_values=[10], metrics=["mP"],
                                    candidate_sets=["cross_patient"]),
        epochs=6, key="test/cross_patient/mP@10", tmp_path=tmp_path, margin=0.02)
    assert all(r.n_queries >= 100 for r in results)
