"""The CLI end to end on the phantom: every runnable config fits; test/predict outputs agree."""

import numpy as np
import pytest
import yaml

from callbacks import evaluate_retrieval
from experiments.cli import RetrievalCLI
from tests.conftest import CONFIGS, read_metrics, tiny_args, tiny_overrides

PHANTOM_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "synthesize_if_missing: true" in p.read_text())


def run_cli(*args):
    return RetrievalCLI(args=[str(a) for a in args])


def test_there_are_phantom_configs():
    assert {"simsiam_hu_phantom.yaml", "simsiam_phantom.yaml", "simclr_gem_phantom.yaml", "simclr_phantom.yaml",
            "simclr_gem_finetune_phantom.yaml", "vae_phantom.yaml", "ig_cbir_phantom.yaml",
            "ssim_phantom.yaml"} <= {p.name for p in PHANTOM_CONFIGS}


@pytest.mark.parametrize("config", PHANTOM_CONFIGS, ids=lambda p: p.stem)
def test_smoke_fit_every_phantom_config(config, phantom_root, deeplesion_root, brats_root, tmp_path):
    args = tiny_args(config, tmp_path, phantom_root, deeplesion_root, brats_root)
    run_cli("fit", "--config", config, *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2")
    metrics = read_metrics(tmp_path)["val"]["metrics"]
    for key in monitored_keys(config):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (next(tmp_path.rglob("checkpoints")) / "last.ckpt").is_file()
    # Re-running into the same folder must not fail on the saved config.
    for _ in range(2):
        run_cli("fit", "--config", config, *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                "--trainer.logger.init_args.version=fixed")


def monitored_keys(config):
    """The metric each ModelCheckpoint of a config monitors (the keys the callbacks must log)."""
    cbs = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    keys = [cb["init_args"].get("monitor") for cb in cbs if cb["class_path"].endswith("ModelCheckpoint")]
    assert any(keys), config
    return [k for k in keys if k]


def test_exported_embeddings_reproduce_logged_metrics(phantom_root, tmp_path):
    """fit -> test writes metrics.json; predict exports embeddings; recomputing gives the same numbers.
    Evaluations of a checkpoint land beside its run: <run>/test_last, <run>/predict_last_<split>."""
    config = CONFIGS / "simsiam_hu_phantom.yaml"
    base = [*tiny_overrides(tmp_path, phantom_root), "--trainer.logger.init_args.version=run"]
    run_cli("fit", "--config", config, *base, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2")
    run = tmp_path / "simsiam_hu_phantom" / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = {}
    for split in ("train", "test"):
        run_cli("predict", "--config", config, *tiny_overrides(tmp_path, phantom_root),
                f"--data.init_args.predict_split={split}", "--ckpt_path", ckpt)
        out[split] = np.load(run / f"predict_last_{split}" / f"predictions_{split}.npz")
    run_cli("test", "--config", config, *tiny_overrides(tmp_path, phantom_root), "--ckpt_path", ckpt)
    logged = read_metrics(run / "test_last")["test"]
    assert logged["protocol"]["gallery_split"] == "train" and logged["protocol"]["distance"] == "euclidean"
    q, g = out["test"], out["train"]
    assert str(q["split"]) == "test" and np.array_equal(q["index"], np.arange(len(q["index"])))
    recomputed = evaluate_retrieval(q["embedding"], g["embedding"], q["label"], g["label"],
                                    k_values=[1, 5, 10], distance="euclidean",
                                    metrics=["mP", "P", "AP", "nDCG", "kNN"])
    for key, value in recomputed.items():
        if not key.startswith("n_"):
            assert logged["metrics"][f"test/{key}"] == pytest.approx(value, abs=1e-6), key
    # And independently of our search: brute-force Euclidean ranking with stable tie-breaking.
    d = np.linalg.norm(q["embedding"][:, None, :] - g["embedding"][None, :, :], axis=-1)
    ranks = np.argsort(d, axis=1, kind="stable")[:, :5]
    hits = g["label"][ranks] == q["label"][:, None]
    mp5 = np.mean([np.mean([hits[i, :k].mean() for k in range(1, 6)]) for i in range(len(hits))])
    assert logged["metrics"]["test/mP@5"] == pytest.approx(mp5, abs=1e-6)


def test_missing_data_root_is_one_clear_error(tmp_path):
    config = CONFIGS / "simsiam_hu_decathlon.yaml"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_cli("fit", "--config", config, *tiny_overrides(tmp_path, tmp_path / "nowhere"),
                "--trainer.max_epochs=1")


def test_multi_gpu_recipe_layers_on_a_method_config(phantom_root, tmp_path):
    """The recipe keeps the method's callbacks, adds ChannelsLast and bf16; runs here with CPU overrides."""
    import torch

    recipe = CONFIGS / "recipes" / "multi_gpu.yaml"
    cli = run_cli("fit", "--config", CONFIGS / "simsiam_hu_phantom.yaml", "--config", recipe,
                  *tiny_overrides(tmp_path, phantom_root), "--trainer.accelerator=cpu", "--trainer.devices=1",
                  "--trainer.strategy=auto", "--trainer.sync_batchnorm=false", "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=1")
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert {"RetrievalEvaluation", "ChannelsLast", "EmbeddingWriter"} <= set(names)
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert "val/mP@5" in cli.trainer.callback_metrics
