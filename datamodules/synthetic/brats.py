"""Tiny synthetic copy of BraTS 2021 (brain MRI, four co-registered sequences + tumour segmentation).

Writes the real layout, ``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` with non-contiguous
case numbers (or the 2023 naming ``BraTS-GLI-XXXXX-000/BraTS-GLI-XXXXX-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
where the enhancing tumour is label 3 as in BraTS 2023). Skull-stripped brains: the grey / white matter
probability maps of the MNI152 2009 template bundled with nilearn (real anatomy, read with nibabel, no
download), warped per patient by a random affine and a smooth displacement field, resampled to a small grid
(default 64 x 64 x 24 voxels of 3.75 mm covering BraTS' 240 mm field of view and a 90 mm axial slab).

Contrasts follow the sequences: T1 white matter > grey matter > CSF (dark); T2 CSF bright, white matter
darker than grey; FLAIR CSF suppressed (dark), oedema bright; T1ce like T1 with a bright enhancing rim. The
tumour is an irregular blob at a random position: necrotic core (label 1, may be absent in small tumours)
inside an enhancing rim (label 4) inside oedema (label 2), with varied size, elongation and orientation.
Per patient and sequence there is a random gain, a smooth bias field and noise, so intensities need the
per-sequence normalisation the DataModule applies. Same seed -> byte-identical files.

Command: ``python -m datamodules.synthetic.brats --root data/phantom/BraTS2021 --patients 60``
"""
from __future__ import annotations

import argparse
import importlib.util
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

from datamodules.synthetic.shapes import blur, smooth_field

SEQUENCES_2021 = ("t1", "t1ce", "t2", "flair")
SEQUENCES_2023 = ("t1n", "t1c", "t2w", "t2f")
# Mean intensity of each tissue per sequence (T1, T1ce, T2, FLAIR):
# CSF, grey matter, white matter, necrotic core (1), oedema (2), enhancing tumour (4).
CONTRAST = np.array([
    # CSF   GM    WM    nec   oed   enh
    [0.20, 0.55, 0.80, 0.18, 0.45, 0.55],   # T1: WM > GM > CSF
    [0.22, 0.57, 0.80, 0.18, 0.47, 1.10],   # T1ce: enhancing rim bright
    [1.00, 0.62, 0.42, 0.90, 0.85, 0.65],   # T2: CSF bright, WM < GM
    [0.08, 0.62, 0.46, 0.35, 0.95, 0.75],   # FLAIR: CSF suppressed, oedema bright
], dtype=np.float32)
FOV_MM = (240.0, 240.0, 90.0)             # in-plane BraTS field of view; axial slab through the ventricles
FOV_CENTRE = np.array([0.0, -18.0, 18.0])  # MNI mm


def _template_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the BraTS phantom warps nilearn's bundled MNI152 template: pip install nilearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@lru_cache(maxsize=1)
def mni_tissues() -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [3, X, Y, Z] float32 of CSF, GM, WM; the template's voxel -> MNI mm affine)."""
    folder = _template_folder()
    maps = []
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
        maps.append(np.asarray(img.dataobj, dtype=np.float32) / 255.0)
        affine = img.affine
    t1, gm, wm = maps
    brain = (t1 > 0.02).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return np.stack([csf, gm, wm]), affine


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    out = np.eye(3)
    for axis, deg in enumerate(max_deg):
        a = np.deg2rad(rng.uniform(-deg, deg))
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def _tumour(rng: np.random.Generator, world: np.ndarray, tissue: np.ndarray,
            z_range: tuple[float, float] = (0.2, 0.8)) -> np.ndarray:
    """Labels (0/1/2/4) of one irregular tumour in a grid of world coordinates [3, X, Y, Z] (mm)."""
    inside = tissue[1] + tissue[2] > 0.5                 # grey or white matter
    shape = inside.shape
    # centre: a parenchyma voxel of a middle slice range, kept away from the brain edge
    z_ok = np.zeros(shape, bool)
    lo, hi = int(z_range[0] * shape[2]), max(int(z_range[0] * shape[2]) + 1, int(round(z_range[1] * shape[2])))
    z_ok[:, :, lo:hi] = True
    candidates = np.argwhere(inside & z_ok)
    centre = world[(slice(None), *candidates[rng.integers(len(candidates))])]
    radius = rng.uniform(8.0, 28.0)                                         # enhancing outer radius, mm
    axes = radius * rng.uniform(0.6, 1.4, size=3) * np.array([1.0, 1.0, 0.8])
    rot = _rotation(rng, (30.0, 30.0, 180.0))
    rel = np.einsum("ij,j...->i...", rot.T, world - centre[:, None, None, None])
    level = np.sqrt(((rel / axes[:, None, None, None]) ** 2).sum(0))
    lobes = smooth_field(rng, shape[::-1], (3, 4, 4)).transpose(2, 1, 0)    # irregular boundary
    level = level * (1.0 + 0.3 * lobes)
    necrosis = rng.uniform(0.35, 0.75) if radius > 12 else rng.uniform(0.0, 0.5)
    oedema = rng.uniform(1.35, 2.3)
    labels = np.zeros(shape, np.uint8)
    brain = tissue.sum(0) > 0.5
    labels[(level < oedema) & brain] = 2
    labels[(level < 1.0) & brain] = 4
    labels[(level < necrosis) & brain] = 1
    return labels


def brats_phantom(shape: tuple[int, int, int] = (64, 64, 24), seed: int = 0, patient: int = 0,
                  with_tissue: bool = False, anatomy_variation: float = 0.5,
                  tumour_z: tuple[float, float] = (0.45, 0.55)):
    """One patient: ({sequence: float32 volume}, seg uint8 (0/1/2/4), affine), arrays (x, y, z); with
    ``with_tissue`` also the CSF / grey / white matter probabilities [3, x, y, z] of the warped template.
    ``anatomy_variation`` scales the per-patient warp (0: every patient has the template's anatomy);
    ``tumour_z`` is the range of the tumour centre along z (fractions of the slab). The defaults keep the
    best slices of different patients at similar anatomical levels, so that the cue shared by the four
    sequences of a slice is mostly the tumour, not the level of the slice.

    Affine diag(-s, -s, s) (x to the patient's left, y to posterior, z to superior, as in BraTS). The
    sequences are keyed by the 2021 names (t1, t1ce, t2, flair). Deterministic in (seed, patient).
    """
    rng = np.random.default_rng([seed, patient])
    probs, mni_affine = mni_tissues()
    spacing = np.array(FOV_MM) / np.array(shape)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = FOV_CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    world = np.einsum("ij,j...->i...", affine[:3, :3], ijk) + affine[:3, 3, None, None, None]
    # Patient anatomy: MNI warped by a random affine (size, rotation, shift) and a smooth displacement; mild,
    # as BraTS volumes are registered to one atlas (SRI24).
    v = float(anatomy_variation)
    scale = 1.0 + v * rng.uniform(-0.05, 0.05, size=3)
    warp = _rotation(rng, (2.0 * v, 2.0 * v, 4.0 * v)) * scale
    shift = v * rng.uniform(-3, 3, size=3)
    src = np.einsum("ij,j...->i...", warp, world - FOV_CENTRE[:, None, None, None])
    src = src + (FOV_CENTRE + shift)[:, None, None, None]
    for axis in range(3):
        src[axis] += 2.5 * v * smooth_field(rng, shape[::-1], (3, 4, 4)).transpose(2, 1, 0)
    vox = np.einsum("ij,j...->i...", np.linalg.inv(mni_affine)[:3, :3], src)
    vox = vox + np.linalg.inv(mni_affine)[:3, 3, None, None, None]
    tissue = np.stack([map_coordinates(p, vox, order=1, mode="constant", cval=0.0) for p in probs])
    tissue = np.clip(tissue, 0.0, 1.0).astype(np.float32)
    brain = tissue.sum(0) > 0.3
    seg = _tumour(rng, world, tissue, tumour_z)
    # Tissue fractions of each voxel: tumour classes replace the normal tissue they occupy.
    fractions = np.zeros((6, *shape), np.float32)
    fractions[:3] = tissue / np.maximum(tissue.sum(0), 1e-6)
    for k, label in ((3, 1), (4, 2), (5, 4)):
        sel = seg == label
        fractions[:, sel] = 0.0
        fractions[k, sel] = 1.0
    volumes = {}
    for s, name in enumerate(SEQUENCES_2021):
        img = np.einsum("k,k...->...", CONTRAST[s], fractions)
        texture = smooth_field(rng, shape[::-1], (6, 10, 10)).transpose(2, 1, 0)
        bias = 1.0 + 0.12 * smooth_field(rng, shape[::-1], (2, 3, 3)).transpose(2, 1, 0)
        img = img * (1.0 + 0.05 * texture) * bias
        img = blur(img.transpose(2, 0, 1)).transpose(1, 2, 0)
        img = img + rng.normal(0.0, 0.025, size=shape)
        gain = rng.uniform(300.0, 900.0)
        volumes[name] = np.where(brain, np.clip(img, 0.0, None) * gain, 0.0).astype(np.float32)
    seg[~brain] = 0
    return (volumes, seg, affine, tissue) if with_tissue else (volumes, seg, affine)


def case_ids(n_patients: int, seed: int = 0) -> list[int]:
    """Sorted, non-contiguous case numbers (as in BraTS 2021: 00000, 00002, 00003, 00005, ...)."""
    rng = np.random.default_rng([seed, 2021])
    return sorted(int(i) for i in rng.choice(2 * n_patients + 3, size=n_patients, replace=False))


def case_files(root: Path, case: int, naming: str = "2021") -> tuple[Path, dict[str, Path]]:
    """(case folder, {2021 sequence name or 'seg': file}) of case number ``case`` in the given naming."""
    if naming == "2021":
        name = f"BraTS2021_{case:05d}"
        files = {s: f"{name}_{s}.nii.gz" for s in (*SEQUENCES_2021, "seg")}
    elif naming == "2023":
        name = f"BraTS-GLI-{case:05d}-000"
        files = {s: f"{name}-{s23}.nii.gz" for s, s23 in zip((*SEQUENCES_2021, "seg"), (*SEQUENCES_2023, "seg"))}
    else:
        raise ValueError(f"naming={naming!r}: expected '2021' or '2023'")
    folder = root / name
    return folder, {k: folder / v for k, v in files.items()}


def write_brats_phantom(root: str | Path, n_patients: int = 60, shape: tuple[int, int, int] = (64, 64, 24),
                        seed: int = 0, naming: str = "2021", anatomy_variation: float = 0.5,
                        tumour_z: tuple[float, float] = (0.45, 0.55)) -> Path:
    """Write ``n_patients`` synthetic cases under ``root`` in the BraTS layout; returns ``root``.

    Images are int16 (like the released files), the segmentation uint8 with labels 0/1/2/4 (2023 naming:
    0/1/2/3, enhancing tumour = 3).
    """
    root = Path(root)
    if n_patients < 1:
        raise ValueError(f"n_patients={n_patients}: expected >= 1")
    for case in case_ids(n_patients, seed):
        volumes, seg, affine = brats_phantom(tuple(shape), seed, case, anatomy_variation=anatomy_variation,
                                             tumour_z=tumour_z)
        folder, files = case_files(root, case, naming)
        folder.mkdir(parents=True, exist_ok=True)
        for name, vol in volumes.items():
            img = nib.Nifti1Image(np.rint(vol).astype(np.int16), affine)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(files[name]))
        if naming == "2023":
            seg = np.where(seg == 4, 3, seg).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, affine), str(files["seg"]))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="output folder (e.g. data/phantom/BraTS2021)")
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 24))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naming", choices=("2021", "2023"), default="2021")
    args = parser.parse_args(argv)
    write_brats_phantom(args.root, args.patients, tuple(args.shape), args.seed, args.naming)
    print(f"wrote {args.patients} synthetic BraTS cases to {args.root}")


if __name__ == "__main__":
    main()
