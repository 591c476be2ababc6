"""What a user sees and gets: evaluations need a checkpoint and say which one, run folders are predictable and
failures leave nothing behind, one best.ckpt and one last.ckpt, a progress bar with the monitored metric and
a summary at the end of every subcommand."""
import contextlib
import hashlib
import io
import json

import numpy as np
import pytest
import torch
import yaml

from experiments.cli import RetrievalCLI
from experiments.run_folders import UntrainedEvaluationError
from tests.conftest import CONFIGS, tiny_overrides


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """The demo config without RELAX (the slow part, not under test here)."""
    cfg = yaml.safe_load((CONFIGS / "simsiam_hu_phantom.yaml").read_text())
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                   if not c["class_path"].endswith("ExplanationEvaluation")]
    path = tmp_path_factory.mktemp("config") / "simsiam_hu_phantom.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def cli(config):
    def run(subcommand, run_dir, data_root, *extra):
        return RetrievalCLI(args=[subcommand, "--config", str(config), *tiny_overrides(run_dir, data_root),
                                  *[str(a) for a in extra]])
    return run


@pytest.fixture(scope="module")
def trained(phantom_root, tmp_path_factory, one_thread, config):
    """One tiny fit (2 epochs of 2 steps); returns (runs folder, run folder, fit summary text)."""
    runs = tmp_path_factory.mktemp("runs")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        RetrievalCLI(args=["fit", "--config", str(config), *tiny_overrides(runs, phantom_root),
                           "--trainer.max_epochs=2", "--trainer.limit_train_batches=2"])
    return runs, runs / "simsiam_hu_phantom" / "version_0", out.getvalue()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_leaves_one_best_and_one_last_checkpoint_and_a_summary(trained):
    _, run, summary = trained
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best.ckpt", "last.ckpt"]
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False, map_location="cpu")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert "optimizer_states" not in best and "optimizer_states" in last  # best: weights only
    assert last["global_step"] == 4 and last["epoch"] == 1  # the newest state: end of the last epoch
    assert "fit finished" in summary and "version_0" in summary
    assert "best.ckpt" in summary and "val/mP@5 = " in summary and "metrics.json" in summary


def test_evaluation_without_checkpoint_is_refused(trained, phantom_root, cli):
    runs, _, _ = trained
    for subcommand in ("test", "validate", "predict"):
        with pytest.raises(UntrainedEvaluationError, match="--allow_untrained=true"):
            cli(subcommand, runs, phantom_root)


def test_untrained_evaluation_says_so(phantom_root, cli, tmp_path, one_thread, capsys):
    cli("validate", tmp_path, phantom_root, "--allow_untrained=true")
    (metrics,) = tmp_path.rglob("metrics.json")
    assert json.loads(metrics.read_text())["val"]["checkpoint"]["untrained"] is True
    assert "UNTRAINED" in capsys.readouterr().out


def test_test_and_predict_land_beside_the_checkpoint_and_name_it(trained, phantom_root, cli, capsys):
    runs, run, _ = trained
    cli("test", runs, phantom_root, "--ckpt_path=best")  # best = best.ckpt of the newest run
    section = json.loads((run / "test_best" / "metrics.json").read_text())["test"]
    best = run / "checkpoints" / "best.ckpt"
    assert section["checkpoint"]["sha256"] == sha256(best)
    assert section["checkpoint"]["path"] == str(best.resolve())
    assert (section["epoch"], section["global_step"]) == (section["checkpoint"]["epoch"],
                                                          section["checkpoint"]["global_step"])
    assert "test/mP@5" in section["metrics"]
    epoch = section["checkpoint"]["epoch"]  # figures are named by the epoch of the weights
    assert (run / "test_best" / "figures" / f"retrieval_test_epoch{epoch:03d}.png").is_file()
    out = capsys.readouterr().out
    assert "test_best" in out and "test/mP@5 = " in out and sha256(best)[:12] in out

    cli("predict", runs, phantom_root, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    npz = np.load(run / "predict_last_test" / "predictions_test.npz")
    assert str(npz["checkpoint_sha256"]) == sha256(run / "checkpoints" / "last.ckpt")
    assert int(npz["checkpoint_global_step"]) == 4
    assert "predictions_test.npz" in capsys.readouterr().out
    # The runs folder holds only the fit's version folder: evaluations made no new version_N.
    assert [p.name for p in (runs / "simsiam_hu_phantom").iterdir()] == ["version_0"]


def test_failed_runs_leave_no_folder_and_keep_the_previous_evaluation(trained, phantom_root, cli, monkeypatch):
    runs, run, _ = trained
    cli("validate", runs, phantom_root, "--ckpt_path=best")
    previous = (run / "validate_best" / "metrics.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("callbacks.retrieval_evaluation.RetrievalEvaluation.evaluate", boom)
    with pytest.raises(RuntimeError, match="boom"):
        cli("validate", runs, phantom_root, "--ckpt_path=best")
    assert (run / "validate_best" / "metrics.json").read_text() == previous
    assert not list(run.glob(".*previous"))
    with pytest.raises(RuntimeError, match="boom"):
        cli("fit", runs, phantom_root, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1")
    assert sorted(p.name for p in (runs / "simsiam_hu_phantom").iterdir()) == ["version_0"]


def test_missing_best_checkpoint_names_the_folder(tmp_path, phantom_root, cli):
    with pytest.raises(FileNotFoundError, match="best.ckpt.*simsiam_hu_phantom"):
        cli("test", tmp_path, phantom_root, "--ckpt_path=best")


def test_progress_bar_shows_the_monitored_metric_and_its_best():
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    from callbacks.progress import RetrievalProgressBar

    ckpt = ModelCheckpoint(monitor="val/mP@5", mode="max")
    ckpt.best_model_score = torch.tensor(0.74)
    trainer = SimpleNamespace(checkpoint_callbacks=[ckpt], callback_metrics={"val/mP@5": torch.tensor(0.712)})
    base = {"v_num": 0, "train/loss": "0.1"}
    original = TQDMProgressBar.get_metrics
    TQDMProgressBar.get_metrics = lambda self, t, m: dict(base)
    try:
        items = RetrievalProgressBar().get_metrics(trainer, None)
    finally:
        TQDMProgressBar.get_metrics = original
    assert items["val/mP@5"] == "0.712" and items["best val/mP@5"] == "0.740" and items["train/loss"] == "0.1"


def test_figures_name_the_classes_and_outline_the_lesion():
    from matplotlib.patches import Rectangle

    from callbacks.figures import RetrievalRow, retrieval_figure
    from callbacks.retrieval_grid import label_name
    from datamodules.decathlon_liver import DecathlonLiverDataModule
    from datamodules.deeplesion import DeepLesionDataModule, box_in_crop, lesion_crop

    assert label_name(torch.tensor(1), DecathlonLiverDataModule.class_names) == "liver"
    assert label_name(torch.tensor(0), DecathlonLiverDataModule.class_names) == "no liver"
    assert label_name(torch.tensor(5), DeepLesionDataModule.class_names) == "lung"
    assert label_name(torch.tensor([0, 1, 0, 1]), {1: "effusion", 3: "mass"}) == "effusion, mass"
    assert label_name(torch.tensor(7), {}) == "label 7"
    # The box drawn on a crop covers exactly the lesion's pixels, also when the crop was shrunk.
    hu = np.zeros((100, 120), np.float32)
    for box, size in (((50, 40, 59, 44), 32), ((10, 10, 73, 73), 32)):
        hu[:] = 0
        hu[box[1]:box[3] + 1, box[0]:box[2] + 1] = 1
        crop, edges = lesion_crop(hu, box, size), box_in_crop(box, hu.shape, size)
        x1, y1, x2, y2 = edges
        assert crop[int(np.ceil(y1)):int(y2), int(np.ceil(x1)):int(x2)].min() == pytest.approx(1)
        assert crop.sum() == pytest.approx((x2 - x1) * (y2 - y1), rel=1e-4)
    img = torch.rand(3, 32, 32)
    row = RetrievalRow(img, "query\nliver", [img, img], [True, False], [0.1, 0.2], notes=["liver", "no liver"],
                       boxes=[torch.tensor([4.0, 4, 12, 12])] * 3)
    fig = retrieval_figure([row], "euclidean")
    axes = fig.axes
    assert sum(isinstance(p, Rectangle) for ax in axes for p in ax.patches) == 3
    assert "no liver" in axes[2].get_xlabel() and "liver" in axes[0].get_title()


def test_console_entry_points_resolve_and_run(tmp_path, phantom_root, capsys):
    import configparser
    import importlib

    cfg = configparser.ConfigParser()
    cfg.read(CONFIGS.parents[1] / "setup.cfg")
    scripts = dict(line.split("=", 1) for line in cfg["options.entry_points"]["console_scripts"].split("\n") if line)
    scripts = {k.strip(): v.strip() for k, v in scripts.items()}
    assert set(scripts) == {"medcbir", "medcbir-phantom"}
    funcs = {}
    for name, target in scripts.items():
        module, attr = target.split(":")
        funcs[name] = getattr(importlib.import_module(module), attr)
    assert funcs["medcbir-phantom"](["liver", "--root", str(tmp_path / "liver"), "--volumes", "2",
                                     "--test-volumes", "0", "--shape", "16", "16", "8"]) == 0
    assert (tmp_path / "liver" / "dataset.json").is_file()
    assert funcs["medcbir-phantom"](["nonsense"]) == 2
    args = ["test", "--config", str(CONFIGS / "simsiam_hu_phantom.yaml"), *tiny_overrides(tmp_path, phantom_root)]
    assert funcs["medcbir"](args) == 2
    assert "--allow_untrained=true" in capsys.readouterr().err


def test_readme_commands_are_copy_pasteable():
    """No hard-coded version folders or unset variables in the README's commands; every config named exists."""
    import re

    readme = (CONFIGS.parents[1] / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S))
    assert "version_0" not in blocks and "$RUN_" not in blocks
    assert not re.search(r"^\s*python ", blocks, flags=re.M), "use the venv's medcbir / medcbir-phantom commands"
    for config in re.findall(r"experiments/configs/[\w/]+\.yaml", readme):
        assert (CONFIGS.parents[1] / config).is_file(), config


@pytest.mark.parametrize("validate", [True, False])
def test_last_checkpoint_is_one_file_with_the_newest_state(tmp_path, validate):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from callbacks import LastCheckpoint

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)
    steps = []

    class Spy(pl.Callback):  # the step stored in last.ckpt at every training batch end
        def on_train_batch_end(self, trainer, *args):
            path = tmp_path / "checkpoints" / "last.ckpt"
            steps.append(torch.load(path, weights_only=False)["global_step"] if path.exists() else None)

    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, limit_val_batches=1.0 if validate else 0,
                         callbacks=[LastCheckpoint(every_n_train_steps=2, dirpath=str(tmp_path / "checkpoints")),
                                    Spy()])
    trainer.fit(Tiny(), data, data if validate else None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    # Saved mid-epoch at steps 2 and 4 and at the epoch ends (3, 6). Lightning runs checkpoint callbacks last,
    # so after step s the Spy sees the file as it was before step s's own save.
    assert steps == [None, None, 2, 3, 4, 4]
