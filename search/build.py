"""Index an archive: a DataModule split (with its own evaluation transforms) or a folder of image files
(through the query loaders and the manifest's preprocessing), embedded with the method's ``embed()``."""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from search.index import SearchIndex, sha256_file
from search.preprocess import Preprocessing, from_datamodule, model_input
from search.query import SUFFIXES, QueryError, UploadLimits, load_query

log = logging.getLogger(__name__)
THUMB_MAX = 128


def to_thumbnail(image: torch.Tensor) -> np.ndarray:
    """Model input [C, H, W] in [0, 1] -> uint8 grey [h, w] (at most THUMB_MAX px; area averaging)."""
    grey = image.float().mean(0) if image.dim() == 3 else image.float()
    if grey.shape[-1] > THUMB_MAX:
        grey = torch.nn.functional.adaptive_avg_pool2d(grey[None], THUMB_MAX)[0]
    return (grey.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def embed_images(model, images: Iterable[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    """``model.embed`` over a stream of [C, H, W] images, in batches, eval mode: float32 [N, D]."""
    model.eval()
    out, batch = [], []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            out.append(model.embed(torch.stack(batch)).float().cpu().numpy())
            batch = []
    if batch:
        out.append(model.embed(torch.stack(batch)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def label_vocabulary(dm) -> dict[int, str]:
    """Label value -> name of a DataModule (its ``label_names`` when it declares them)."""
    names = getattr(dm, "label_names", None)
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return dict(enumerate(map(str, names)))
    kind = type(dm).__name__
    if kind == "DecathlonLiverDataModule":
        return {0: "no liver", 1: "liver"}
    if kind == "DeepLesionDataModule":
        from datamodules.synthetic.deeplesion import LESION_TYPES

        return {-1: "unlabelled", **{int(k): str(v) for k, v in LESION_TYPES.items()}}
    return {}


def label_names_of(label: torch.Tensor, vocab: dict[int, str]) -> list[str]:
    label = torch.as_tensor(label)
    if label.ndim == 0:
        return [vocab.get(int(label), str(int(label)))]
    return [vocab.get(i, str(i)) for i in torch.nonzero(label > 0).flatten().tolist()]  # multi-hot


def source_files(dm, split: str, n: int) -> list[dict]:
    """Per item of ``split``: source file (and lesion box) where the DataModule can tell."""
    hook = getattr(dm, "item_metadata", None)
    if callable(hook):
        return list(hook(split))
    kind = type(dm).__name__
    if kind == "DeepLesionDataModule" and split in getattr(dm, "rows", {}):
        return [{"source": str(r.png(dm.data_root)), "box": list(r.box)} for r in dm.rows[split]]
    return [{} for _ in range(n)]


def split_items(dm, split: str, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, dict]]:
    """(model input, metadata) of every evaluation sample of ``split``, in dataset order."""
    dataset = dm.retrieval_dataset(split)
    vocab = label_vocabulary(dm)
    extra = source_files(dm, split, len(dataset))
    volumes = {}
    if type(dm).__name__ == "DecathlonLiverDataModule":
        from datamodules.decathlon_liver import read_decathlon_index

        volumes = {v.patient_id: str(v.image) for v in read_decathlon_index(dm.data_root)}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    i = 0
    for batch in loader:
        for j in range(len(batch["image"])):
            pid = int(batch["patient_id"][j]) if "patient_id" in batch else -1
            meta = {"split": split, "label": torch.as_tensor(batch["label"][j]).tolist(),
                    "label_names": label_names_of(batch["label"][j], vocab), "patient_id": str(pid),
                    "source": volumes.get(pid, ""), "slice": None}
            if "slice_index" in batch:
                meta["slice"] = int(batch["slice_index"][j])
            if "study_id" in batch:
                meta["study_id"] = str(int(batch["study_id"][j]))
            meta.update(extra[i] if i < len(extra) else {})
            i += 1
            yield batch["image"][j], meta


def folder_items(folder: Path, prep: Preprocessing, limits: UploadLimits | None = None
                 ) -> Iterator[tuple[torch.Tensor, dict]]:
    """(model input, metadata) of every slice of every DICOM / NIfTI / PNG / JPEG file under ``folder``;
    unreadable files are skipped with a warning naming them."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file()
                   and any(p.name.lower().endswith(s) for s in SUFFIXES))
    if not files:
        raise FileNotFoundError(f"--index.folder {folder}: no {', '.join(sorted(SUFFIXES))} files found")
    for path in files:
        data = path.read_bytes()
        try:
            first = load_query(data, path.name, None, limits or UploadLimits())
            for z in range(first.n_slices):
                q = first if z == first.slice_index else load_query(data, path.name, z, limits or UploadLimits())
                meta = {"split": None, "label": None, "label_names": [], "source": str(path),
                        "slice": z if first.n_slices > 1 else None,
                        "patient_id": q.meta.get("patient_id", ""), "study_id": q.meta.get("study_id", "")}
                yield model_input(q, prep), meta
        except QueryError as err:
            log.warning("skipping %s: %s", path, err)


def build_index(model, items: Iterable[tuple[torch.Tensor, dict]], out: Path, manifest: dict,
                ckpt_path: str | None, batch_size: int = 64, **index_options) -> SearchIndex:
    """Embed ``items``, write the index folder ``out``. Without ``ckpt_path`` the model's weights are saved
    next to the index (``model_weights.pt``) so queries use the very same weights."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    thumbs, metadata = [], []

    def images():
        for image, meta in items:
            thumbs.append(to_thumbnail(image))
            metadata.append({"id": len(metadata), **meta})
            yield image

    embeddings = embed_images(model, images(), batch_size)
    if ckpt_path is None:
        log.warning("no --ckpt_path: indexing with the model's initial weights (saved to %s)",
                    out / "model_weights.pt")
        torch.save(model.state_dict(), out / "model_weights.pt")
        checkpoint = "model_weights.pt"
    else:
        checkpoint = str(Path(ckpt_path).resolve())
    manifest = {**manifest, "checkpoint": checkpoint, "checkpoint_sha256": sha256_file(
        out / checkpoint if ckpt_path is None else Path(checkpoint)),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    index = SearchIndex.build(out, embeddings, metadata, np.stack(thumbs) if thumbs else np.zeros((0, 1, 1)),
                              model.search_space, manifest, **index_options)
    log.warning("index of %d items written to %s (%s, %s)", len(index), out, model.search_space,
                index.manifest["index"]["kind"])
    return index


def method_manifest(model, dm, config: dict | None, prep: Preprocessing | None = None) -> dict:
    """The manifest fields describing the method, data and preprocessing of an index."""
    init_args = {k: v for k, v in dict(getattr(model, "hparams", {}) or {}).items() if not k.startswith("_")}
    return {"method": f"{type(model).__module__}.{type(model).__qualname__}",
            "model_init_args": init_args,
            "preprocessing": (prep or from_datamodule(dm)).to_dict(),
            "data": None if dm is None else f"{type(dm).__module__}.{type(dm).__qualname__}",
            "label_vocabulary": {str(k): v for k, v in (label_vocabulary(dm) if dm is not None else {}).items()},
            "config": config}
