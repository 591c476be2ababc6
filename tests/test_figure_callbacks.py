"""Retrieval grids and RELAX explanations as callbacks: keys, metrics.json, PNGs, ordering, bad input."""
import json

import pytest
import pytorch_lightning as pl

from callbacks import ExplanationEvaluation, RetrievalEvaluation, RetrievalGrid
from datamodules.decathlon_liver import DecathlonLiverDataModule
from lightning_modules.simsiam import SimSiam


def trainer_for(phantom_root, tmp_path, callbacks, image_size=32):
    pl.seed_everything(0)
    model = SimSiam(backbone="resnet18", proj_hidden_dim=32, proj_dim=32, pred_hidden_dim=8)
    dm = DecathlonLiverDataModule(str(phantom_root), image_size=image_size, train_volumes=5, slices_with_liver=3,
                                  slices_without_liver=2, batch_size=8, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=2,
                         limit_train_batches=1, num_sanity_val_steps=0, enable_checkpointing=False)
    return trainer, model, dm


def test_fit_logs_rr_every_configured_epoch_and_writes_figures(phantom_root, tmp_path):
    explain = ExplanationEvaluation(num_masks=20, mask_batch_size=8, n_images=4, figure_queries=2, figure_k=3,
                                    every_n_epochs=2)
    grid = RetrievalGrid(n_queries=2, n_worst=1, k=3)
    trainer, model, dm = trainer_for(phantom_root, tmp_path, [RetrievalEvaluation(k_values=[1, 5]), grid, explain])
    trainer.fit(model, datamodule=dm)
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["explained_retrieval_val_epoch001.png", "retrieval_val_epoch000.png",
                       "retrieval_val_epoch001.png"]  # RR/explanations every 2 epochs, grids every epoch
    assert 0.0 <= trainer.callback_metrics["val/RR"] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())["val"]["metrics"]
    assert saved["val/RR_n_images"] == 4 and saved["val/RR"] == pytest.approx(float(trainer.callback_metrics["val/RR"]))
    assert saved["val/RR_n_without_organ"] == 6  # 3 test volumes x 2 slices without liver
    assert "val/mP@5" in saved  # merged next to the retrieval metrics, not replacing them


def test_callbacks_must_follow_the_retrieval_evaluation(phantom_root, tmp_path):
    trainer, model, dm = trainer_for(phantom_root, tmp_path, [RetrievalGrid(), RetrievalEvaluation()])
    with pytest.raises(ValueError, match="RetrievalEvaluation listed before it"):
        trainer.validate(model, datamodule=dm, verbose=False)


def test_rr_needs_an_organ_mask(phantom_root, tmp_path):
    explain = ExplanationEvaluation(num_masks=4, mask_batch_size=4, n_images=2, mask_key="liver_mask")
    trainer, model, dm = trainer_for(phantom_root, tmp_path, [RetrievalEvaluation(k_values=[1]), explain])
    with pytest.raises(KeyError, match="liver_mask"):
        trainer.validate(model, datamodule=dm, verbose=False)
