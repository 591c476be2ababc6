"""Shared fixtures: tiny synthetic datasets written once per session, and the CLI run in-process."""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import List

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def packaged_label_file(name: str) -> Path:
    """A real label file shipped inside torchxrayvision's wheel (dev dependency); skips when absent."""
    txv = pytest.importorskip("torchxrayvision")
    path = Path(txv.__file__).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"torchxrayvision does not ship {name}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids fork-join waits on a busy CPU (several times faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A tiny Task03_Liver phantom: 8 labelled volumes of 32 x 32 x 24 voxels."""
    from datamodules.synthetic.ct_liver_phantom import write_liver_phantom

    root = tmp_path_factory.mktemp("phantom") / "Task03_Liver"
    write_liver_phantom(root, n_volumes=8, n_test_volumes=1, shape=(32, 32, 24), seed=0)
    return root


@pytest.fixture(scope="session")
def deeplesion_root(tmp_path_factory) -> Path:
    """The default-size DeepLesion phantom (40 patients, ~70 lesions in val and in test), 128 x 128 slices."""
    from datamodules.synthetic.deeplesion import write_deeplesion_phantom

    root = tmp_path_factory.mktemp("deeplesion") / "DeepLesion"
    write_deeplesion_phantom(root, n_patients=40, image_size=128, seed=0)
    return root


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory) -> Path:
    """A tiny BraTS phantom: 20 cases of 32 x 32 x 12 voxels (4 sequences + seg)."""
    from datamodules.synthetic.brats import write_brats_phantom

    return write_brats_phantom(tmp_path_factory.mktemp("brats") / "BraTS2021", n_patients=20, shape=(32, 32, 12))


def brats_args(run_dir: Path, brats_root: Path) -> List[str]:
    """CLI arguments shrinking a BraTS config: 32 px slices, 6 validation patients (24 images >= k = 20)."""
    return [f"--data.init_args.data_root={brats_root}", "--data.init_args.image_size=32",
            "--data.init_args.attribute_mask_size=32", "--data.init_args.val_fraction=0.3",
            "--data.init_args.test_fraction=0.3", "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
            f"--data.init_args.cache_dir={run_dir / 'cache'}", "--model.init_args.recon_size=32",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}"]


def tiny_args(config: Path, run_dir: Path, phantom_root: Path, deeplesion_root: Path,
              brats_root: Path | None = None) -> List[str]:
    """Tiny overrides for any runnable config, by its dataset family (and the VAE's input size)."""
    text = Path(config).read_text()
    if "CheXpertDataModule" in text:
        return chexpert_tiny_args(text, run_dir)
    if "BraTSDataModule" in text:
        return brats_args(run_dir, brats_root)
    if "DeepLesionDataModule" in text:
        args = [f"--data.init_args.data_root={deeplesion_root}", "--data.init_args.crop_size=32",
                "--data.init_args.num_workers=0", "--data.init_args.batch_size=16",
                f"--data.init_args.cache_dir={run_dir / 'cache'}", "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]
        return args + (["--model.init_args.image_size=32"] if "lightning_modules.vae.VAE" in text else [])
    if "ChestXray14DataModule" in text:
        return chestxray_tiny_args(run_dir)
    return tiny_overrides(run_dir, phantom_root)


@functools.lru_cache(maxsize=None)
def chestxray_phantom() -> Path:
    """A small ChestX-ray14 phantom (90 patients, 32 px, > 100 training images for P@100), written once per
    session into a temporary folder."""
    from datamodules.synthetic.chestxray14 import write_chestxray14_phantom

    return write_chestxray14_phantom(Path(tempfile.mkdtemp(prefix="cx14-")) / "ChestX-ray14", n_patients=90,
                                     image_size=32)


def chestxray_tiny_args(run_dir: Path) -> List[str]:
    """Tiny overrides for the ChestX-ray14 configs (attention hashing): 16 px, narrow attention net."""
    return [f"--data.init_args.data_root={chestxray_phantom()}", "--data.init_args.image_size=16",
            "--data.init_args.num_workers=0", f"--data.init_args.cache_dir={run_dir / 'cache'}",
            "--model.init_args.attention_channels=[4,4,8,8,8]", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]


def tiny_overrides(run_dir: Path, data_root: Path, image_size: int = 32) -> List[str]:
    """CLI arguments shrinking a phantom config to a few seconds of CPU work inside ``run_dir``."""
    return [f"--data.init_args.data_root={data_root}", f"--data.init_args.image_size={image_size}",
            "--data.init_args.train_volumes=5", "--data.init_args.val_volumes=0", "--data.init_args.num_workers=0",
            "--data.init_args.slices_with_liver=3", "--data.init_args.slices_without_liver=2",
            "--data.init_args.batch_size=8", "--trainer.enable_progress_bar=false",
            f"--data.init_args.cache_dir={run_dir / 'cache'}",
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]


def read_metrics(run_dir: Path) -> dict:
    """The single metrics.json written under ``run_dir``."""
    found = sorted(run_dir.rglob("metrics.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def chexpert_tiny_args(config_text: str, run_dir: Path) -> List[str]:
    """A small CheXpert phantom written on first use inside ``run_dir``, 32 px, tiny DenseNet for IG-CBIR
    (``classifier_epochs=0``: the run goes straight to step 2, the saliency path)."""
    args = [f"--data.init_args.data_root={run_dir / 'CheXpert-v1.0-small'}",
            "--data.init_args.synthesize_if_missing=true",
            "--data.init_args.phantom_train_patients=10", "--data.init_args.phantom_valid_patients=12",
            "--data.init_args.image_size=32", "--data.init_args.num_workers=0", "--data.init_args.batch_size=16",
            "--data.init_args.val_fraction=0.3", f"--data.init_args.cache_dir={run_dir / 'cache'}",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}"]
    if "lightning_modules.ig_cbir.IGCBIR" in config_text:
        args += ["--model.init_args.architecture=densenet_tiny", "--model.init_args.classifier_epochs=0"]
    return args
