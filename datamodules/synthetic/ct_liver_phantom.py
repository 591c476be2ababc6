"""Tiny synthetic copy of the Medical Segmentation Decathlon Task03_Liver dataset (abdominal CT phantoms).

Writes the real layout (``dataset.json``, ``imagesTr/liver_N.nii.gz``, ``labelsTr/``, ``imagesTs/``, plus the
macOS ``._*`` junk files the real archive holds) with gzip NIfTI volumes in true Hounsfield units: air
-1000, subcutaneous fat ~-100, muscle ~45, contrast-enhanced liver 60-110 (label 1) with hypodense lesions
20-40 HU (label 2), kidneys 150-200, spleen 100-130, aorta, vertebrae 450-900, ribs, stomach, lung bases,
bowel loops with gas. Anatomy varies per patient and along z; the liver fills a band of about half the
slices, while the other organs vary independently of it, so "slice contains liver" (the relevance label
of Wickstrøm et al. 2022) has to be learnt from the liver itself.

Array axes are (x, y, z) with affine diag(-sx, -sy, sz): x runs to the patient's left, y to posterior, z
to superior, so ``volume[:, :, z].T`` is an axial slice in radiological display (patient's right = image
left, anterior up). Same seed -> byte-identical arrays.

Command: ``python -m datamodules.synthetic.ct_liver_phantom --root data/phantom/Task03_Liver --volumes 16``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules.synthetic.shapes import blur, ellipse, smooth_field

LABELS = {"0": "background", "1": "liver", "2": "cancer"}
# AppleDouble header of the macOS "._*" resource-fork files found in the real Task03_Liver archive.
_APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4070)


def _zcol(v):
    """Per-slice values as a (Z, 1, 1) column for broadcasting against (Z, H, W) grids."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _band(t, lo, hi, peak=0.5):
    """Cross-section profile of an organ spanning lo < t < hi along z: 0 outside, 1 at ``peak`` (fraction)."""
    s = np.clip((t - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    gamma = np.log(0.5) / np.log(peak)
    return np.sin(np.pi * s ** gamma) ** 0.6 * ((t > lo) & (t < hi))


def liver_phantom(shape: tuple[int, int, int] = (64, 64, 40), seed: int = 0, patient: int = 0,
                  vary_extent: bool = True):
    """One abdominal CT phantom: (image int16 HU, label uint8, affine), arrays shaped ``shape`` = (x, y, z).

    Drawn in display coordinates (rows anterior -> posterior, columns patient right -> left), then
    transposed to the NIfTI (x, y, z) array. Deterministic in (seed, patient). With ``vary_extent`` (default)
    the number of slices (0.7-1.3 x shape[2]) and the body range the scan covers vary per patient, so the
    slice index alone does not tell where the liver is.
    """
    rng = np.random.default_rng([seed, patient])
    nx, ny, nz = shape
    u = rng.uniform
    if vary_extent:  # scans differ in length and in where they start and stop along the body
        nz = max(8, int(round(nz * u(0.7, 1.3))))
        t0, t1 = u(-0.2, 0.12), u(0.88, 1.2)
    else:
        t0, t1 = 0.0, 1.0
    t = t0 + (t1 - t0) * (np.arange(nz) + 0.5) / nz  # body level: 0 = inferior (pelvis side), 1 = diaphragm
    tz = _zcol(t)
    y, x = np.meshgrid((np.arange(ny) + 0.5) / ny * 2 - 1, (np.arange(nx) + 0.5) / nx * 2 - 1, indexing="ij")
    # x: -1 patient's right (image left) .. +1 left; y: -1 anterior (top) .. +1 posterior
    x, y = x[None].astype(np.float32), y[None].astype(np.float32)
    img = np.full((nz, ny, nx), -1000.0)
    liver = np.zeros(img.shape, bool)
    lesion = np.zeros(img.shape, bool)
    field = smooth_field(rng, img.shape)

    # Body: ellipse flatter posteriorly (supine patient), size breathing slowly along z.
    ax = _zcol(u(0.62, 0.94) * (1 + 0.04 * np.sin(2 * np.pi * (t * u(0.5, 1.5) + u(0, 1)))))
    by = _zcol(np.full(nz, u(0.45, 0.74)))  # body size varies per patient (slim to large)
    bx0, by0 = u(-0.04, 0.04), u(0.0, 0.06)
    byy = np.where(y > by0, by * 0.92, by)
    body = ellipse(x, y, bx0, by0, ax, byy) < 1
    fat, wall = u(0.05, 0.12), u(0.035, 0.055)
    muscle = ellipse(x, y, bx0, by0, ax - fat, byy - fat) < 1
    cavity = ellipse(x, y, bx0, by0, ax - fat - wall, byy - fat - wall) < 1
    img[body] = -100 + 8 * field[body]
    img[muscle] = 45
    img[cavity] = (-85 + 25 * field + 25 * smooth_field(rng, img.shape, (6, 9, 9)))[cavity]

    # Liver band along z (about half the slices) and lung bases from just below the dome upwards.
    lc, lh = u(0.45, 0.72), u(0.16, 0.3)  # liver height and extent vary per patient
    lo, hi = lc - lh, lc + lh
    lung_lo = hi - u(0.04, 0.14)
    lprof = _zcol(np.sqrt(np.clip((t - lung_lo) / 0.25, 0, 1)))
    for side in (-1, 1):
        lung = ellipse(x, y, bx0 + side * 0.5 * ax, by0 + 0.12 * by, 0.36 * ax * lprof, 0.6 * by * lprof) < 1
        img[lung & cavity] = (-860 + 40 * field)[lung & cavity]

    # Spine geometry (painted last, over everything): vertebral body, canal, posterior elements.
    sx, sy, rv = bx0 + u(-0.02, 0.02), by0 + 0.58 * by - u(0.1, 0.16), u(0.09, 0.12)
    canal_y = sy + 1.45 * rv
    vert = ellipse(x, y, sx, sy, rv, 0.9 * rv)
    lamina = ellipse(x, y, sx, canal_y, 0.85 * rv, 0.75 * rv) < 1
    spinous = ellipse(x, y, sx, canal_y + 0.9 * rv, 0.25 * rv, 0.7 * rv) < 1
    canal = ellipse(x, y, sx, canal_y, 0.45 * rv, 0.4 * rv) < 1
    bone = (vert < 1) | lamina | spinous
    for side in (-1, 1):  # paraspinal muscles
        img[ellipse(x, y, sx + side * 1.9 * rv, canal_y + 0.5 * rv, 1.1 * rv, 1.3 * rv) < 1] = 50
    psoas = _zcol(_band(t, -0.3, u(0.4, 0.6), 0.2))
    for side in (-1, 1):
        img[ellipse(x, y, sx + side * 1.7 * rv, sy - 0.1, 0.9 * rv * psoas, 1.1 * rv * psoas) < 1] = 48

    # Bowel loops with gas pockets in the lower abdomen (top of the band varies independently of the liver).
    bowel_top = u(0.3, 0.65)
    for _ in range(rng.integers(6, 13)):
        cx, cy, r = u(-0.55, 0.55) * ax.mean(), u(-0.55, 0.3) * by.mean(), u(0.06, 0.11)
        tc, hz = u(0, bowel_top), u(0.06, 0.2)
        prof = _zcol(_band(t, tc - hz, tc + hz))
        wander = cx + 0.1 * np.sin(6 * tz + cx * 9)
        loop = (ellipse(x, y, wander, cy, r * prof, 0.8 * r * prof) < 1) & cavity
        img[loop] = 40
        content = (ellipse(x, y, wander, cy, 0.7 * r * prof, 0.55 * r * prof) < 1) & cavity
        if u() < 0.45:  # gas floats anteriorly (up) above the fluid level
            gas = np.broadcast_to(y < cy + u(-0.2, 1.0) * 0.5 * r, img.shape)
            img[content] = np.where(gas, -1000, u(5, 35))[content]
        else:
            img[content] = u(10, 40)

    # Stomach (patient's left, anterior) with an air-fluid level, upper abdomen.
    tc = u(0.55, 0.9)
    prof = _zcol(_band(t, tc - u(0.12, 0.2), tc + u(0.1, 0.2)))
    gcx, gcy, ga, gb = bx0 + u(0.15, 0.35), by0 - u(0.25, 0.4), u(0.14, 0.22), u(0.12, 0.18)
    img[(ellipse(x, y, gcx, gcy, ga * prof, gb * prof) < 1) & cavity] = 42
    lumen = (ellipse(x, y, gcx, gcy, 0.75 * ga * prof, 0.7 * gb * prof) < 1) & cavity
    img[lumen] = np.where(np.broadcast_to(y < gcy - u(0.0, 0.6) * gb, img.shape), -1000, u(15, 35))[lumen]

    # Kidneys (bilateral, posterior; the right one lower) with a hypodense renal sinus.
    kc = u(0.28, 0.45)
    for side in (-1, 1):
        c = kc + (-0.04 if side < 0 else 0.0) + u(-0.03, 0.03)
        prof = _zcol(_band(t, c - u(0.12, 0.18), c + u(0.12, 0.18)))
        kx, ky = sx + side * u(0.24, 0.32), sy - u(0.0, 0.08)
        ka, kb = u(0.08, 0.11), u(0.11, 0.15)
        img[ellipse(x, y, kx, ky, ka * prof, kb * prof) < 1] = u(150, 200)
        sinus = ellipse(x, y, kx - side * 0.35 * ka, ky, 0.4 * ka * prof, 0.45 * kb * prof) < 1
        sinus &= prof > 0.6
        img[sinus] = u(-40, 10)

    # Spleen (patient's left = image right, posterolateral); its z band is independent of the liver's.
    c = u(0.45, 0.8)
    prof = _zcol(_band(t, c - u(0.1, 0.18), c + u(0.1, 0.18)))
    spleen = ellipse(x, y, bx0 + ax * u(0.45, 0.6), by0 + by * u(0.1, 0.3), u(0.1, 0.16) * prof,
                      u(0.16, 0.24) * prof) < 1
    img[spleen & cavity] = u(100, 130)

    # Aorta (left of midline) and inferior vena cava (right), anterior to the spine.
    img[ellipse(x, y, sx + 0.07, sy - rv - 0.08, 0.05, 0.05) < 1] = u(150, 200)
    img[ellipse(x, y, sx - 0.13, sy - rv - 0.07, 0.06, 0.045) < 1] = u(100, 130)

    # Liver (right lobe hugging the right body wall, left lobe across the midline in the upper part).
    prof = _zcol(_band(t, lo, hi, peak=u(0.55, 0.75)))
    lx, ly = bx0 - ax * u(0.28, 0.42), by0 - by * u(0.05, 0.2)
    la, lb = ax * u(0.38, 0.5), by * u(0.55, 0.75)
    theta = np.arctan2(y - ly, x - lx)
    wobble = 1 + u(0.03, 0.1) * np.sin(2 * theta + u(0, 6)) + u(0.02, 0.06) * np.sin(3 * theta + u(0, 6))
    liver |= ellipse(x, y, lx, ly, la * prof, lb * prof) < wobble ** 2
    left_lobe = _zcol(np.clip((t - lo - u(0.3, 0.6) * (hi - lo)) / 0.15, 0, 1)) * prof
    liver |= ellipse(x, y, bx0 + ax * u(-0.05, 0.12), by0 - by * u(0.35, 0.5), ax * u(0.2, 0.32) * left_lobe,
                      by * u(0.14, 0.22) * left_lobe) < 1
    liver &= cavity & ~bone
    liver_hu = u(70, 100)
    img[liver] = (liver_hu + 8 * smooth_field(rng, img.shape, (5, 8, 8)))[liver]
    for _ in range(rng.integers(2, 5)):  # enhancing portal/hepatic vessels, labelled liver as in LiTS
        vx = lx + u(-0.5, 0.5) * la + u(-0.1, 0.1) * tz
        vy = ly + u(-0.5, 0.5) * lb + u(-0.1, 0.1) * tz
        img[liver & (ellipse(x, y, vx, vy, 0.035, 0.035) < 1)] = liver_hu + u(50, 80)

    # Hypodense lesions (label 2), 0-4 per patient, inside the liver.
    for _ in range(rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1])):
        zs = np.flatnonzero(liver.any(axis=(1, 2)))
        if zs.size == 0:
            break
        zc = int(rng.choice(zs))
        rows, cols = np.nonzero(liver[zc])
        k = rng.integers(len(rows))
        cy, cx = y[0, rows[k], cols[k]], x[0, rows[k], cols[k]]
        r, rz = u(0.05, 0.13), u(0.04, 0.1)
        lesion |= liver & (((x - cx) ** 2 + (y - cy) ** 2) / r ** 2 + ((tz - t[zc]) / rz) ** 2 < 1)
    img[lesion] = (u(20, 40) + 5 * field)[lesion]

    # Bone: vertebra (cancellous ~450, cortex ~850), posterior elements, spinal canal (CSF).
    img[vert < 1] = u(420, 520) + 20 * field[vert < 1]
    img[(vert < 1) & (vert > 0.55)] = u(800, 950)
    img[lamina | spinous] = u(650, 800)
    img[canal] = 15
    # Ribs: small bright ellipses under the body wall in the upper slices, drifting along z (oblique ribs).
    rib_lo = u(0.45, 0.62)
    for angle in np.concatenate([u(0.15, 0.95, 3) * np.pi, u(0.15, 0.95, 3) * np.pi + np.pi]):
        start = rib_lo + u(0, 0.15)
        ang = angle + 0.8 * (tz - start)
        rx = bx0 + (ax - fat - 0.5 * wall) * np.cos(ang)
        ry = by0 + (by - fat - 0.5 * wall) * np.sin(ang)
        img[(ellipse(x, y, rx, ry, 0.045, 0.035) < 1) & (tz > start)] = u(600, 850)

    img = blur(img) + rng.normal(0.0, u(10, 15), img.shape)
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16).transpose(2, 1, 0)
    label = (liver.astype(np.uint8) + lesion.astype(np.uint8)).transpose(2, 1, 0)
    spacing = (u(0.7, 1.0),) * 2 + (float(rng.choice([2.5, 3.0, 5.0])),)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (spacing[0] * nx / 2, spacing[1] * ny / 2, -spacing[2] * nz * u(0.3, 0.7))
    return np.ascontiguousarray(image), np.ascontiguousarray(label), affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def write_liver_phantom(root: str | Path, n_volumes: int = 16, n_test_volumes: int = 2,
                        shape: tuple[int, int, int] = (64, 64, 40), seed: int = 0) -> Path:
    """Write a tiny Task03_Liver-format dataset at ``root`` (the ``Task03_Liver`` folder) and return it.

    Training volumes are ``liver_0 .. liver_{n_volumes-1}`` (images + labels), test volumes continue after a
    gap as in the real archive (131 training, test from ``liver_132``). Deterministic in ``seed``.
    """
    if n_volumes < 1 or min(shape) < 8:
        raise ValueError(f"n_volumes={n_volumes}, shape={shape}: need >= 1 volume and every side >= 8 voxels")
    root = Path(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for n in range(n_volumes):
        image, label, affine = liver_phantom(shape, seed, n)
        _save(image, affine, root / "imagesTr" / f"liver_{n}.nii.gz")
        _save(label, affine, root / "labelsTr" / f"liver_{n}.nii.gz")
        training.append({"image": f"./imagesTr/liver_{n}.nii.gz", "label": f"./labelsTr/liver_{n}.nii.gz"})
    for m in range(n_volumes + 1, n_volumes + 1 + n_test_volumes):
        image, _, affine = liver_phantom(shape, seed, m)
        _save(image, affine, root / "imagesTs" / f"liver_{m}.nii.gz")
        test.append(f"./imagesTs/liver_{m}.nii.gz")
    for sub in ("imagesTr", "labelsTr"):
        (root / sub / "._liver_0.nii.gz").write_bytes(_APPLE_DOUBLE)
    meta = {
        "name": "LiTS",
        "description": "Liver and liver tumor segmentation (SYNTHETIC PHANTOM, not patient data)",
        "reference": "Synthetic copy written by datamodules.synthetic.ct_liver_phantom",
        "licence": "CC-BY-SA 4.0",
        "release": f"synthetic seed={seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": n_volumes,
        "numTest": n_test_volumes,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic Task03_Liver (CT liver phantom) dataset.")
    parser.add_argument("--root", default="data/phantom/Task03_Liver", help="Task03_Liver folder to write")
    parser.add_argument("--volumes", type=int, default=16, help="labelled training volumes")
    parser.add_argument("--test-volumes", type=int, default=2, help="unlabelled imagesTs volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 40), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_liver_phantom(args.root, args.volumes, args.test_volumes, tuple(args.shape), args.seed)
    print(f"wrote synthetic Task03_Liver phantom ({args.volumes} + {args.test_volumes} volumes) to {root}")


if __name__ == "__main__":
    main()
