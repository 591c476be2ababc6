"""Marked slower check: SimCLR-GeM training improves cross-patient lesion retrieval on the DeepLesion phantom."""
import pytest

from callbacks import RetrievalEvaluation
from datamodules.deeplesion import DeepLesionDataModule
from datamodules.synthetic.deeplesion import write_deeplesion_phantom
from lightning_modules.simclr_gem import SimCLRGeM
from tests.conftest import metric_before_after


@pytest.mark.slow
def test_simclr_gem_training_improves_cross_patient_ap(tmp_path):
    root = write_deeplesion_phantom(tmp_path / "DeepLesion", n_patients=40, image_size=128, seed=0)
    untrained, trained = metric_before_after(
        lambda: SimCLRGeM(backbone="resnet18", extra_channels=(128, 128), proj_hidden_dim=256, proj_dim=64),
        lambda: DeepLesionDataModule(str(root), crop_size=32, batch_size=64, num_workers=0),
        lambda: RetrievalEvaluation(gallery_split=None, k_values=[10], metrics=["AP"],
                                    candidate_sets=["cross_patient"]),
        epochs=8, key="test/cross_patient/AP@10", tmp_path=tmp_path)
    assert trained > untrained + 0.02
