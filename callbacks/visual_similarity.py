"""Graded relevance from per-item attributes (visual similarity), not from labels.

Items carry a flat float vector ``attributes`` [F] made of named parts (``pack_attributes``); the DataModule
says which part is where with ``attribute_layout`` (ordered ``{name: width}``). :class:`VisualSimilarity`
compares two items part by part with a *measure* giving a similarity in [0, 1], and combines the parts by a
weighted mean, the graded relevance rel in [0, 1] used as the gain of nDCG (linear gain, docs/metrics.md).

Measures (``MEASURES``):
    iou        masks (any shape flattened, > 0.5 = inside): |A n B| / |A u B|; two empty masks give 1.
    histogram  histograms that sum to 1: 1 - L1 / 2 (1 - total variation distance).
    l1_exp     any vectors (descriptors, scalars such as a lesion size): exp(-L1 / scale).
    equal      categorical codes: 1 when every entry is equal, else 0.

A dataset adds its own attribute by packing one more named part and naming it in the rule's ``terms``;
nothing in the callback changes. Everything works on [q, g] blocks (the callback calls the rule on blocks of
at most ``query_chunk x gallery_chunk`` pairs) with memory O((q + g) F + q g): no [q, g, F] tensor.

Also here: the generic Fourier descriptor of a shape (Zhang & Lu 2002) and grey histograms, the attributes
BraTS items carry (Sauron et al.'s visual-similarity relevance).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

ATTRIBUTE_KEY = "attributes"
# Scales: the L1 distances of cross-patient pairs on the BraTS phantom have medians of about 0.3 (grey
# histograms of one sequence) and 0.5 (GFD), so each term spreads over (0, 1) instead of clustering near 1.
DEFAULT_TERMS = {"wt_mask": {"measure": "iou", "weight": 1.0},
                 "histogram": {"measure": "l1_exp", "weight": 1.0, "scale": 0.25},
                 "gfd": {"measure": "l1_exp", "weight": 1.0, "scale": 0.35}}


# -- attributes ------------------------------------------------------------------------------------------
def pack_attributes(parts: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, int]]:
    """Per-item parts {name: [N, ...]} -> (flat float32 [N, F], layout {name: width}) in the given order."""
    flat = [torch.as_tensor(v).float().reshape(len(v), -1) for v in parts.values()]
    return torch.cat(flat, 1), {k: t.shape[1] for k, t in zip(parts, flat, strict=True)}


def split_attributes(x: Tensor, layout: Mapping[str, int]) -> dict[str, Tensor]:
    """Inverse of :func:`pack_attributes`: {name: [N, width]} views of ``x`` [N, F]."""
    total = sum(layout.values())
    if x.ndim != 2 or x.shape[1] != total:
        raise ValueError(f"attributes of shape {tuple(x.shape)} do not match the layout {dict(layout)} "
                         f"({total} columns); is relevance_args' layout the one of this DataModule?")
    return dict(zip(layout, torch.split(x, list(layout.values()), dim=1), strict=True))


def grey_histogram(images: Tensor, masks: Tensor, bins: int = 32, value_range: tuple[float, float] = (-3.0, 3.0)
                   ) -> Tensor:
    """Normalised histograms [N, bins] of the pixels of ``images`` [N, H, W] where ``masks`` (the brain) is
    true; values outside ``value_range`` go to the end bins. An empty mask gives a zero histogram."""
    lo, hi = value_range
    idx = ((images.float() - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    weight = (masks > 0).float().reshape(len(images), -1)
    out = torch.zeros(len(images), bins).scatter_add_(1, idx.reshape(len(images), -1), weight)
    return out / out.sum(1, keepdim=True).clamp_min(1.0)


def generic_fourier_descriptor(masks: Tensor, radial: int = 4, angular: int = 9, radial_samples: int = 32,
                               angular_samples: int = 64) -> Tensor:
    """Generic Fourier descriptor (Zhang & Lu 2002) of shapes ``masks`` [N, H, W] -> [N, radial * angular].

    The mask is resampled on a polar raster about its centroid, f(r_k, theta_i) with r_k = (k + 1/2) R / Rs
    (R: the largest centroid-to-pixel distance, Rs = ``radial_samples``) and theta_i = 2 pi i / T (T =
    ``angular_samples``), bilinearly. Its 2-D DFT PF(m, n) = sum_k sum_i f e^{-j 2 pi (k m / Rs + i n / T)}
    gives FD = [|PF(0,0)| / (Rs T), |PF(m,n)| / |PF(0,0)| for m < radial, n < angular, (m,n) != (0,0)] in the
    order m major. A rotation shifts theta, so |PF| is rotation invariant (exactly for multiples of 2 pi / T);
    the centroid makes it translation invariant, R and the division by |PF(0,0)| scale invariant. The first
    entry is the covered fraction of the polar raster. Empty masks give zeros.
    """
    masks = masks.float()
    n, h, w = masks.shape
    if radial > radial_samples or angular > angular_samples:
        raise ValueError(f"radial={radial}, angular={angular} exceed the polar raster "
                         f"{radial_samples} x {angular_samples}")
    out = torch.zeros(n, radial * angular)
    inside = masks > 0.5
    keep = inside.flatten(1).any(1)
    if not bool(keep.any()):
        return out
    m, ins = masks[keep], inside[keep]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    area = ins.float().sum((1, 2))
    cy = (ins * ys).sum((1, 2)) / area
    cx = (ins * xs).sum((1, 2)) / area
    dist = torch.sqrt((ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2)
    radius = (dist * ins).flatten(1).amax(1) + 0.5
    r = (torch.arange(radial_samples) + 0.5) / radial_samples
    theta = torch.arange(angular_samples) * (2 * math.pi / angular_samples)
    py = cy[:, None, None] + radius[:, None, None] * r[None, :, None] * torch.sin(theta)[None, None, :]
    px = cx[:, None, None] + radius[:, None, None] * r[None, :, None] * torch.cos(theta)[None, None, :]
    grid = torch.stack([px / max(w - 1, 1) * 2 - 1, py / max(h - 1, 1) * 2 - 1], -1)   # [n, Rs, T, 2]
    polar = F.grid_sample(m[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    spectrum = torch.fft.fft2(polar).abs()[:, :radial, :angular].reshape(len(m), -1)
    dc = spectrum[:, :1]
    fd = spectrum / dc.clamp_min(1e-12)
    fd[:, 0] = dc[:, 0] / (radial_samples * angular_samples)
    out[keep] = fd
    return out


# -- measures: (a [q, w], b [g, w], term) -> similarity [q, g] in [0, 1] -------------------------------------
def iou_similarity(a: Tensor, b: Tensor, term: Mapping) -> Tensor:
    a, b = (a > 0.5).float(), (b > 0.5).float()
    inter = a @ b.t()
    union = a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def histogram_similarity(a: Tensor, b: Tensor, term: Mapping) -> Tensor:
    return (1.0 - 0.5 * torch.cdist(a.float(), b.float(), p=1)).clamp(0.0, 1.0)


def l1_exp_similarity(a: Tensor, b: Tensor, term: Mapping) -> Tensor:
    return torch.exp(-torch.cdist(a.float(), b.float(), p=1) / float(term.get("scale", 1.0)))


def equal_similarity(a: Tensor, b: Tensor, term: Mapping) -> Tensor:
    return (torch.cdist(a.float(), b.float(), p=1) == 0).float()


MEASURES = {"iou": iou_similarity, "histogram": histogram_similarity, "l1_exp": l1_exp_similarity,
            "equal": equal_similarity}


class VisualSimilarity:
    """Graded relevance rel(q, g) = sum_t w_t s_t(q, g) / sum_t w_t over the ``terms`` (a weighted mean of
    per-attribute similarities in [0, 1], so rel is in [0, 1]).

    Args:
        terms: ``{attribute name: {"measure": one of MEASURES, "weight": w >= 0, "scale": s (l1_exp)}}``;
            default (``DEFAULT_TERMS``): IoU of the whole-tumour masks, grey histograms exp(-L1 / 0.25) and
            GFDs exp(-L1 / 0.35), equal weights.
        layout: ``{attribute name: width}`` of the packed attributes; None until :meth:`bind` takes it from
            the DataModule (``attribute_layout``), which the retrieval callback does.
    """

    binary = False

    def __init__(self, terms: Mapping[str, Mapping] | None = None, layout: Mapping[str, int] | None = None):
        self.terms = {k: dict(v) for k, v in (terms or DEFAULT_TERMS).items()}
        if not self.terms:
            raise ValueError("relevance_args.terms is empty: name at least one attribute")
        for name, term in self.terms.items():
            measure = term.get("measure")
            if measure not in MEASURES:
                raise ValueError(f"relevance_args.terms.{name}.measure={measure!r}: expected one of "
                                 f"{sorted(MEASURES)}")
            unknown = set(term) - {"measure", "weight", "scale"}
            if unknown:
                raise ValueError(f"relevance_args.terms.{name}: unknown keys {sorted(unknown)} "
                                 f"(expected measure, weight, scale)")
            if float(term.get("weight", 1.0)) < 0 or float(term.get("scale", 1.0)) <= 0:
                raise ValueError(f"relevance_args.terms.{name}: weight must be >= 0 and scale > 0, got {term}")
        if sum(float(t.get("weight", 1.0)) for t in self.terms.values()) <= 0:
            raise ValueError("relevance_args.terms: the weights sum to 0")
        self.layout = None
        if layout is not None:
            self.bind(layout)

    def bind(self, source) -> VisualSimilarity:
        """Take the attribute layout from a mapping or from an object's ``attribute_layout`` (a DataModule)."""
        layout = source if isinstance(source, Mapping) else getattr(source, "attribute_layout", None)
        if layout is None:
            raise ValueError(f"relevance visual_similarity needs per-item attributes, but {type(source).__name__} "
                             f"has no attribute_layout (use a DataModule whose samples carry "
                             f"'{ATTRIBUTE_KEY}', e.g. BraTSDataModule, and label_key: {ATTRIBUTE_KEY})")
        missing = [k for k in self.terms if k not in layout]
        if missing:
            raise ValueError(f"relevance_args.terms name attributes {missing} that the items do not carry; "
                             f"available: {list(layout)}")
        self.layout = dict(layout)
        return self

    def __call__(self, q_attr: Tensor, g_attr: Tensor) -> Tensor:
        if self.layout is None:
            raise ValueError("VisualSimilarity has no attribute layout: pass layout= or bind(datamodule)")
        q, g = split_attributes(q_attr, self.layout), split_attributes(g_attr, self.layout)
        total = torch.zeros(len(q_attr), len(g_attr), device=q_attr.device)
        weight_sum = 0.0
        for name, term in self.terms.items():
            w = float(term.get("weight", 1.0))
            if w:
                total += w * MEASURES[term["measure"]](q[name], g[name], term)
                weight_sum += w
        return total / weight_sum

    def __repr__(self) -> str:
        return f"VisualSimilarity(terms={self.terms})"
