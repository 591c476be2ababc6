"""Every validated input of tests/error_cases.py raises its one clear message; docs/errors.md is in step."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.error_cases import CASES, markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@pytest.fixture
def ctx(tmp_path, request, capsys):
    return SimpleNamespace(tmp_path=tmp_path, request=request, capsys=capsys)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gives_one_clear_message(case, ctx, one_thread):
    with pytest.raises(case.error) as info:
        case.call(ctx)
    if case.error is SystemExit:  # the command line: one line on stderr, first and last, exit status 2
        assert info.value.code == 2
        err = ctx.capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line
                 and not line.startswith("  ")]
        assert lines and lines[0] == lines[-1] and lines[-1].startswith("error: "), err
        assert case.message in lines[-1] and "Namespace(" not in err and "Traceback" not in err, err
    else:
        assert case.message in str(info.value), str(info.value)


def test_docs_table_is_in_step_with_the_cases():
    assert DOCS.read_text() == markdown(), "regenerate: python -m tests.error_cases > docs/errors.md"


def test_nan_embeddings_in_fit_warn_mode_logs_nan_that_checkpointing_never_selects(phantom_root, tmp_path,
                                                                                   one_thread):
    import math

    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from callbacks import RetrievalEvaluation
    from datamodules.decathlon_liver import DecathlonLiverDataModule
    from lightning_modules.simsiam import SimSiam
    from tests.helpers import NaNEmbeddingsFrom

    pl.seed_everything(0)
    model = SimSiam(backbone="resnet18", proj_hidden_dim=16, proj_dim=16, pred_hidden_dim=8)
    dm = DecathlonLiverDataModule(str(phantom_root), image_size=32, train_volumes=5, slices_with_liver=3,
                                  slices_without_liver=2, batch_size=8, num_workers=0)
    best = ModelCheckpoint(monitor="val/mP@5", mode="max", filename="best-{epoch}")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=1, logger=False,
                         callbacks=[RetrievalEvaluation(k_values=[1, 5], non_finite="warn"), NaNEmbeddingsFrom(1),
                                    best], default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    with pytest.warns(RuntimeWarning, match="embeddings of split 'val': 7 of 15 items contain NaN or inf"):
        trainer.fit(model, datamodule=dm)
    assert math.isnan(float(trainer.callback_metrics["val/mP@5"]))
    assert Path(best.best_model_path).name == "best-epoch=0.ckpt"
