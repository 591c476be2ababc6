"""CheXpert (Irvin et al. 2019) chest radiographs with one target finding, for IG-CBIR (Silva et al. 2020).

Layout read unchanged: ``<data_root>/train.csv`` and ``valid.csv`` (Path, Sex, Age, Frontal/Lateral, AP/PA,
then 14 findings valued 1.0 / 0.0 / -1.0 (uncertain) / blank (not mentioned)); ``Path`` is relative to the
folder above ``data_root`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``).
"""
from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset as MonaiDataset
from PIL import Image, UnidentifiedImageError

from datamodules.base import RetrievalDataModule
from datamodules.cache import cache_key, ensure_data_root, file_stats, npz_cached, write_phantom_atomic
from datamodules.synthetic.chexpert import CSV_COLUMNS, FINDINGS

log = logging.getLogger(__name__)
CACHE_VERSION = 1
FILES_PER_SHARD = 512
UNCERTAINTY_POLICIES = ("ignore", "zeros", "ones")
VIEWS = ("Frontal", "Lateral")
PHANTOM_COMMAND = "python -m datamodules.synthetic.chexpert --root {root}"
_PATIENT = re.compile(r"patient(\d+)")
_STUDY = re.compile(r"study(\d+)")

__all__ = ["CheXpertDataModule", "CheXpertRow", "FINDINGS", "apply_uncertainty", "read_chexpert_csv",
           "read_radiograph"]


@dataclass(frozen=True)
class CheXpertRow:
    """One CSV row: its line, ``Path`` as written, view, projection, patient / study ids and the 14 findings
    (1.0, 0.0, -1.0, or NaN for blank)."""

    line: int
    path: str
    view: str
    projection: str
    patient_id: int
    study_id: int
    findings: tuple[float, ...]

    def finding(self, name: str) -> float:
        return self.findings[FINDINGS.index(name)]


def _value(csv_path: Path, line: int, column: str, text: str) -> float:
    text = (text or "").strip()
    if not text:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"{csv_path} line {line}: {column} = {text!r}: expected 1.0, 0.0, -1.0 or blank")
    return value


def read_chexpert_csv(csv_path: str | Path) -> list[CheXpertRow]:
    """Parse a CheXpert ``train.csv`` / ``valid.csv`` (plain or .gz), checking the header and each label."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: expected the CheXpert layout (train.csv, valid.csv and "
                                f"the train/ valid/ image folders) in {csv_path.parent}")
    import gzip

    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; a CheXpert CSV has "
                             f"{', '.join(CSV_COLUMNS)}")
        col = {c: header.index(c) for c in CSV_COLUMNS}
        rows = []
        for i, rec in enumerate(reader, start=2):
            if not rec:
                continue
            path = rec[col["Path"]].strip()
            patient, study = _PATIENT.search(path), _STUDY.search(path)
            if patient is None or study is None:
                raise ValueError(f"{csv_path} line {i}: Path = {path!r}: expected "
                                 f"<folder>/<split>/patientNNNNN/studyN/viewN_<view>.jpg")
            view = rec[col["Frontal/Lateral"]].strip()
            if view not in VIEWS:
                raise ValueError(f"{csv_path} line {i}: Frontal/Lateral = {view!r}: expected Frontal or Lateral")
            rows.append(CheXpertRow(i, path, view, rec[col["AP/PA"]].strip(), int(patient.group(1)),
                                    int(study.group(1)),
                                    tuple(_value(csv_path, i, c, rec[col[c]]) for c in FINDINGS)))
    return rows


def check_finding(name: str, key: str = "target") -> str:
    if name not in FINDINGS:
        raise ValueError(f"{key}={name!r}: unknown finding; expected one of {', '.join(FINDINGS)}")
    return name


def check_policy(policy: str) -> str:
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty={policy!r}: expected one of {', '.join(UNCERTAINTY_POLICIES)} (ignore = "
                         f"drop uncertain rows, as the IG-CBIR reference code; zeros / ones = U-Zeros / U-Ones)")
    return policy


def apply_uncertainty(rows: Sequence[CheXpertRow], target: str, policy: str) -> list[tuple[CheXpertRow, int]]:
    """(row, binary label) of the target finding: 1.0 -> 1, 0.0 and blank -> 0, -1.0 (uncertain) dropped
    (``ignore``), -> 0 (``zeros``) or -> 1 (``ones``) (Irvin et al. 2019, U-Ignore / U-Zeros / U-Ones)."""
    check_finding(target)
    check_policy(policy)
    out = []
    for row in rows:
        v = row.finding(target)
        if v == -1.0:
            if policy == "ignore":
                continue
            out.append((row, int(policy == "ones")))
        else:
            out.append((row, int(v == 1.0)))
    return out


def read_radiograph(path: Path, size: int, row: CheXpertRow | None = None, csv_name: str = "") -> np.ndarray:
    """Decode a JPEG as 8-bit grey, resized to ``size`` x ``size`` (bilinear, like Keras' ``load_img`` with
    a target size, aspect not kept); one clear error for a missing or unreadable file."""
    where = f" (line {row.line} of {csv_name})" if row is not None else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{where}: is the image folder complete?")
    try:
        with Image.open(path) as img:
            grey = img.convert("L").resize((size, size), Image.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}{where}: unreadable image ({err}); expected a JPEG radiograph") from None


def patient_split(patients: Sequence[int], fraction: float, seed: int) -> set[int]:
    """A seeded ``fraction`` of the distinct patient ids (at least one): the held-out patients."""
    ids = np.array(sorted(set(patients)))
    n = max(1, int(round(fraction * len(ids)))) if fraction > 0 else 0
    return set(np.random.default_rng(seed).permutation(ids)[:n].tolist())


class CheXpertDataModule(RetrievalDataModule):
    """CheXpert radiographs labelled by one finding (Silva et al. 2020: Pleural Effusion vs not).

    Splits (patient-disjoint): ``train`` and ``val`` from ``train.csv`` (``val_fraction`` of its patients,
    seeded by ``split_seed``), ``test`` = ``valid.csv`` (the official validation set: the pool of the
    IG-CBIR protocol). Samples: ``image`` float32 [3, S, S] in [0, 1] (grey replicated to 3 channels; the
    method applies its own normalisation), ``label`` int64 (the target finding, 0 / 1), ``findings``
    float32 [14] (1 where positive), ``patient_id``, ``study_id``, ``index``.

    Args:
        data_root: the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder holding the CSVs.
        target: the finding that labels an image (paper: Pleural Effusion).
        uncertainty: ``ignore`` (drop uncertain rows; reference code), ``zeros`` or ``ones``.
        views: Frontal and/or Lateral (reference code: Frontal); applies to every split.
        projections: AP/PA values kept in train / val (reference code: AP); None = all. ``test_projections``
            the same for the test pool (None: the whole frontal validation pool, as the paper's protocol).
        image_size: side S (paper: 224).
        val_fraction, split_seed: patients of train.csv held out as ``val``.
        cache_dir: decoded images cached in shards (keyed by file paths, sizes, mtimes and the size).
        synthesize_if_missing, phantom_train_patients, phantom_valid_patients: write the synthetic phantom
            (:mod:`datamodules.synthetic.chexpert`) when ``data_root`` is missing.
    """

    def __init__(self, data_root: str, target: str = "Pleural Effusion", uncertainty: str = "ignore",
                 views: Sequence[str] = ("Frontal",), projections: Sequence[str] | None = ("AP",),
                 test_projections: Sequence[str] | None = None, image_size: int = 224,
                 val_fraction: float = 0.1, split_seed: int = 0, cache_dir: str | None = None,
                 synthesize_if_missing: bool = False, phantom_train_patients: int = 80,
                 phantom_valid_patients: int = 60, batch_size: int = 32, num_workers: int = 2,
                 predict_split: str = "test", train_views=None, seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, predict_split=predict_split,
                         train_views=train_views, seed=seed)
        self.save_hyperparameters(ignore=["train_views"])
        self.data_root = Path(data_root)
        self.target = check_finding(target)
        self.uncertainty = check_policy(uncertainty)
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"views={list(views)}: expected a non-empty list of {', '.join(VIEWS)}")
        self.views = tuple(views)
        self.projections = None if projections is None else tuple(projections)
        self.test_projections = None if test_projections is None else tuple(test_projections)
        if int(image_size) < 16:
            raise ValueError(f"image_size={image_size}: expected an integer >= 16")
        self.image_size = int(image_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: expected 0 <= fraction < 1")
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthesize_if_missing = bool(synthesize_if_missing)
        self.phantom_patients = (int(phantom_train_patients), int(phantom_valid_patients))
        self.rows: dict[str, list[CheXpertRow]] = {}  # split -> rows in dataset order

    # -- CSV rows ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the phantom if asked; with ``cache_dir`` decode every kept image once, here."""
        if self.cache_dir is not None:
            for rows in self.split_rows().values():
                self.decode([r for r, _ in rows])
        else:
            self._ensure_root()

    def _ensure_root(self) -> None:
        ensure_data_root(self.data_root, self.synthesize_if_missing, self._write_phantom,
                         "the CheXpert-v1.0-small folder (train.csv, valid.csv, train/, valid/)",
                         PHANTOM_COMMAND.format(root=self.data_root))

    def _write_phantom(self) -> None:
        from datamodules.synthetic.chexpert import write_chexpert_phantom

        n_train, n_valid = self.phantom_patients
        write_phantom_atomic(self.data_root, lambda tmp: write_chexpert_phantom(
            tmp, n_train, n_valid, folder_name=self.data_root.name),
            f"CheXpert phantom ({n_train} + {n_valid} patients)", "CheXpert", log)

    def _keep(self, row: CheXpertRow, projections) -> bool:
        return row.view in self.views and (row.view != "Frontal" or projections is None
                                           or row.projection in projections)

    def split_rows(self) -> dict[str, list[tuple[CheXpertRow, int]]]:
        """``{split: [(row, label), ...]}`` after the view / projection filters and the uncertainty policy."""
        self._ensure_root()
        train = read_chexpert_csv(self.data_root / "train.csv")
        valid = read_chexpert_csv(self.data_root / "valid.csv")
        held_out = patient_split([r.patient_id for r in train], self.val_fraction, self.split_seed)
        pick = {"train": [r for r in train if r.patient_id not in held_out and self._keep(r, self.projections)],
                "val": [r for r in train if r.patient_id in held_out and self._keep(r, self.projections)],
                "test": [r for r in valid if self._keep(r, self.test_projections)]}
        out = {split: apply_uncertainty(rows, self.target, self.uncertainty) for split, rows in pick.items()}
        for split, rows in out.items():
            if not rows:
                raise ValueError(f"split {split!r} of {self.data_root} is empty after views={list(self.views)}, "
                                 f"projections={self.projections}, uncertainty={self.uncertainty!r}")
        return out

    # -- images -----------------------------------------------------------------------------------
    def image_path(self, row: CheXpertRow) -> Path:
        """``Path`` resolved against the folder above ``data_root``; must stay inside ``data_root``."""
        base = self.data_root.resolve()
        path = (base.parent / row.path).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"Path {row.path!r} on line {row.line} resolves to {path}, outside data_root={base}: "
                             f"CheXpert paths start with the dataset folder name ({base.name}/train/...)")
        return path

    def _decode_shard(self, rows: list[CheXpertRow], csv_name: str) -> np.ndarray:
        paths = [self.image_path(r) for r in rows]
        compute = lambda: {"images": np.stack([read_radiograph(p, self.image_size, r, csv_name)  # noqa: E731
                                               for p, r in zip(paths, rows)])}
        cache = None
        if self.cache_dir is not None:
            missing = next((p for p in paths if not p.is_file()), None)
            if missing is not None:
                compute()  # the clear "not found" error
            key = cache_key(CACHE_VERSION, self.image_size, file_stats(paths), length=20)
            cache = self.cache_dir / f"chexpert-{key}.npz"
        return npz_cached(cache, compute, shapes={"images": (len(rows), self.image_size, self.image_size)},
                          logger=log)["images"]

    def decode(self, rows: list[CheXpertRow], csv_name: str = "the CSV") -> np.ndarray:
        """uint8 images [n, S, S] of ``rows``, decoded in threads, shard by shard through ``cache_dir``."""
        shards = [rows[i:i + FILES_PER_SHARD] for i in range(0, len(rows), FILES_PER_SHARD)]
        workers = max(1, min(self.num_workers, 8, len(shards)))
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(partial(self._decode_shard, csv_name=csv_name), shards))
        return np.concatenate(parts) if parts else np.zeros((0, self.image_size, self.image_size), np.uint8)

    def paths(self, split: str) -> list[str]:
        """The CSV ``Path`` of each sample of ``split``, in dataset order (to name images in rankings)."""
        self.retrieval_dataset(split)
        return [r.path for r in self.rows[split]]

    def build_datasets(self) -> dict[str, MonaiDataset]:
        datasets = {}
        for split, pairs in self.split_rows().items():
            rows = [r for r, _ in pairs]
            images = self.decode(rows, "valid.csv" if split == "test" else "train.csv")
            records = [{"image": torch.from_numpy(images[i:i + 1]), "label": torch.tensor(label),
                        "findings": torch.tensor([float(v == 1.0) for v in row.findings]),
                        "patient_id": torch.tensor(row.patient_id), "study_id": torch.tensor(row.study_id),
                        "index": torch.tensor(i)} for i, (row, label) in enumerate(pairs)]
            self.rows[split] = rows
            datasets[split] = MonaiDataset(records, transform=_to_float_rgb)
            n_pos = sum(label for _, label in pairs)
            log.info("CheXpert %s: %d images of %d patients, %s positive %d", split, len(rows),
                     len({r.patient_id for r in rows}), self.target, n_pos)
        return datasets


def _to_float_rgb(sample: dict) -> dict:
    """uint8 [1, S, S] -> float32 [3, S, S] in [0, 1] (grey replicated, as the paper feeds DenseNet)."""
    return {**sample, "image": (sample["image"].float() / 255.0).expand(3, -1, -1).contiguous()}
