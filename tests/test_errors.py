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


def test_run_failing_mid_fit_leaves_complete_loadable_outputs(phantom_root, tmp_path, one_thread):
    """Epoch 0 trains normally; in epoch 1 the model's embeddings turn NaN and fit stops with the error
    naming the split. Everything written so far must be complete and loadable."""
    import csv
    import json

    import numpy as np
    import torch

    from callbacks.validation import NonFiniteEmbeddings
    from experiments.cli import RetrievalCLI
    from tests.conftest import CONFIGS, tiny_overrides
    from tests.error_cases import TINY_MODEL

    nan_from_epoch_2 = '{"class_path": "tests.helpers.NaNEmbeddingsFrom", "init_args": {"epoch": 1}}'
    with pytest.raises(NonFiniteEmbeddings, match="split 'val'"):
        RetrievalCLI(args=["fit", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"),
                           *tiny_overrides(tmp_path, phantom_root), *TINY_MODEL, "--trainer.max_epochs=3",
                           "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                           "--trainer.num_sanity_val_steps=0", "--trainer.logger.init_args.version=run",
                           f"--trainer.callbacks+={nan_from_epoch_2}"])
    run = tmp_path / "simsiam_hu_phantom" / "run"
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and any(p.name.startswith("best") for p in ckpts), ckpts
    for path in ckpts:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        assert ckpt["state_dict"] and ckpt["epoch"] == 0, path
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["epoch"] == 0 and 0 <= metrics["val"]["metrics"]["val/mP@5"] <= 1
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # the epoch-0 evaluation, plus the untrained step-0 baseline (logged without an epoch)
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/mP@5") and r.get("epoch")}) == [0]
    assert any(r.get("train/loss") for r in rows)
    caches = list((tmp_path / "cache").rglob("*.npz"))
    assert caches
    for path in caches:
        with np.load(path) as data:
            assert data.files
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_user_errors_prints_our_errors_as_one_line_and_leaves_others(capsys, monkeypatch):
    from callbacks.validation import check_policy
    from experiments.errors import TRACEBACK_ENV, user_errors

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as info, user_errors():
        check_policy("ignore")
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: non_finite='ignore': expected one of ('error', 'warn')\n"
    with pytest.raises(RuntimeError), user_errors():  # not one of our validators: the traceback stays
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="non_finite='ignore'"), user_errors():
        check_policy("ignore")
