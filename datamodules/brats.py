"""BraTS 2021 brain MRI (T1, T1ce, T2, FLAIR + tumour segmentation) as a slice retrieval dataset.

Layout read unchanged: ``<root>/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` (case numbers
need not be contiguous), or with ``naming: "2023"`` ``<root>/BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t1n,t1c,
t2w,t2f,seg}.nii.gz`` (there the enhancing tumour is label 3, not 4). Other folders and files are ignored.
Segmentation labels: 0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour; whole tumour = {1, 2, 4}.

Per case, ``slices_per_patient`` axial slices are chosen from the whole-tumour area (``largest``: the
largest areas; ``spread``: evenly spaced over the slices holding tumour). Each sequence is normalised over
the brain (non-zero voxels) of its volume with MONAI's ``NormalizeIntensity(nonzero=True)``, the slices shown
radiologically (from the affine; the axial axis is found from it too) and resized to ``image_size``.
Patients are split (train / val / test) by a seeded permutation of patient numbers.

Two kinds of samples:
* retrieval items (``retrieval_dataset``, evaluation, prediction): ONE sequence image of a slice: ``image``
  [1, S, S], ``mask`` [1, S, S] (whole tumour), ``label`` (tumour-size class from the tumour / brain area
  ratio and ``size_class_edges``), ``patient_id``, ``index``, ``sequence`` (0 t1, 1 t1ce, 2 t2, 3 flair),
  ``slice_index`` and ``attributes`` (per-item attributes for the visual-similarity relevance,
  ``attribute_layout``: whole-tumour mask at ``attribute_mask_size``, grey histogram of the image inside the
  brain, generic Fourier descriptor of the tumour mask);
* training samples (train / val loaders): the four sequences of a slice, ``image`` [4, S, S], with ``mask``,
  ``label``, ``patient_id``, ``index``, ``slice_index`` (and the method's ``views`` on top).
"""
from __future__ import annotations

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
from monai.transforms import NormalizeIntensity, Resize
from torch.utils.data import Dataset

from datamodules.attributes import generic_fourier_descriptor, grey_histogram, pack_attributes
from datamodules.base import RetrievalDataModule, TransformedDataset
from datamodules.cache import cache_key, ensure_data_root, file_stats, npz_cached, write_phantom_atomic
from datamodules.decathlon_liver import load_nifti, to_display

log = logging.getLogger(__name__)
SEQUENCES = ("t1", "t1ce", "t2", "flair")
NAMINGS = {
    "2021": {"pattern": r"BraTS2021_(\d+)", "sep": "_", "files": SEQUENCES, "labels": (0, 1, 2, 4)},
    "2023": {"pattern": r"BraTS-GLI-(\d+)-(\d+)", "sep": "-", "files": ("t1n", "t1c", "t2w", "t2f"),
             "labels": (0, 1, 2, 3)},
}
SLICE_SELECTIONS = ("largest", "spread")
EMPTY_TUMOUR = ("skip", "error")
CACHE_VERSION = 1
PHANTOM_COMMAND = "python -m datamodules.synthetic.brats --root {root}"


@dataclass(frozen=True)
class BraTSCase:
    """One case folder: its name, patient number and files ({t1, t1ce, t2, flair, seg}: path)."""

    name: str
    patient_id: int
    files: dict

    @property
    def paths(self) -> list[Path]:
        return [self.files[k] for k in (*SEQUENCES, "seg")]


def find_cases(root: Path, naming: str = "2021") -> list[BraTSCase]:
    """Case folders under ``root`` in the ``naming`` layout, sorted by name; a case missing a file is an
    error naming the folder and the file expected."""
    if naming not in NAMINGS:
        raise ValueError(f"naming={naming!r}: expected one of {sorted(NAMINGS)}")
    spec = NAMINGS[naming]
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = re.fullmatch(spec["pattern"], folder.name)
        if match is None:
            continue
        files = {}
        for key, suffix in zip((*SEQUENCES, "seg"), (*spec["files"], "seg"), strict=True):
            path = folder / f"{folder.name}{spec['sep']}{suffix}.nii.gz"
            if not path.is_file() and path.with_suffix("").is_file():   # uncompressed .nii also accepted
                path = path.with_suffix("")
            if not path.is_file():
                present = sorted(p.name for p in folder.iterdir())
                raise FileNotFoundError(f"{folder}: missing {path.name} (the {key} "
                                        f"{'segmentation' if key == 'seg' else 'sequence'}); a BraTS case needs "
                                        f"{', '.join(spec['files'])} and seg; found {present}")
            files[key] = path
        pid = int(match.group(1))
        cases.append(BraTSCase(folder.name, pid, files))
    if not cases:
        example = "BraTS2021_00000" if naming == "2021" else "BraTS-GLI-00000-000"
        raise FileNotFoundError(f"no BraTS case folders (like {example}/) under data_root={root} "
                                f"(naming={naming!r})")
    return cases


def axial_last(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the array axis that runs along the world's inferior-superior axis last (from the affine),
    with the affine's columns permuted to match (volumes stored sagittally or coronally)."""
    try:
        ax = int(np.flatnonzero(nib.io_orientation(affine)[:, 0] == 2)[0])
    except (ValueError, IndexError, np.linalg.LinAlgError):
        return volume, affine
    if ax == 2:
        return volume, affine
    perm = [i for i in range(3) if i != ax] + [ax]
    out = affine.copy()
    out[:, :3] = affine[:, perm]
    return np.moveaxis(volume, ax, 2), out


def select_slices(areas: np.ndarray, n: int, mode: str = "largest") -> np.ndarray:
    """z of up to ``n`` slices with tumour (area > 0), sorted: the ``largest`` areas (ties: lower z) or
    ``spread`` evenly over the slices holding tumour."""
    if mode not in SLICE_SELECTIONS:
        raise ValueError(f"slice_selection={mode!r}: expected one of {SLICE_SELECTIONS}")
    with_tumour = np.flatnonzero(areas > 0)
    if mode == "largest":
        order = np.argsort(-areas, kind="stable")
        chosen = order[: min(n, with_tumour.size)]
    else:
        pick = np.unique(np.round(np.linspace(0, with_tumour.size - 1, min(n, with_tumour.size))).astype(int))
        chosen = with_tumour[pick]
    return np.sort(chosen).astype(np.int64)


def resize_stack(x: np.ndarray, size: int, mode: str) -> np.ndarray:
    """[k, H, W] -> [k, size, size]: padded to a square with 0 (background), centred, then resized with MONAI
    (``area`` / ``bilinear`` for images, ``nearest`` for masks)."""
    h, w = x.shape[1:]
    if h != w:
        side = max(h, w)
        x = np.pad(x, [(0, 0), ((side - h) // 2, (side - h + 1) // 2), ((side - w) // 2, (side - w + 1) // 2)])
    if x.shape[1:] == (size, size):
        return x
    if mode != "nearest":
        mode = "area" if x.shape[1] > size else "bilinear"
    return np.asarray(Resize((size, size), mode=mode)(x.astype(np.float32)))


class Records(Dataset):
    """A list of sample dicts (shallow-copied on access)."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return dict(self.records[i])


class BraTSDataModule(RetrievalDataModule):
    """BraTS 2021 slices for multi-sequence retrieval (Sauron et al.), or the synthetic BraTS phantom.

    Args:
        data_root: folder holding the case folders.
        naming: ``"2021"`` (BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}) or ``"2023"`` (BraTS-GLI-XXXXX-YYY-{t1n,
            t1c,t2w,t2f,seg}, enhancing tumour label 3).
        image_size: side of the square slices (BraTS: 240, no resizing).
        slices_per_patient: axial slices per case (the poster: 1, the "best slice").
        slice_selection: ``largest`` whole-tumour areas, or ``spread`` over the tumour.
        empty_tumour: a case whose segmentation has no tumour voxel: ``skip`` (warned, with the count in the
            log) or ``error``.
        val_fraction, test_fraction, split_seed: patient-level split (val_fraction 0: val = test).
        size_class_edges: whole-tumour / brain area ratios separating the size classes (the ``label``: 0
            small, 1 medium, 2 large), the binary relevance "same size class".
        attribute_mask_size, histogram_bins, histogram_range, gfd_radial, gfd_angular: the per-item
            attributes (tumour mask resolution for IoU; grey histogram of the normalised intensities inside the
            brain; generic Fourier descriptor orders m < radial, n < angular).
        cache_dir: decoded slices and attributes per case, keyed by file stats and settings.
        synthesize_if_missing, phantom_patients, phantom_shape: write the phantom when data_root is missing.
        batch_size: slices per training batch (4 images each); also the retrieval embedding batch.
    """

    def __init__(self, data_root: str, naming: str = "2021", image_size: int = 240, slices_per_patient: int = 1,
                 slice_selection: str = "largest", empty_tumour: str = "skip", val_fraction: float = 0.15,
                 test_fraction: float = 0.15, split_seed: int = 0,
                 size_class_edges: tuple[float, float] = (0.06, 0.14), attribute_mask_size: int = 64,
                 histogram_bins: int = 32, histogram_range: tuple[float, float] = (-3.0, 3.0),
                 gfd_radial: int = 4, gfd_angular: int = 9, cache_dir: str | None = None,
                 synthesize_if_missing: bool = False, phantom_patients: int = 60,
                 phantom_shape: tuple[int, int, int] = (64, 64, 24), batch_size: int = 32, num_workers: int = 2,
                 predict_split: str = "test", train_views=None, seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, predict_split=predict_split,
                         train_views=train_views, seed=seed)
        if naming not in NAMINGS:
            raise ValueError(f"naming={naming!r}: expected one of {sorted(NAMINGS)}")
        if slice_selection not in SLICE_SELECTIONS:
            raise ValueError(f"slice_selection={slice_selection!r}: expected one of {SLICE_SELECTIONS}")
        if empty_tumour not in EMPTY_TUMOUR:
            raise ValueError(f"empty_tumour={empty_tumour!r}: expected one of {EMPTY_TUMOUR}")
        for key, value, low in (("image_size", image_size, 8), ("slices_per_patient", slices_per_patient, 1),
                                ("attribute_mask_size", attribute_mask_size, 4),
                                ("histogram_bins", histogram_bins, 2), ("gfd_radial", gfd_radial, 1),
                                ("gfd_angular", gfd_angular, 1), ("phantom_patients", phantom_patients, 3)):
            if int(value) < low:
                raise ValueError(f"{key}={value}: expected an integer >= {low}")
        if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: expected fractions "
                             f"with 0 < test, 0 <= val and val + test < 1")
        edges = [float(e) for e in size_class_edges]
        if edges != sorted(edges) or any(e <= 0 for e in edges):
            raise ValueError(f"size_class_edges={size_class_edges}: expected increasing positive area ratios")
        if float(histogram_range[0]) >= float(histogram_range[1]):
            raise ValueError(f"histogram_range={histogram_range}: expected [low, high] with low < high")
        self.save_hyperparameters(ignore=["train_views"])
        self.data_root = Path(data_root)
        self.naming = naming
        self.image_size, self.slices_per_patient = int(image_size), int(slices_per_patient)
        self.slice_selection, self.empty_tumour = slice_selection, empty_tumour
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), int(
            split_seed)
        self.size_class_edges = edges
        self.attribute_mask_size, self.histogram_bins = int(attribute_mask_size), int(histogram_bins)
        self.histogram_range = (float(histogram_range[0]), float(histogram_range[1]))
        self.gfd_radial, self.gfd_angular = int(gfd_radial), int(gfd_angular)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthesize_if_missing = synthesize_if_missing
        self.phantom_patients, self.phantom_shape = int(phantom_patients), tuple(int(s) for s in phantom_shape)
        self.slice_datasets: dict[str, Dataset] = {}
        self.skipped: list[str] = []

    @property
    def attribute_layout(self) -> dict[str, int]:
        """Widths of the parts of ``attributes`` (see :mod:`datamodules.attributes`)."""
        return {"wt_mask": self.attribute_mask_size ** 2, "histogram": self.histogram_bins,
                "gfd": self.gfd_radial * self.gfd_angular}

    # -- data on disk -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if not self.data_root.exists() and self.synthesize_if_missing:
            self._write_phantom()
        if self.cache_dir is not None:
            self._decode_all(self._cases())

    def _write_phantom(self) -> None:
        from datamodules.synthetic.brats import write_brats_phantom

        write_phantom_atomic(self.data_root, partial(write_brats_phantom, n_patients=self.phantom_patients,
                                                     shape=self.phantom_shape, naming=self.naming),
                             f"BraTS phantom ({self.phantom_patients} patients)", "BraTS 2021", log)

    def _cases(self) -> list[BraTSCase]:
        ensure_data_root(self.data_root, self.synthesize_if_missing, self._write_phantom,
                         "the folder holding the BraTS2021_XXXXX case folders",
                         PHANTOM_COMMAND.format(root=self.data_root))
        return find_cases(self.data_root, self.naming)

    # -- decoding (once per case) -----------------------------------------------------------------
    def _settings(self) -> list:
        return [self.naming, self.image_size, self.slices_per_patient, self.slice_selection,
                self.attribute_mask_size, self.histogram_bins, self.histogram_range, self.gfd_radial,
                self.gfd_angular]

    def _cache_path(self, case: BraTSCase) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{case.name}-{cache_key(CACHE_VERSION, file_stats(case.paths), self._settings())}.npz"

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return axial_last(*load_nifti(path, archive="the BraTS archive"))

    def _empty(self, note: str) -> dict[str, np.ndarray]:
        s, a = self.image_size, self.attribute_layout
        return {"images": np.zeros((0, 4, s, s), np.float32), "mask": np.zeros((0, s, s), np.uint8),
                "slice_index": np.zeros(0, np.int64), "area_ratio": np.zeros(0, np.float32),
                "wt_small": np.zeros((0, a["wt_mask"]), np.uint8),
                "histogram": np.zeros((0, 4, a["histogram"]), np.float32),
                "gfd": np.zeros((0, a["gfd"]), np.float32), "notes": np.array([note]), "skipped": np.array(1)}

    def decode_case(self, case: BraTSCase) -> dict[str, np.ndarray]:
        """Chosen slices of a case: images [k, 4, S, S] (normalised), mask [k, S, S], attributes, notes."""
        seg_path = case.files["seg"]
        seg, seg_affine = self._load(seg_path)
        seg = np.rint(seg).astype(np.int64) if seg.dtype.kind == "f" else seg.astype(np.int64)
        allowed = NAMINGS[self.naming]["labels"]
        bad = sorted(set(np.unique(seg).tolist()) - set(allowed))
        if bad:
            raise ValueError(f"{seg_path}: segmentation labels {bad} outside {set(allowed)} (BraTS "
                             f"{self.naming}: 0 background, 1 necrotic core, 2 oedema, {allowed[-1]} enhancing)")
        if self.slices_per_patient > seg.shape[2]:
            raise ValueError(f"slices_per_patient={self.slices_per_patient} but {seg_path} has only "
                             f"{seg.shape[2]} axial slices; lower slices_per_patient")
        tumour = seg > 0
        areas = tumour.sum(axis=(0, 1))
        if not areas.any():
            note = f"{seg_path}: no tumour voxel (labels 1, 2, {allowed[-1]}) in any slice; case {case.name}"
            if self.empty_tumour == "error":
                raise ValueError(f"{note} (empty_tumour=error; set empty_tumour=skip to leave such cases out)")
            return self._empty(f"{note} skipped")
        z = select_slices(areas, self.slices_per_patient, self.slice_selection)
        notes = []
        if len(z) < self.slices_per_patient:
            notes.append(f"{seg_path}: only {len(z)} slices with tumour (slices_per_patient="
                         f"{self.slices_per_patient}); using those")
        volumes = []
        for seq in SEQUENCES:
            vol, _ = self._load(case.files[seq])
            if vol.shape != seg.shape:
                raise ValueError(f"{case.files[seq]} has shape {vol.shape} but {seg_path} has shape {seg.shape}; "
                                 f"the sequences and the segmentation of a case must share one voxel grid")
            volumes.append(vol.astype(np.float32))
        stacked = np.stack(volumes)
        brain3d = np.any(stacked != 0, axis=0)
        # per sequence, over its brain (non-zero) voxels: (v - mean) / std; the background stays 0
        normed = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(stacked))
        take = lambda v: to_display(np.moveaxis(v[:, :, z], -1, 0), seg_affine)  # noqa: E731
        images = np.stack([resize_stack(take(v), self.image_size, "area") for v in normed], 1)
        mask = resize_stack(take(tumour.astype(np.float32)), self.image_size, "nearest") > 0.5
        brain = resize_stack(take(brain3d.astype(np.float32)), self.image_size, "nearest") > 0.5
        small = resize_stack(mask.astype(np.float32), self.attribute_mask_size, "area") > 0.5
        hist = grey_histogram(torch.from_numpy(images.reshape(-1, *images.shape[2:])),
                              torch.from_numpy(np.repeat(brain, 4, axis=0)), self.histogram_bins,
                              self.histogram_range).reshape(len(z), 4, -1)
        gfd = generic_fourier_descriptor(torch.from_numpy(mask.astype(np.float32)), self.gfd_radial,
                                         self.gfd_angular)
        ratio = mask.sum((1, 2)) / np.maximum(brain.sum((1, 2)), 1)
        return {"images": images.astype(np.float32), "mask": mask.astype(np.uint8), "slice_index": z,
                "area_ratio": ratio.astype(np.float32), "wt_small": small.reshape(len(z), -1).astype(np.uint8),
                "histogram": hist.numpy(), "gfd": gfd.numpy(), "notes": np.array(notes, dtype=str),
                "skipped": np.array(0)}

    def _decode_cached(self, case: BraTSCase) -> dict[str, np.ndarray]:
        return npz_cached(self._cache_path(case), partial(self.decode_case, case),
                          then=f"decoding {case.name} again", logger=log)

    def _decode_all(self, cases: list[BraTSCase]) -> list[dict[str, np.ndarray]]:
        workers = max(1, min(self.num_workers, 8, len(cases)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self._decode_cached, cases))

    # -- splits and datasets ------------------------------------------------------------------------
    def split_patients(self, patient_ids: list[int]) -> dict[str, list[int]]:
        """Seeded patient-level split: {train, val, test} lists of patient numbers (sorted)."""
        ids = np.array(sorted(set(patient_ids)))
        perm = np.random.default_rng(self.split_seed).permutation(len(ids))
        n_test = max(1, round(self.test_fraction * len(ids)))
        n_val = max(1, round(self.val_fraction * len(ids))) if self.val_fraction else 0
        if len(ids) - n_test - n_val < 1:
            raise ValueError(f"{len(ids)} patients cannot be split with val_fraction={self.val_fraction} and "
                             f"test_fraction={self.test_fraction}: no training patient left")
        parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        return {k: sorted(ids[v].tolist()) for k, v in parts.items()}

    def size_class(self, ratio: float) -> int:
        return int(np.searchsorted(self.size_class_edges, ratio, side="right"))

    def build_datasets(self) -> dict[str, Dataset]:
        cases = self._cases()
        decoded = self._decode_all(cases)
        self.skipped = []
        for case, d in zip(cases, decoded, strict=True):
            for note in d["notes"]:
                warnings.warn(str(note), UserWarning, stacklevel=2)
            if int(d["skipped"]):
                self.skipped.append(case.name)
        if self.skipped:
            log.warning("BraTS: %d of %d cases skipped (no tumour voxel): %s", len(self.skipped), len(cases),
                        ", ".join(self.skipped))
        splits = self.split_patients([c.patient_id for c in cases])
        by_patient: dict[int, list[tuple[BraTSCase, dict]]] = {}
        for case, d in zip(cases, decoded, strict=True):
            by_patient.setdefault(case.patient_id, []).append((case, d))
        datasets, self.slice_datasets = {}, {}
        for split in ("train", "val", "test") if self.val_fraction else ("train", "test"):
            items, slices = [], []
            for pid in splits[split]:
                for _case, d in by_patient[pid]:
                    self._add_case(pid, d, items, slices)
            if not items:
                raise ValueError(f"BraTS {split} split has no slice (all its cases were skipped); add cases or "
                                 f"change split_seed / the fractions")
            datasets[split], self.slice_datasets[split] = Records(items), Records(slices)
            log.info("BraTS %s: %d patients, %d slices, %d sequence images", split, len(splits[split]),
                     len(slices), len(items))
        if not self.val_fraction:
            datasets["val"], self.slice_datasets["val"] = datasets["test"], self.slice_datasets["test"]
        return datasets

    def _add_case(self, pid: int, d: dict, items: list, slices: list) -> None:
        images = torch.from_numpy(d["images"])
        for k in range(len(d["slice_index"])):
            common = {"mask": torch.from_numpy(d["mask"][k:k + 1].astype(np.float32)),
                      "label": torch.tensor(self.size_class(float(d["area_ratio"][k]))),
                      "patient_id": torch.tensor(pid, dtype=torch.int64),
                      "slice_index": torch.tensor(int(d["slice_index"][k]), dtype=torch.int64)}
            slices.append({"image": images[k], "index": torch.tensor(len(slices)), **common})
            for s in range(len(SEQUENCES)):
                attributes, _ = pack_attributes({"wt_mask": torch.from_numpy(d["wt_small"][k:k + 1]),
                                                 "histogram": torch.from_numpy(d["histogram"][k:k + 1, s]),
                                                 "gfd": torch.from_numpy(d["gfd"][k:k + 1])})
                items.append({"image": images[k, s:s + 1], "index": torch.tensor(len(items)),
                              "sequence": torch.tensor(s), "attributes": attributes[0], **common})

    def _views_dataset(self, split: str) -> TransformedDataset:
        """Training / validation-loss samples are whole slices (4 sequences), with the method's views."""
        if not self.datasets:
            self.setup()
        return TransformedDataset(self.slice_datasets[split], self.train_views, seed=self.run_seed)
