"""The shared RetrievalEvaluation callback: protocol options, keys, metrics.json, de-duplication."""
import json
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from callbacks import RetrievalEvaluation, evaluate_retrieval
from callbacks.distributed import gather_by_index
from datamodules.decathlon_liver import DecathlonLiverDataModule
from lightning_modules.simsiam import SimSiam


def tiny_setup(phantom_root, tmp_path, callback):
    pl.seed_everything(0)
    model = SimSiam(backbone="resnet18", proj_hidden_dim=32, proj_dim=32, pred_hidden_dim=8)
    dm = DecathlonLiverDataModule(str(phantom_root), image_size=32, train_volumes=5, slices_with_liver=3,
                                  slices_without_liver=2, batch_size=8, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    return trainer, model, dm


def test_validate_logs_every_key_and_writes_metrics_json(phantom_root, tmp_path):
    cb = RetrievalEvaluation(k_values=[1, 5], candidate_sets=["all", "same_patient", "cross_patient"])
    trainer, model, dm = tiny_setup(phantom_root, tmp_path, cb)
    logged = trainer.validate(model, datamodule=dm, verbose=False)[0]
    for infix in ("", "same_patient/", "cross_patient/"):
        for key in ("mP@5", "P@1", "AP@5", "nDCG@5", "nDCG_lin@5", "kNN@5"):
            assert f"val/{infix}{key}" in logged, f"val/{infix}{key}"
    saved = json.loads((tmp_path / "metrics.json").read_text())["val"]
    assert saved["protocol"]["gallery_split"] == "train" and saved["metrics"]["val/n_queries"] == 15
    # gallery = training split (val queries are distinct patients): nothing from the same patient.
    assert saved["metrics"]["val/same_patient/n_queries_without_relevant"] == 15
    # The callback's numbers equal the plain function on the same embeddings.
    q, g = (cb._embed(trainer, model, s) for s in ("val", "train"))
    ref = evaluate_retrieval(q["embedding"], g["embedding"], q["label"], g["label"], k_values=[1, 5],
                             distance="euclidean")
    assert logged["val/mP@5"] == pytest.approx(ref["mP@5"], abs=1e-6)


def test_leave_one_out_protocol(phantom_root, tmp_path):
    cb = RetrievalEvaluation(gallery_split=None, k_values=[1, 5])
    trainer, model, dm = tiny_setup(phantom_root, tmp_path, cb)
    trainer.validate(model, datamodule=dm, verbose=False)
    metrics = cb.last_results["val"]
    assert metrics["val/n_queries"] == metrics["val/n_gallery"] == 15
    q = cb._embed(trainer, model, "val")
    ref = evaluate_retrieval(q["embedding"], q["embedding"], q["label"], q["label"], k_values=[1, 5],
                             distance="euclidean", query_ids=q["index"], gallery_ids=q["index"])
    assert metrics["val/mP@5"] == pytest.approx(ref["mP@5"], abs=1e-6)


def test_k_larger_than_gallery_is_one_clear_error(phantom_root, tmp_path):
    trainer, model, dm = tiny_setup(phantom_root, tmp_path, RetrievalEvaluation(k_values=[1, 1000]))
    with pytest.raises(ValueError, match="gallery"):
        trainer.validate(model, datamodule=dm, verbose=False)


def test_bad_protocol_names_are_rejected():
    with pytest.raises(ValueError, match="candidate_sets"):
        RetrievalEvaluation(candidate_sets=["same_hospital"])
    with pytest.raises(ValueError, match="every_n_epochs"):
        RetrievalEvaluation(every_n_epochs=0)


def test_gather_removes_sampler_padding_and_checks_count():
    trainer = SimpleNamespace(world_size=1)
    # DistributedSampler padding repeats the first samples: index 0 and 1 appear twice.
    local = {"index": torch.tensor([3, 0, 1, 2, 4, 0, 1]), "embedding": torch.arange(7.0)[:, None]}
    out = gather_by_index(trainer, local, expected=5)
    assert out["index"].tolist() == [0, 1, 2, 3, 4]
    assert out["embedding"].flatten().tolist() == [1.0, 2.0, 3.0, 0.0, 4.0]
    with pytest.raises(RuntimeError, match="expected indices 0..5"):
        gather_by_index(trainer, local, expected=6)
