"""Step-0 baseline, learning-curve PNG and the ``report`` command on a tiny run."""
import csv
import json

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from callbacks import RetrievalEvaluation
from callbacks.learning_curve import LearningCurve, UntrainedBaseline
from datamodules.decathlon_liver import DecathlonLiverDataModule
from experiments.report import main as report_main
from experiments.report import report
from lightning_modules.simsiam import SimSiam


@pytest.fixture(scope="module")
def tiny_run(phantom_root, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("runs")
    pl.seed_everything(0)
    model = SimSiam(backbone="resnet18", proj_hidden_dim=32, proj_dim=32, pred_hidden_dim=8)
    dm = DecathlonLiverDataModule(str(phantom_root), image_size=32, train_volumes=5, val_volumes=1,
                                  slices_with_liver=3, slices_without_liver=2, batch_size=8, num_workers=0)
    curve = LearningCurve(metric="val/mP@5")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, log_every_n_steps=1,
                         logger=CSVLogger(root, name="tiny"), enable_checkpointing=False,
                         callbacks=[RetrievalEvaluation(k_values=[1, 5]), UntrainedBaseline(), curve],
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return root, trainer, curve


def test_untrained_value_is_logged_at_step_0_and_kept(tiny_run):
    root, trainer, curve = tiny_run
    run = root / "tiny" / "version_0"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["baseline"]["global_step"] == 0 and "val/mP@5" in saved["baseline"]["metrics"]
    assert saved["val"]["global_step"] == 2 and saved["val"]["metrics"]["val/n_queries_scored"] > 0
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/mP@5")]
    assert [int(r["step"]) for r in rows][:1] == [0] and len(rows) == 2          # step 0 + 1 epoch
    assert float(rows[0]["val/mP@5"]) == pytest.approx(saved["baseline"]["metrics"]["val/mP@5"])
    assert [s for s, _ in curve.metric_points] == [0, 2] and len(curve.loss_points) == 2
    assert (run / "figures" / "learning_curve.png").stat().st_size > 1000


def test_report_gathers_runs_into_one_table_and_figure(tiny_run, tmp_path, capsys):
    root, _, _ = tiny_run
    table, rows = report([root], metrics=["mP@5", "P@1"], stages=["baseline", "val", "test"], base=root)
    assert [r["stage"] for r in rows] == ["baseline", "val", "test"]
    assert table.splitlines()[0] == "| run | stage | step | queries | mP@5 | P@1 |"
    assert table.splitlines()[2].startswith("| tiny/version_0 | baseline | 0 |")
    report_main([str(root), "--out", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png")])
    assert "mP@5" in (tmp_path / "r.md").read_text() and (tmp_path / "r.png").is_file()
    assert "tiny/version_0 | baseline" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])
