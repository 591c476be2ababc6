"""Medical Segmentation Decathlon Task03_Liver (LiTS CT) as the slice dataset of Wickstrøm et al. 2022.

Layout read unchanged: ``Task03_Liver/dataset.json`` (its ``training`` list of
``{"image": "./imagesTr/liver_N.nii.gz", "label": "./labelsTr/liver_N.nii.gz"}``), gzip NIfTI volumes in HU
with axial slices along the last axis, labels 0 background / 1 liver / 2 cancer. macOS ``._*`` entries and
files are ignored (the directory is never globbed).
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import Dataset as MonaiDataset
from monai.transforms import Compose, Resized
from monai.utils import convert_to_numpy

from datamodules.base import RetrievalDataModule
from datamodules.cache import cache_key, ensure_data_root, file_stats, npz_cached, write_phantom_atomic
from datamodules.transforms.hounsfield import HounsfieldWindowd, check_window

log = logging.getLogger(__name__)
LIVER_LABELS = (1, 2)  # liver + cancer = the liver mask
CACHE_VERSION = 1
PHANTOM_COMMAND = "medcbir-phantom liver --root {root}"


@dataclass(frozen=True)
class LiverVolume:
    """One labelled CT volume of dataset.json: the number N of ``liver_N`` and its image/label files."""

    patient_id: int
    image: Path
    label: Path


def load_nifti(path: Path, archive: str = "the Task03_Liver archive") -> tuple[np.ndarray, np.ndarray]:
    """Decode one NIfTI volume: (array with the header's scaling applied, 4x4 affine).

    Raises ValueError naming the file when it is corrupt or truncated (nibabel/gzip errors vary), or not 3-D;
    the message tells to re-extract it from ``archive``.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: cannot decode the NIfTI volume ({type(err).__name__}: {err}); the file is "
                         f"corrupt or truncated, re-extract it from {archive}") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume (x, y, z), got shape {data.shape}")
    return data, img.affine


def read_decathlon_index(root: Path) -> list[LiverVolume]:
    """Labelled volumes listed in ``root/dataset.json`` (``._*`` entries skipped), sorted by volume number."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: expected the Medical Segmentation Decathlon "
                                f"Task03_Liver layout (dataset.json, imagesTr/, labelsTr/) under "
                                f"data_root={root}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}); re-extract it from the Task03_Liver "
                         f"archive") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise ValueError(f"{meta_path}: missing key 'training' (expected a list of {{'image': "  # noqa: TRY004
                         f"'./imagesTr/liver_N.nii.gz', 'label': './labelsTr/liver_N.nii.gz'}})")
    volumes: dict[int, LiverVolume] = {}
    for i, entry in enumerate(meta["training"]):
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("image", "label"))):
            raise ValueError(f"{meta_path}: training[{i}] = {entry!r}: expected {{'image': "
                             f"'./imagesTr/liver_N.nii.gz', 'label': './labelsTr/liver_N.nii.gz'}}")
        image, label = root / entry["image"], root / entry["label"]
        if image.name.startswith("._") or label.name.startswith("._"):
            continue  # macOS resource fork, not a volume
        match = re.search(r"(\d+)\.nii(\.gz)?$", image.name)
        if match is None:
            raise ValueError(f"{meta_path}: training[{i}]['image'] = {entry['image']!r}: expected "
                             f"liver_N.nii.gz")
        for kind, path in (("image", image), ("label", label)):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {meta_path} training[{i}][{kind!r}] but missing")
        pid = int(match.group(1))
        if pid in volumes:
            raise ValueError(f"{meta_path}: training[{i}] repeats volume number {pid} ({image.name})")
        volumes[pid] = LiverVolume(pid, image, label)
    return [volumes[k] for k in sorted(volumes)]


def choose_slices(has_liver: np.ndarray, n_with: int, n_without: int, rng: np.random.Generator,
                  eligible: np.ndarray | None = None) -> np.ndarray:
    """Sorted z: ``n_with`` random slices containing liver and ``n_without`` without (fewer if absent), among
    the ``eligible`` slices (default all)."""
    ok = np.ones_like(has_liver, bool) if eligible is None else eligible
    with_z, without_z = np.flatnonzero(has_liver & ok), np.flatnonzero(~has_liver & ok)
    picked = [rng.choice(with_z, min(n_with, with_z.size), replace=False),
              rng.choice(without_z, min(n_without, without_z.size), replace=False)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def to_display(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """[k, i, j] axial slices (volume axes 0, 1) -> [k, rows, cols] in radiological display from the affine:
    rows anterior -> posterior, columns patient right -> left. Falls back to rows = axis 1
    (``volume[:, :, z].T``) when the affine does not say the first two axes are in-plane."""
    try:
        ornt = nib.io_orientation(affine)
    except (ValueError, np.linalg.LinAlgError, nib.orientations.OrientationError):  # degenerate affine
        ornt = np.array([[0, -1], [1, -1], [2, 1]])
    if {int(ornt[0, 0]), int(ornt[1, 0])} != {0, 1}:
        return np.ascontiguousarray(slices.transpose(0, 2, 1))
    x_axis = 0 if ornt[0, 0] == 0 else 1  # which array axis runs along world x (R/L)
    out = slices.transpose(0, 2, 1) if x_axis == 0 else slices
    if ornt[1 - x_axis, 1] > 0:  # y axis runs towards anterior: flip so anterior is up
        out = out[:, ::-1]
    if ornt[x_axis, 1] > 0:  # x axis runs towards the patient's right: flip so the right is on the left
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def resize_slices(hu: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad [k, H, W] slices to square (air / background), then resize to ``size`` with MONAI: area averaging
    (bilinear when enlarging) for HU, nearest for the mask."""
    h, w = hu.shape[1:]
    if h != w:
        side = max(h, w)
        pad = [(0, 0), ((side - h) // 2, (side - h + 1) // 2), ((side - w) // 2, (side - w + 1) // 2)]
        hu, mask = np.pad(hu, pad, constant_values=-1024), np.pad(mask, pad)
    if hu.shape[1] == size:
        return hu, mask
    mode = "area" if hu.shape[1] > size else "bilinear"
    resize = Compose([Resized("hu", (size, size), mode=mode), Resized("mask", (size, size), mode="nearest")])
    out = resize({"hu": hu, "mask": mask.astype(np.float32)})
    return convert_to_numpy(out["hu"], dtype=np.float32), convert_to_numpy(out["mask"]).astype(np.uint8)


class DecathlonLiverDataModule(RetrievalDataModule):
    """Slice dataset of Wickstrøm et al. 2022 on the Decathlon Task03_Liver CT volumes (or its phantom).

    Per labelled volume ``slices_with_liver`` axial slices containing liver (label 1 or 2) and
    ``slices_without_liver`` without are drawn at random (seeded by ``slice_seed`` and the volume number).
    The first ``train_volumes`` volumes by number train, the rest test (paper: 100 / 31 -> 1000 / 310 slices);
    ``val_volumes`` > 0 takes validation volumes from the end of the training ones, 0 makes the val split the
    test split (the paper evaluates on the test slices every epoch). ``min_liver_fraction`` > 0 leaves out
    slices whose liver covers less than that fraction of the slice (a few edge pixels): they are neither
    clear positives nor negatives.

    Samples: ``image`` float32 [3, S, S] (wide HU ``window`` scaled to [0, 1], grey stacked to 3 channels),
    ``hu`` float32 [1, S, S] (Hounsfield units; method views are computed from it), ``mask`` float32
    [1, S, S] (liver + cancer), ``label`` int64 (1 = slice contains liver), ``patient_id`` (N of liver_N),
    ``index`` (position in the split) and ``slice_index`` (z) int64. Slices are shown radiologically (rows
    anterior -> posterior, patient's right on the image left, from the affine).

    Each volume is decoded once per setup (label, then image), only the chosen slices are kept, resized to
    ``image_size``; with ``cache_dir`` they are stored per volume (keyed by file paths, sizes, mtimes and
    settings; written atomically) so later runs decode nothing.

    Skipped with a ``UserWarning`` naming the file: a label volume without any liver voxel (the volume
    contributes no slice). A volume with fewer liver / non-liver slices than requested gives what it has
    (also warned). Every other problem (missing or malformed dataset.json, missing or corrupt volume, image
    and label shapes differing, too few volumes for ``train_volumes``) raises an error naming the file or key.
    """

    class_names = {0: "no liver", 1: "liver"}

    def __init__(self, data_root: str, image_size: int = 224, slices_with_liver: int = 5,
                 slices_without_liver: int = 5, train_volumes: int = 100, val_volumes: int = 0,
                 window: tuple[float, float] = (-200.0, 300.0), slice_seed: int = 0,
                 min_liver_fraction: float = 0.0,
                 cache_dir: str | None = None, synthesize_if_missing: bool = False, phantom_volumes: int = 16,
                 batch_size: int = 32, num_workers: int = 2, predict_split: str = "test", train_views=None,
                 seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, predict_split=predict_split,
                         train_views=train_views, seed=seed)
        for key, value, low in (("image_size", image_size, 8), ("slices_with_liver", slices_with_liver, 0),
                                ("slices_without_liver", slices_without_liver, 0),
                                ("train_volumes", train_volumes, 1),
                                ("val_volumes", val_volumes, 0), ("phantom_volumes", phantom_volumes, 2)):
            if int(value) < low:
                raise ValueError(f"{key}={value}: expected an integer >= {low}")
        if slices_with_liver + slices_without_liver == 0:
            raise ValueError("slices_with_liver + slices_without_liver must be > 0")
        if val_volumes >= train_volumes:
            raise ValueError(f"val_volumes={val_volumes}: must be < train_volumes={train_volumes} "
                             f"(validation volumes are taken from the end of the training volumes)")
        self.save_hyperparameters(ignore=["train_views"])
        self.data_root = Path(data_root)
        self.image_size = int(image_size)
        self.slices_with_liver, self.slices_without_liver = int(slices_with_liver), int(slices_without_liver)
        self.train_volumes, self.val_volumes = int(train_volumes), int(val_volumes)
        self.window = check_window(window, "window")
        self.slice_seed = int(slice_seed)
        if not 0.0 <= float(min_liver_fraction) < 1.0:
            raise ValueError(f"min_liver_fraction={min_liver_fraction}: expected a fraction in [0, 1)")
        self.min_liver_fraction = float(min_liver_fraction)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthesize_if_missing = synthesize_if_missing
        self.phantom_volumes = int(phantom_volumes)

    # -- data on disk -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the synthetic phantom when ``data_root`` is missing and ``synthesize_if_missing``
        (atomically); with ``cache_dir``, fill the slice cache here (one process), so ranks only read it."""
        if not self.data_root.exists() and self.synthesize_if_missing:
            self._write_phantom()
        if self.cache_dir is not None:
            self._decode_all(self._volumes())

    def _write_phantom(self) -> None:
        from datamodules.synthetic.ct_liver_phantom import write_liver_phantom

        write_phantom_atomic(self.data_root, partial(write_liver_phantom, n_volumes=self.phantom_volumes),
                             f"CT liver phantom ({self.phantom_volumes} volumes)", "Task03_Liver", log)

    def _volumes(self) -> list[LiverVolume]:
        ensure_data_root(self.data_root, self.synthesize_if_missing, self._write_phantom,
                         "the Task03_Liver folder (the one holding dataset.json)",
                         PHANTOM_COMMAND.format(root=self.data_root))
        volumes = read_decathlon_index(self.data_root)
        if len(volumes) < self.train_volumes + 1:
            raise ValueError(f"train_volumes={self.train_volumes} needs at least train_volumes + 1 = "
                             f"{self.train_volumes + 1} labelled volumes (the rest form the test split), "
                             f"but {self.data_root / 'dataset.json'} lists {len(volumes)}; lower it")
        return volumes

    # -- decoding (once per volume) -------------------------------------------------------------------
    def _cache_path(self, vol: LiverVolume) -> Path | None:
        if self.cache_dir is None:
            return None
        key = cache_key(CACHE_VERSION, file_stats((vol.image, vol.label)), self.image_size, self.slices_with_liver,
                        self.slices_without_liver, self.slice_seed, vol.patient_id, self.min_liver_fraction)
        return self.cache_dir / f"liver_{vol.patient_id}-{key}.npz"

    def _decode(self, vol: LiverVolume) -> dict[str, np.ndarray]:
        """Chosen slices of a volume: hu, mask [k,S,S], label, slice_index [k], notes (warnings to give)."""
        labels, _ = load_nifti(vol.label)
        labels = np.rint(labels) if labels.dtype.kind == "f" else labels
        liver = (labels == LIVER_LABELS[0]) | (labels == LIVER_LABELS[1])  # much faster than np.isin
        has_liver = liver.any(axis=(0, 1))
        notes = []
        if not has_liver.any():
            notes.append(f"{vol.label}: no liver voxel (label 1 or 2) in any slice; volume "
                         f"liver_{vol.patient_id} skipped")
            empty = np.zeros((0, self.image_size, self.image_size), np.float32)
            return {"hu": empty, "mask": empty.astype(np.uint8), "label": np.zeros(0, np.int64),
                    "slice_index": np.zeros(0, np.int64), "notes": np.array(notes)}
        rng = np.random.default_rng([self.slice_seed, vol.patient_id])
        # A sliver of liver (below min_liver_fraction of the slice) is neither a clear positive nor a negative.
        eligible = ~has_liver | (liver.mean(axis=(0, 1)) >= self.min_liver_fraction)
        z = choose_slices(has_liver, self.slices_with_liver, self.slices_without_liver, rng, eligible)
        n_with = int(has_liver[z].sum())
        if n_with < self.slices_with_liver or len(z) - n_with < self.slices_without_liver:
            notes.append(f"{vol.label}: only {n_with} slices with liver and {len(z) - n_with} without "
                         f"available (asked for {self.slices_with_liver} / {self.slices_without_liver}); "
                         f"using those")
        image, affine = load_nifti(vol.image)
        if image.shape != labels.shape:
            raise ValueError(f"image {vol.image} has shape {image.shape} but its label {vol.label} has shape "
                             f"{labels.shape}; expected the same voxel grid")
        hu = to_display(np.moveaxis(image[:, :, z], -1, 0).astype(np.float32), affine)
        mask = to_display(np.moveaxis(liver[:, :, z], -1, 0).astype(np.uint8), affine)
        hu, mask = resize_slices(hu, mask, self.image_size)
        return {"hu": hu, "mask": mask, "label": has_liver[z].astype(np.int64), "slice_index": z,
                "notes": np.array(notes)}

    def _decode_cached(self, vol: LiverVolume) -> dict[str, np.ndarray]:
        return npz_cached(self._cache_path(vol), partial(self._decode, vol), then=f"decoding {vol.image} again",
                          logger=log)

    def _decode_all(self, volumes: list[LiverVolume]) -> list[dict[str, np.ndarray]]:
        workers = max(1, min(self.num_workers, 8, len(volumes)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self._decode_cached, volumes))

    def decode_volumes(self, volumes: list[LiverVolume]) -> list[dict[str, np.ndarray]]:
        """Chosen, resized slices of every volume (threads over volumes; from ``cache_dir`` where present)."""
        decoded = self._decode_all(volumes)
        for slices in decoded:  # warn from the calling thread, in volume order
            for note in slices["notes"]:
                warnings.warn(str(note), UserWarning, stacklevel=2)
        return decoded

    # -- datasets ---------------------------------------------------------------------------------
    def build_datasets(self) -> dict[str, MonaiDataset]:
        volumes = self._volumes()
        decoded = dict(zip([v.patient_id for v in volumes], self.decode_volumes(volumes), strict=True))
        ids = [v.patient_id for v in volumes]
        n_train = self.train_volumes - self.val_volumes
        split_ids = {"train": ids[:n_train], "val": ids[n_train:self.train_volumes],
                     "test": ids[self.train_volumes:]}
        window = HounsfieldWindowd("hu", self.window, output_key="image", channels=3)
        datasets = {}
        for split in ("train", "val", "test") if self.val_volumes else ("train", "test"):
            records = []
            for pid in split_ids[split]:
                s = decoded[pid]
                for k in range(len(s["label"])):
                    records.append({"hu": torch.from_numpy(s["hu"][k:k + 1]),
                                    "mask": torch.from_numpy(s["mask"][k:k + 1].astype(np.float32)),
                                    "label": torch.tensor(int(s["label"][k])),
                                    "patient_id": torch.tensor(pid, dtype=torch.int64),
                                    "index": torch.tensor(len(records), dtype=torch.int64),
                                    "slice_index": torch.tensor(int(s["slice_index"][k]), dtype=torch.int64)})
            datasets[split] = MonaiDataset(records, transform=window)
            log.info("Task03_Liver %s: %d volumes, %d slices (%d with liver)", split, len(split_ids[split]),
                     len(records), sum(int(r["label"]) for r in records))
        if not self.val_volumes:
            datasets["val"] = datasets["test"]
            log.info("val_volumes=0: the val split is the test split (Wickstrøm et al. 2022 evaluate on the "
                     "test slices every epoch)")
        return datasets
