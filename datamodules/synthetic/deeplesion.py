"""Tiny synthetic copy of NIH DeepLesion (Yan et al. 2018): ``DL_info.csv`` + 16-bit PNG key slices.

Writes the real layout: ``DL_info.csv`` with all 18 columns (multi-value fields as quoted ``"a, b, ..."``
lists) and ``Images_png/<patient>_<study>_<series>/<slice>.png``, 16-bit grey, value = HU + 32768. Only the
key slices are written (the real folders also hold the neighbouring slices of ``Slice_range``).

Each patient (own body size, field of view, organ extents) has a few lesions that recur in each of their
studies (follow-up: size and position change a little), sometimes two on one key slice. The axial slice is
drawn at the lesion's body level in true HU (air -1000, fat -100, muscle 45, enhanced liver 60-110,
kidneys 150-200, blood pool 130-250, bone 300-950, lungs -850 with vessels) in radiological display
(anterior up, patient's right on the image left). The eight coarse types differ the way real ones do:

1 bone: lytic (20-90 HU) or sclerotic (900-1400 HU) lesion inside a vertebra, rib or iliac bone;
2 abdomen: node / mass 25-60 HU in mesenteric or retroperitoneal fat among bowel, pancreas, aorta;
3 mediastinum: node 30-55 HU in mediastinal fat between the lungs, next to the aorta, heart, trachea;
4 liver: hypodense (15-60 HU, or a 0-15 HU cyst, some rim-enhancing) inside the enhanced liver;
5 lung: solid 10-60 HU nodule in aerated lung (some spiculated or cavitating);
6 kidney: cyst (0-20 HU) or solid mass (30-90 HU), often exophytic, in an enhancing kidney;
7 soft tissue: 25-60 HU mass in subcutaneous fat or body-wall muscle (often near the image border);
8 pelvis: mass or node (some cystic) among bladder, rectum, iliac vessels and pelvic bones.

Splits are by patient (Train_Val_Test 1 / 2 / 3, about 60 / 20 / 20 %, stratified by type so that val and
test hold every type; real: 70 / 15 / 15 %); as in the real data the training split is
unlabelled (Coarse_lesion_type -1; ``unlabelled_fraction``) and only val and test carry lesion types. The type is in the
lesion and its surroundings only: file names, positions and slice numbers do not encode it.
Same seed -> byte-identical files.

Command: ``python -m datamodules.synthetic.deeplesion --root data/phantom/DeepLesion --seed 0``
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from datamodules.synthetic.shapes import blur, ellipse, smooth_field

HU_OFFSET = 32768  # DeepLesion PNG value = HU + 32768
DL_INFO_COLUMNS = ("File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
                   "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
                   "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
                   "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
                   "Train_Val_Test")
LESION_TYPES = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney",
                7: "soft tissue", 8: "pelvis"}
# Share of each type among the labelled real lesions (Yan et al. 2018, Fig. 4), mixed 50 / 50 with uniform.
_REAL_SHARE = np.array([494, 2166, 1638, 1284, 2394, 490, 657, 661], float)
TYPE_PROBS = 0.5 * _REAL_SHARE / _REAL_SHARE.sum() + 0.5 / 8
# Body level of a type (0 = femoral heads, 1 = thoracic inlet) and the region its lesions sit in.
_LEVELS = {1: (0.05, 0.95), 2: (0.34, 0.56), 3: (0.82, 0.96), 4: (0.58, 0.72), 5: (0.78, 0.97),
           6: (0.4, 0.56), 7: (0.08, 0.95), 8: (0.03, 0.16)}
_SIZE_MM = {1: (12, 50), 2: (12, 55), 3: (12, 40), 4: (10, 70), 5: (8, 35), 6: (12, 55), 7: (15, 60),
            8: (15, 80)}  # long diameter, log-uniform
_COMPANIONS = {1: [1, 7], 2: [1, 7, 2], 3: [1, 7, 5, 3], 4: [1, 7, 2, 4], 5: [1, 7, 5, 3], 6: [1, 7, 2, 6],
               7: [1, 7], 8: [1, 7, 8]}  # types found at the level of the first lesion of a key slice
_SLICE_MM = 600.0  # body length covered by a chest-abdomen-pelvis series


def format_list(values, fmt: str = "{:.6g}") -> str:
    """A multi-value DL_info.csv field: ``"x1, y1, x2, y2"`` (the csv writer adds the quotes)."""
    return ", ".join(fmt.format(v) for v in values)


def write_hu_png(path: str | Path, hu: np.ndarray) -> None:
    """Write a 2-D HU image as a DeepLesion 16-bit grey PNG (value = HU + 32768, clipped to uint16)."""
    value = np.clip(np.rint(np.asarray(hu, np.float64)) + HU_OFFSET, 0, 65535).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(value).save(path, format="PNG", compress_level=1)


@dataclass
class _Lesion:
    """One lesion of a patient, followed across studies (type, body level, size, look, anchor position)."""

    kind: int
    level: float
    size_mm: float
    aspect: float
    angle: float
    look: float  # variant selector in [0, 1)
    hu: float
    anchor: tuple[float, float] | None = None


@dataclass
class _Patient:
    """Patient-specific anatomy: body ellipse, field of view, organ levels and intensities."""

    index: int
    rng_seed: tuple[int, ...]
    fov_mm: float
    ax: float
    by: float
    fat: float
    liver_hu: float
    kidney_hu: float
    kidney_level: float
    lung_base: float
    female: bool
    age: int
    lesions: list[_Lesion] = field(default_factory=list)


def _rot_ellipse(x, y, cx, cy, a, b, angle):
    """Level of a rotated ellipse (< 1 inside)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / max(a, 1e-6)) ** 2 + (v / max(b, 1e-6)) ** 2


def _segment(x, y, p0, p1, width: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels within ``width`` of the segment p0 -> p1 (normalised units), as (window, mask in the window)."""
    n = x.shape[0]
    lo = np.floor((np.minimum(p0, p1) - width + 1) * n / 2).astype(int).clip(0, n)
    hi = np.ceil((np.maximum(p0, p1) + width + 1) * n / 2).astype(int).clip(0, n) + 1
    win = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    xs, ys, d = x[win], y[win], np.subtract(p1, p0)
    t = np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return win, np.hypot(xs - p0[0] - t * d[0], ys - p0[1] - t * d[1]) < width


def _vessel_tree(img, x, y, inside, start, angle: float, length: float, width: float, depth: int, rng):
    """Paint a branching vessel (soft tissue in aerated lung): a segment, then two thinner children."""
    end = start + length * np.array([math.cos(angle), math.sin(angle)])
    win, near = _segment(x, y, start, end, width)
    img[win][near & inside[win]] = rng.uniform(0, 60)
    if depth > 1:
        for turn in (-1, 1):
            _vessel_tree(img, x, y, inside, end, angle + turn * rng.uniform(0.25, 0.6),
                         length * rng.uniform(0.6, 0.85), width * 0.7, depth - 1, rng)


def _band(t: float, lo: float, hi: float) -> float:
    """Cross-section of an organ spanning levels lo..hi: 0 outside, 1 in the middle."""
    return float(np.sin(np.pi * np.clip((t - lo) / (hi - lo), 0, 1)) ** 0.5)


def _anatomy(p: _Patient, t: float, n: int, rng: np.random.Generator):
    """Axial slice at body level ``t`` (HU, float) and region masks where lesions of each type may sit."""
    u = rng.uniform
    y, x = np.meshgrid((np.arange(n) + 0.5) / n * 2 - 1, (np.arange(n) + 0.5) / n * 2 - 1, indexing="ij")
    tex = smooth_field(rng, (1, n, n), (2, 7, 7))[0]
    img = np.full((n, n), -1000.0)
    chest, pelvis = t > p.lung_base - 0.04, t < 0.26
    ax = p.ax * (1.04 if pelvis else 1.0) * (0.97 + 0.03 * math.cos(6 * t))
    by = p.by * (0.92 if chest else 1.0)
    bx0, by0 = u(-0.02, 0.02), u(0.02, 0.06)
    byy = np.where(y > by0, by * 0.93, by)
    body = ellipse(x, y, bx0, by0, ax, byy) < 1
    wall = ellipse(x, y, bx0, by0, ax - p.fat, byy - p.fat) < 1
    cavity = ellipse(x, y, bx0, by0, ax - p.fat - 0.06, byy - p.fat - 0.06) < 1
    img[body] = (-105 + 10 * tex)[body]
    img[wall] = 45 + 4 * tex[wall]
    img[cavity] = (-90 + 20 * tex)[cavity]
    regions = {"soft tissue": body & ~cavity}
    bone = np.zeros((n, n), bool)
    # Spine: vertebral body + posterior elements (sacrum in the pelvis), paraspinal muscles.
    rv = 0.085 if chest else 0.1
    sx, sy = bx0, by0 + 0.58 * by - 0.14
    if t > 0.2:
        for side in (-1, 1):
            img[ellipse(x, y, sx + side * 1.9 * rv, sy + 1.9 * rv, 1.2 * rv, 1.2 * rv) < 1] = 50
        vert = ellipse(x, y, sx, sy, rv, 0.9 * rv)
        post = (ellipse(x, y, sx, sy + 1.5 * rv, 0.8 * rv, 0.7 * rv) < 1) | (
            ellipse(x, y, sx, sy + 2.3 * rv, 0.22 * rv, 0.6 * rv) < 1)
        img[post] = 700
        img[vert < 1] = 420 + 25 * tex[vert < 1]
        img[(vert < 1) & (vert > 0.6)] = 850
        img[ellipse(x, y, sx, sy + 1.45 * rv, 0.42 * rv, 0.38 * rv) < 1] = 15  # spinal canal
        regions["bone"] = vert < 0.75
        bone |= (vert < 1) | post
    # Chest: lungs with vessels, mediastinum (fat, heart, aorta, trachea), ribs.
    lung = np.zeros((n, n), bool)
    if chest:
        grow = float(np.clip((t - p.lung_base + 0.04) / 0.12, 0.25, 1))
        for side in (-1, 1):
            lx = bx0 + side * 0.46 * ax
            lung |= (ellipse(x, y, lx, by0 - 0.03, 0.34 * ax * grow, 0.66 * by * grow) < 1) & cavity
        heart = _band(t, p.lung_base - 0.02, p.lung_base + 0.17)
        med = (np.abs(x - bx0) < 0.2 * ax) & cavity & (y < sy - rv)
        lung &= ~med & ~(ellipse(x, y, bx0 + 0.12, by0 - 0.15 * by, 0.34 * ax * heart, 0.42 * by * heart)
                         < 1)
        img[lung] = -860 + 25 * tex[lung]
        for side in (-1, 1):  # pulmonary vessel trees from the hila, and vessels cut across
            hilum = np.array([bx0 + side * 0.17 * ax, by0 - 0.02])
            for _ in range(3):
                _vessel_tree(img, x, y, lung, hilum, u(-1.3, 1.3) + (0 if side > 0 else math.pi), 0.16, 0.018,
                             3, rng)
        for _ in range(12):
            r = u(0.008, 0.018)
            img[(ellipse(x, y, u(-0.9, 0.9) * ax, by0 + u(-0.6, 0.6) * by, r, r) < 1) & lung] = u(-100, 40)
        fat_med = med & ~lung
        img[fat_med] = (-95 + 15 * tex)[fat_med]
        if heart > 0:
            hrt = ellipse(x, y, bx0 + 0.12, by0 - 0.15 * by, 0.3 * ax * heart, 0.38 * by * heart) < 1
            img[hrt & cavity & ~lung] = 45
            img[(ellipse(x, y, bx0 + 0.1, by0 - 0.13 * by, 0.2 * ax * heart, 0.27 * by * heart) < 1)
                & ~lung] = u(130, 200)
        aorta_r = 0.055
        img[ellipse(x, y, sx + 0.11, sy - rv - 0.05, aorta_r, aorta_r) < 1] = u(150, 250)  # descending
        if t > p.lung_base + 0.14:
            img[ellipse(x, y, bx0 - 0.05, by0 - 0.3 * by, 0.07, 0.07) < 1] = u(150, 250)  # ascending
            img[ellipse(x, y, bx0 + 0.05, by0 - 0.38 * by, 0.06, 0.05) < 1] = u(130, 200)  # pulmonary trunk
            img[ellipse(x, y, bx0, sy - rv - 0.2, 0.05, 0.05) < 1] = -1000  # trachea
            img[ellipse(x, y, sx + 0.02, sy - rv - 0.05, 0.025, 0.025) < 1] = 40  # oesophagus
    # Ribs (chest and upper abdomen), just inside the body wall.
    ribs = np.zeros((n, n), bool)
    if t > 0.5:
        for k in range(10):
            ang = (0.12 + 0.76 * k / 9) * math.pi * (1 if k % 2 else -1) + u(-0.06, 0.06)
            ang = ang + math.pi if k % 2 == 0 else ang
            rx = bx0 + (ax - p.fat - 0.03) * math.cos(ang)
            ry = by0 + (by - p.fat - 0.03) * math.sin(ang)
            rib = ellipse(x, y, rx, ry, 0.04, 0.03) < 1
            img[rib] = u(600, 850)
            img[ellipse(x, y, rx, ry, 0.022, 0.015) < 1] = 250
            ribs |= rib
        bone |= ribs
    # Upper abdomen: liver (right), stomach and spleen (left), pancreas, kidneys, aorta and IVC.
    liver_p = _band(t, 0.5, p.lung_base + 0.08)
    if liver_p > 0:
        lobe = (0.4 * ax * liver_p, 0.62 * by * liver_p)  # right lobe, then the left lobe across the midline
        liver = ellipse(x, y, bx0 - 0.42 * ax, by0 - 0.06 * by, *lobe) < 1
        left = (0.26 * ax * liver_p ** 2, 0.17 * by * liver_p)
        liver |= ellipse(x, y, bx0 - 0.05, by0 - 0.45 * by, *left) < 1
        liver &= cavity & ~bone
        img[liver] = (p.liver_hu + 8 * tex)[liver]
        for _ in range(4):  # portal / hepatic vessels
            vx, vy = bx0 - 0.42 * ax + u(-0.2, 0.15), by0 - 0.06 * by + u(-0.3, 0.3)
            img[liver & (ellipse(x, y, vx, vy, 0.03, 0.03) < 1)] = p.liver_hu + u(40, 70)
        lung &= ~liver
    stomach = _band(t, 0.55, p.lung_base + 0.04)
    if stomach > 0:
        st = ellipse(x, y, bx0 + 0.35 * ax, by0 - 0.35 * by, 0.22 * stomach, 0.17 * stomach) < 1
        img[st & cavity] = 40
        lumen = (ellipse(x, y, bx0 + 0.35 * ax, by0 - 0.35 * by, 0.16 * stomach, 0.12 * stomach) < 1)
        img[lumen & cavity] = np.where(y < by0 - 0.38 * by, -1000, 20)[lumen & cavity]
        spl = ellipse(x, y, bx0 + 0.55 * ax, by0 + 0.25 * by, 0.14 * stomach, 0.22 * stomach) < 1
        img[spl & cavity] = p.liver_hu + 25
    if 0.46 < t < 0.62:
        img[(_rot_ellipse(x, y, bx0 + 0.08, sy - rv - 0.2, 0.3, 0.06, -0.3) < 1) & cavity] = 45  # pancreas
    kid = _band(t, p.kidney_level - 0.12, p.kidney_level + 0.12)
    kidney = np.zeros((n, n), bool)
    if kid > 0:
        for side in (-1, 1):
            kx, ky = sx + side * 0.3, sy - 0.04
            k = ellipse(x, y, kx, ky, 0.1 * kid, 0.14 * kid) < 1
            kidney |= k
            img[k] = p.kidney_hu + 10 * tex[k]
            img[k & (ellipse(x, y, kx - side * 0.04, ky, 0.04 * kid, 0.06 * kid) < 1)] = u(-30, 10)
    if not chest and t > 0.24:
        img[ellipse(x, y, sx + 0.08, sy - rv - 0.06, 0.05, 0.05) < 1] = u(150, 250)  # aorta
        img[ellipse(x, y, sx - 0.1, sy - rv - 0.05, 0.06, 0.045) < 1] = u(100, 150)  # IVC
        for side in (-1, 1):  # psoas
            img[ellipse(x, y, sx + side * 0.16, sy + 0.01, 0.06 + 0.1 * (0.5 - t), 0.07) < 1] = 48
    # Bowel loops and colon with gas (lower abdomen and pelvis).
    if t < 0.6:
        for _ in range(rng.integers(6, 12)):
            cx, cy, r = bx0 + u(-0.55, 0.55) * ax, by0 + u(-0.6, 0.25) * by, u(0.05, 0.09)
            loop = (ellipse(x, y, cx, cy, r, 0.85 * r) < 1) & cavity & (img < 0) & ~bone
            img[loop] = 40
            inner = loop & (ellipse(x, y, cx, cy, 0.7 * r, 0.6 * r) < 1)
            img[inner] = -1000 if u() < 0.35 else u(5, 30)
    # Pelvis: iliac bones, sacrum, femoral heads, bladder, rectum, uterus / prostate, iliac vessels.
    if pelvis:
        for side in (-1, 1):
            if t > 0.1:
                il = _rot_ellipse(x, y, bx0 + side * 0.5 * ax, by0 + 0.15 * by, 0.075, 0.36 * by, side * 0.45)
                img[il < 1] = 700
                img[il < 0.45] = 280 + 20 * tex[il < 0.45]
                bone |= il < 1
            else:
                fh = ellipse(x, y, bx0 + side * 0.5 * ax, by0 + 0.05, 0.11, 0.11)
                img[fh < 1] = 750
                img[fh < 0.6] = 300
                bone |= fh < 1
            gluteal = ellipse(x, y, bx0 + side * 0.42 * ax, by0 + 0.55 * by, 0.2, 0.12) < 1
            img[gluteal & wall] = 50
            img[ellipse(x, y, bx0 + side * 0.3 * ax, by0 - 0.15 * by, 0.035, 0.035) < 1] = u(150, 220)
        if t > 0.08:
            sac = ellipse(x, y, bx0, by0 + 0.55 * by, 0.16, 0.09)
            img[sac < 1] = 650
            img[sac < 0.6] = 300
            bone |= sac < 1
        bl = _band(t, -0.15, 0.22)
        if bl > 0:
            img[(ellipse(x, y, bx0, by0 - 0.3 * by, 0.24 * bl, 0.2 * bl) < 1) & cavity] = u(5, 15)  # bladder
        img[ellipse(x, y, bx0, by0 + 0.08 * by + 0.2, 0.1, 0.07) < 1] = 45 if p.female else 40
        rect = ellipse(x, y, bx0, by0 + 0.3 * by + 0.1, 0.06, 0.05)
        img[rect < 1] = 40
        img[rect < 0.4] = -1000
        regions["pelvis"] = cavity & (img < -40) & ~bone
        regions["bone"] = bone & (img > 200) & (img < 400)
    # Where lesions of each type may sit, from the finished slice.
    if chest:
        regions["lung"] = lung & (img < -600)
        regions["mediastinum"] = fat_med & (img < -50)
    else:
        fat = cavity & (img < -50) & ~bone  # mesenteric / retroperitoneal fat
        regions["abdomen"] = ndi.binary_erosion(fat, iterations=1) if t > 0.2 else None
    if liver_p > 0:
        regions["liver"] = liver & (np.abs(img - p.liver_hu) < 40)
    if kid > 0:
        regions["kidney"] = kidney & (img > 100)
    if ribs.any():
        regions["rib"] = ribs & (img > 200)
    return img, {k: v for k, v in regions.items() if v is not None and v.any()}, body


def _lesion_region(kind: int, regions: dict, rng: np.random.Generator) -> np.ndarray | None:
    if kind == 1:
        names = [k for k in ("bone", "rib") if k in regions]
        return regions[names[int(rng.integers(len(names)))]] if names else None
    return regions.get(LESION_TYPES[kind])


def _draw_lesion(img, lesion: _Lesion, regions, spacing: float, rng, x, y, tex):
    """Paint one lesion; returns its pixel mask (empty when the slice has no room for it)."""
    n = img.shape[0]
    region = _lesion_region(lesion.kind, regions, rng)
    if region is None:
        return np.zeros(img.shape, bool)
    a = lesion.size_mm / 2 / spacing / (n / 2)  # semi-axes in normalised units
    b = a * lesion.aspect
    dist = ndi.distance_transform_edt(region) / (n / 2)
    need = {1: 0.0, 2: 0.5, 3: 0.4, 4: 0.8, 5: 0.7, 6: 0.0, 7: 0.0, 8: 0.4}[lesion.kind] * b
    ok = dist >= min(need, dist.max())
    rows, cols = np.nonzero(ok & region)
    if lesion.anchor is None:
        k = int(rng.integers(len(rows)))
    else:
        k = int(np.argmin((x[rows, cols] - lesion.anchor[0]) ** 2 + (y[rows, cols] - lesion.anchor[1]) ** 2))
    cx, cy = x[rows[k], cols[k]], y[rows[k], cols[k]]
    lesion.anchor = lesion.anchor or (float(cx), float(cy))
    theta = np.arctan2(y - cy, x - cx)
    wobble = 1 + 0.12 * lesion.look * np.sin(3 * theta + 7 * lesion.look)
    level = _rot_ellipse(x, y, cx, cy, a, b, lesion.angle) / wobble ** 2
    mask = level < 1
    kind, look, hu = lesion.kind, lesion.look, lesion.hu
    if kind == 1:  # confined to bone (lytic lesions expand it slightly)
        mask &= ndi.binary_dilation(img > 200, iterations=1)
    if kind == 5 and look > 0.6:  # spiculated nodule
        for k in range(7):
            ang = lesion.angle + k * 0.9
            end = (cx + 1.9 * a * math.cos(ang), cy + 1.9 * a * math.sin(ang))
            win, near = _segment(x, y, (cx, cy), end, 0.007)
            img[win][near & (img[win] < -500)] = -150
    img[mask] = (hu + 6 * tex)[mask]
    if kind == 4 and look > 0.7:  # rim enhancement
        img[mask & (level > 0.6)] = hu + 45
    if kind in (2, 8) and look > 0.65:  # necrotic / cystic centre
        img[mask & (level < 0.35)] = hu - 25
    if kind == 5 and look < 0.12:  # cavitation
        img[mask & (level < 0.2)] = -900
    return mask


def _recist(mask: np.ndarray):
    """RECIST long and short axes (endpoints, lengths in pixels) of a lesion mask, from its principal axes."""
    rows, cols = np.nonzero(mask)
    pts = np.stack([cols, rows], 1).astype(float)
    c = pts.mean(0)
    if len(pts) < 3:
        axis = np.array([1.0, 0.0])
    else:
        _, vecs = np.linalg.eigh(np.cov((pts - c).T) + 1e-9 * np.eye(2))
        axis = vecs[:, 1]
    ends = []
    for v in (axis, np.array([-axis[1], axis[0]])):
        proj = (pts - c) @ v
        lo, hi = proj.min() - 0.5, proj.max() + 0.5
        ends.append((c + lo * v, c + hi * v, hi - lo))
    return sorted(ends, key=lambda e: -e[2])  # the long axis first


def _primary_types(n_patients: int, seed: int) -> np.ndarray:
    """Type of each patient's first lesion: every type equally often, in a seeded random order of patients."""
    return np.random.default_rng([seed, 10 ** 6]).permutation(np.arange(n_patients) % 8 + 1)


def _make_patients(n_patients: int, seed: int) -> list[_Patient]:
    patients = []
    primary = _primary_types(n_patients, seed)
    for pid in range(1, n_patients + 1):
        rng = np.random.default_rng([seed, pid])
        u = rng.uniform
        p = _Patient(pid, (seed, pid), u(340, 420), u(0.8, 0.97), u(0.55, 0.7), u(0.05, 0.13), u(75, 105),
                     u(150, 200), u(0.44, 0.52), u(0.7, 0.76), bool(rng.random() < 0.5),
                     int(rng.integers(20, 90)))
        for group in range(int(rng.integers(1, 4))):
            kinds = [int(primary[pid - 1]) if group == 0 else int(rng.choice(8, p=TYPE_PROBS)) + 1]
            if rng.random() < 0.3:  # a second lesion on the same key slice, of a type found at that level
                kinds.append(int(rng.choice(_COMPANIONS[kinds[0]])))
            lo, hi = _LEVELS[kinds[0]]
            if kinds[0] == 4:
                hi = min(hi, p.lung_base)
            if kinds[0] == 6:
                lo, hi = p.kidney_level - 0.06, p.kidney_level + 0.06
            if kinds[0] in (3, 5):
                lo = max(lo, p.lung_base + 0.08)
            level = u(lo, hi)
            for kind in kinds:
                smin, smax = _SIZE_MM[kind]
                size = float(np.exp(u(np.log(smin), np.log(smax))))
                hu = {1: u(20, 90) if rng.random() < 0.6 else u(900, 1400), 2: u(25, 60), 3: u(30, 55),
                      4: p.liver_hu - u(35, 70) if rng.random() < 0.7 else u(0, 15), 5: u(10, 60),
                      6: u(0, 20) if rng.random() < 0.5 else u(30, 90), 7: u(25, 60), 8: u(25, 60)}[kind]
                p.lesions.append(_Lesion(kind, level, size, u(0.55, 1.0), u(0, np.pi), u(), hu))
        patients.append(p)
    return patients


def _split_of_patients(n: int, seed: int) -> np.ndarray:
    """Train_Val_Test per patient, stratified by the first lesion's type so that val and test see every type:
    of the patients sharing it, one goes to val and one to test when there are three or more (about
    60 / 20 / 20 %; the real split is 70 / 15 / 15 % by patient); with fewer than 24 patients some types
    stay in train. At least one val and one test patient."""
    primary, rng = _primary_types(n, seed), np.random.default_rng([seed, 10 ** 6 + 1])
    split = np.ones(n, int)
    for kind in range(1, 9):
        members = rng.permutation(np.flatnonzero(primary == kind))
        if len(members) >= 3:
            split[members[:2]] = (2, 3)
    for code in (2, 3):
        if not (split == code).any():
            split[rng.choice(np.flatnonzero(split == 1))] = code
    return split


def _lesion_fields(mask: np.ndarray, body: np.ndarray, level: float) -> dict[str, str]:
    """Geometric DL_info.csv fields of a drawn lesion: RECIST axes, box (their extent + 5 px at 512 px),
    diameters and location normalised to the body (z = 0 at the thoracic inlet)."""
    n = mask.shape[0]
    (l0, l1, long_px), (s0, s1, short_px) = _recist(mask)
    coords = [*l0, *l1, *s0, *s1]
    pad = max(1.0, 5 * n / 512)
    xs, ys = coords[0::2], coords[1::2]
    box = [max(min(xs) - pad, 0), max(min(ys) - pad, 0), min(max(xs) + pad, n - 1), min(max(ys) + pad, n - 1)]
    rows, cols = np.nonzero(body)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    location = [(cx - cols.min()) / np.ptp(cols), (cy - rows.min()) / np.ptp(rows), 1 - level]
    return {"Measurement_coordinates": format_list(coords), "Bounding_boxes": format_list(box),
            "Lesion_diameters_Pixel_": format_list([long_px, short_px]),
            "Normalized_lesion_location": format_list(location)}


def _key_slice(p: _Patient, lesions: list[_Lesion], level: float, spacing: float, n: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[_Lesion, np.ndarray]]]:
    """Draw one key slice: (HU image with blur and noise, body mask, [(lesion, its mask)])."""
    y, x = np.meshgrid((np.arange(n) + 0.5) / n * 2 - 1, (np.arange(n) + 0.5) / n * 2 - 1, indexing="ij")
    img, regions, body = _anatomy(p, level, n, rng)
    tex = smooth_field(rng, (1, n, n), (2, 9, 9))[0]
    drawn = []
    for lesion in lesions:
        size = lesion.size_mm * rng.uniform(0.85, 1.15)  # follow-up: grows or shrinks
        grown = _Lesion(**{**lesion.__dict__, "size_mm": size})
        drawn.append((lesion, _draw_lesion(img, grown, regions, spacing, rng, x, y, tex)))
        lesion.anchor = lesion.anchor or grown.anchor
    img = blur(img[None])[0] + rng.normal(0, rng.uniform(8, 14), img.shape)
    return np.clip(img, -1024, 3071), body, drawn


def write_deeplesion_phantom(root: str | Path, n_patients: int = 40, image_size: int = 128, seed: int = 0,
                             unlabelled_fraction: float = 1.0) -> Path:
    """Write a tiny DeepLesion-format dataset (about 9 lesions per patient) at ``root``; return ``root``.

    Patients have 2-5 studies; each study shows each of the patient's lesions (90 %) on a key slice of
    series 1. ``unlabelled_fraction`` of the training rows get Coarse_lesion_type -1 (1.0, the real layout:
    only val and test carry lesion types). Deterministic in
    ``seed``.
    """
    if n_patients < 3 or image_size < 32:
        raise ValueError(f"n_patients={n_patients}, image_size={image_size}: need >= 3 patients (train, val "
                         f"and test) and images of >= 32 pixels")
    root, n = Path(root), image_size
    (root / "Images_png").mkdir(parents=True, exist_ok=True)
    splits = _split_of_patients(n_patients, seed)
    rows = []
    for p in _make_patients(n_patients, seed):
        split = int(splits[p.index - 1])
        prng = np.random.default_rng([seed, p.index, 1])
        for study in range(1, int(prng.integers(2, 6)) + 1):
            thick = float(prng.choice([1.25, 2.5, 5.0]))
            spacing = p.fov_mm / n * prng.uniform(0.97, 1.03)
            window = (-1350, 150) if prng.random() < 0.2 else (-175, 275)  # lung or soft-tissue preset
            slices: dict[int, list[_Lesion]] = {}
            for lesion in p.lesions:
                if prng.random() < 0.9:
                    level = np.clip(lesion.level + prng.uniform(-0.008, 0.008), 0, 1)
                    slices.setdefault(int((1 - level) * _SLICE_MM / thick) + 1, []).append(lesion)
            n_slices = int(_SLICE_MM / thick) + 1
            for key, lesions in sorted(slices.items()):
                rng = np.random.default_rng([seed, p.index, study, key])
                level = 1 - (key - 1) * thick / _SLICE_MM
                img, body, drawn = _key_slice(p, lesions, level, spacing, n, rng)
                series = f"{p.index:06d}_{study:02d}_01"
                write_hu_png(root / "Images_png" / series / f"{key:03d}.png", img)
                common = {"File_name": f"{series}_{key:03d}.png", "Patient_index": p.index,
                          "Study_index": study, "Series_ID": 1, "Key_slice_index": key,
                          "Slice_range": format_list([max(1, key - 7), min(n_slices, key + 7)], "{:d}"),
                          "Spacing_mm_px_": format_list([spacing, spacing, thick]),
                          "Image_size": format_list([n, n], "{:d}"),
                          "DICOM_windows": format_list(window, "{:d}"),
                          "Patient_gender": "F" if p.female else "M", "Patient_age": p.age,
                          "Train_Val_Test": split}
                for lesion, mask in drawn:
                    if mask.any():
                        labelled = split != 1 or rng.random() >= unlabelled_fraction
                        rows.append({**common, **_lesion_fields(mask, body, level),
                                     "Coarse_lesion_type": lesion.kind if labelled else -1,
                                     "Possibly_noisy": int(rng.random() < 0.03)})
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DL_INFO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic DeepLesion dataset (DL_info.csv + 16-bit "
                                                 "PNGs).")
    parser.add_argument("--root", default="data/phantom/DeepLesion", help="DeepLesion folder to write")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--unlabelled-fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_deeplesion_phantom(args.root, args.patients, args.image_size, args.seed,
                                    args.unlabelled_fraction)
    with open(root / "DL_info.csv") as f:
        n_rows = sum(1 for _ in f) - 1
    print(f"wrote synthetic DeepLesion phantom ({args.patients} patients, {n_rows} lesions) to {root}")


if __name__ == "__main__":
    main()
