"""Tiny search indexes shared by the search tests (built once per test process, in a temporary folder)."""
from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from tests.conftest import CONFIGS

ROOT = Path(tempfile.mkdtemp(prefix="medcbir-search-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)
K = 5


def shipped_file(name: str) -> Path | None:
    """A real DICOM file shipped by pydicom / pydicom-data (None when the package is absent)."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
    except Exception:
        return None
    return Path(path) if path else None


def phantom_args(data_root: Path) -> list[str]:
    return [f"--config={CONFIGS / 'simsiam_phantom.yaml'}", f"--data.init_args.data_root={data_root}",
            "--data.init_args.image_size=64", "--data.init_args.train_volumes=5", "--data.init_args.val_volumes=0",
            "--data.init_args.num_workers=0", "--data.init_args.slices_with_liver=3",
            "--data.init_args.slices_without_liver=2", "--data.init_args.batch_size=8",
            "--model.init_args.proj_hidden_dim=64", "--model.init_args.proj_dim=64",
            "--model.init_args.pred_hidden_dim=16"]


def calibrated_checkpoint(model, dm, split: str, path: Path) -> Path:
    """A Lightning-style checkpoint of ``model`` whose BatchNorm statistics were set on ``split`` (an untrained
    network in eval mode maps every image to almost the same point); no training needed."""
    images = torch.stack([dm.retrieval_dataset(split)[i]["image"] for i in range(len(dm.retrieval_dataset(split)))])
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model.embed(images)
    model.eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 0, "global_step": 0,
                "hyper_parameters": dict(model.hparams)}, path)
    return path


@contextlib.contextmanager
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(None)
def ct_phantom() -> Path:
    from datamodules.synthetic.ct_liver_phantom import write_liver_phantom

    root = ROOT / "Task03_Liver"
    write_liver_phantom(root, n_volumes=8, n_test_volumes=1, shape=(32, 32, 24), seed=0)
    return root


@functools.lru_cache(None)
def ct_index(kind: str = "flat") -> tuple[Path, Path, list[str]]:
    """(index folder, checkpoint, CLI args) of SimSiam (ResNet-18, 32 px) on the CT phantom's train split."""
    from search.cli import configured, index_main

    args = phantom_args(ct_phantom())
    ckpt = ROOT / "simsiam.ckpt"
    out = ROOT / f"ct-{kind}"
    with one_torch_thread():
        if not ckpt.exists():
            model, dm, _ = configured(args)
            calibrated_checkpoint(model, dm, "train", ckpt)
        assert index_main(args + [f"--ckpt_path={ckpt}", f"--index.out={out}", f"--index.kind={kind}",
                                  "--index.split=train"]) == 0
    return out, ckpt, args


@functools.lru_cache(None)
def service(kind: str = "flat"):
    from search.query import UploadLimits
    from search.service import SearchService

    folder, _, _ = ct_index(kind)
    return SearchService(folder, limits=UploadLimits(max_bytes=16 * 2 ** 20), relax_masks=16)


@functools.lru_cache(None)
def lesion_index() -> Path:
    """Index of SimCLR-GeM (cosine) on the DeepLesion phantom's train split (lesion crops, 64 px)."""
    from datamodules.synthetic.deeplesion import write_deeplesion_phantom
    from search.cli import configured, index_main

    root = ROOT / "DeepLesion"
    write_deeplesion_phantom(root, n_patients=8, image_size=96, seed=0)
    args = [f"--config={CONFIGS / 'simclr_gem_phantom.yaml'}", f"--data.init_args.data_root={root}",
            "--data.init_args.crop_size=64", "--data.init_args.num_workers=0", "--data.init_args.batch_size=16",
            "--model.init_args.extra_channels=[32, 32]", "--model.init_args.proj_hidden_dim=32",
            "--model.init_args.proj_dim=16"]
    out = ROOT / "lesion-flat"
    with one_torch_thread():
        model, dm, _ = configured(args)
        ckpt = calibrated_checkpoint(model, dm, "train", ROOT / "simclr_gem.ckpt")
        assert index_main(args + [f"--ckpt_path={ckpt}", f"--index.out={out}", "--index.split=train"]) == 0
    return out


@functools.lru_cache(None)
def lesion_service():
    from search.service import SearchService

    return SearchService(lesion_index(), relax_masks=8)
