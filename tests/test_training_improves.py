"""Marked slower check: a few epochs of SimSiam-HU on the phantom improve test mP@5 over the untrained encoder."""
import pytest

from callbacks import RetrievalEvaluation
from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import write_liver_phantom
from lightning_modules.simsiam import SimSiam
from tests.conftest import metric_before_after


@pytest.mark.slow
def test_simsiam_hu_training_improves_test_map(tmp_path):
    root = write_liver_phantom(tmp_path / "Task03_Liver", n_volumes=28, n_test_volumes=0, shape=(48, 48, 32))
    untrained, trained = metric_before_after(
        lambda: SimSiam(backbone="resnet18", proj_hidden_dim=256, proj_dim=256, pred_hidden_dim=64),
        lambda: DecathlonLiverDataModule(str(root), image_size=48, train_volumes=20, batch_size=32, num_workers=0),
        lambda: RetrievalEvaluation(k_values=[5], metrics=["mP"]), epochs=10, key="test/mP@5", tmp_path=tmp_path)
    assert trained > untrained + 0.02
