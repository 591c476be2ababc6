"""Stage 2 on DeepLesion's real label layout: train is unlabelled, so it trains on a named labelled split."""
import pytest
import pytorch_lightning as pl

from datamodules.deeplesion import DeepLesionDataModule
from lightning_modules.simclr_gem_finetune import SimCLRGeMFinetune


def make_dm(root, **kw):
    return DeepLesionDataModule(str(root), crop_size=16, batch_size=16, num_workers=0,
                                **{"include_unlabelled": False, **kw})


def test_phantom_training_split_is_unlabelled_like_the_real_one(deeplesion_root):
    dm = make_dm(deeplesion_root, include_unlabelled=True)
    dm.setup()
    assert dm.rows["train"] and all(r.lesion_type == -1 for r in dm.rows["train"])
    assert all(r.lesion_type > 0 for s in ("val", "test") for r in dm.rows[s])


def test_stage2_refuses_a_training_split_without_triplets(deeplesion_root, tmp_path):
    model = SimCLRGeMFinetune(extra_channels=(8, 8))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"train_splits=\[val\]"):
        trainer.fit(model, datamodule=make_dm(deeplesion_root))


def test_stage2_trains_on_val_patients_and_keeps_held_out_ones(deeplesion_root):
    dm = make_dm(deeplesion_root, train_splits=["val"], val_holdout=0.3)
    dm.setup()
    train, val, test = ({r.patient_id for r in dm.rows[s]} for s in ("train", "val", "test"))
    assert train and val and not (train & val) and not (train & test)
    assert all(r.split == "val" and r.lesion_type > 0 for r in dm.rows["train"])
    assert len({r.lesion_type for r in dm.rows["train"]}) >= 2
    with pytest.raises(ValueError, match="never trained on"):
        make_dm(deeplesion_root, train_splits=["test"])
