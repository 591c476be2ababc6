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

from collections.abc import Mapping

import torch
from torch import Tensor

from datamodules.attributes import generic_fourier_descriptor, grey_histogram, pack_attributes, split_attributes  # noqa: F401  (re-exported: the attribute helpers live with the data)

ATTRIBUTE_KEY = "attributes"
# Scales: the L1 distances of cross-patient pairs on the BraTS phantom have medians of about 0.3 (grey
# histograms of one sequence) and 0.5 (GFD), so each term spreads over (0, 1) instead of clustering near 1.
DEFAULT_TERMS = {"wt_mask": {"measure": "iou", "weight": 1.0},
                 "histogram": {"measure": "l1_exp", "weight": 1.0, "scale": 0.25},
                 "gfd": {"measure": "l1_exp", "weight": 1.0, "scale": 0.35}}


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
