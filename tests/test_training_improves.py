"""Marked slower check: a few epochs of SimSiam-HU on the phantom improve test mP@5 over the untrained encoder."""
import pytest
import pytorch_lightning as pl

from callbacks import RetrievalEvaluation
from datamodules.decathlon_liver import DecathlonLiverDataModule
from datamodules.synthetic.ct_liver_phantom import write_liver_phantom
from lightning_modules.simsiam import SimSiam


@pytest.mark.slow
def test_simsiam_hu_training_improves_test_map(tmp_path):
    root = write_liver_phantom(tmp_path / "Task03_Liver", n_volumes=28, n_test_volumes=0, shape=(48, 48, 32))

    def test_map(epochs: int) -> float:
        pl.seed_everything(0)  # same initial weights and data for both runs
        model = SimSiam(backbone="resnet18", proj_hidden_dim=256, proj_dim=256, pred_hidden_dim=64)
        dm = DecathlonLiverDataModule(str(root), image_size=48, train_volumes=20, batch_size=32, num_workers=0)
        cb = RetrievalEvaluation(k_values=[5], metrics=["mP"])
        trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                             callbacks=[cb], default_root_dir=tmp_path, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        if epochs:
            trainer.fit(model, datamodule=dm)
        return trainer.test(model, datamodule=dm, verbose=False)[0]["test/mP@5"]

    untrained, trained = test_map(0), test_map(EPOCHS)
    print(f"test mP@5 untrained {untrained:.3f} -> trained {trained:.3f}")
    assert trained > untrained + 0.02


EPOCHS = 10
