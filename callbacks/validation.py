"""Checks of the array inputs of the public retrieval functions: one readable ``ValueError`` per problem.

``evaluate_retrieval``, ``exact_topk`` and ``relevance_rank_accuracy`` call these before any work, so a
length mismatch, a float label, a non-binary hash code, an empty split or a NaN embedding is reported by
name (which array, how many items, what was expected) instead of surfacing as a numpy/torch error deep
inside the search, or, worse, as silently ranked NaNs. The table of messages is docs/errors.md.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

NON_FINITE_POLICIES = ("error", "warn")


class NonFiniteEmbeddings(ValueError):
    """Embeddings holding NaN or inf: they can never be ranked. ``split``, ``count`` and ``total`` say where."""

    def __init__(self, message: str, split: str | None, count: int, total: int):
        super().__init__(message)
        self.split, self.count, self.total = split, count, total


def as_tensor(x, name: str) -> Tensor:
    """``torch.as_tensor(x)`` with an error naming ``name`` when ``x`` is not a numeric array."""
    if isinstance(x, Tensor):
        return x
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, np.ndarray) else x)
    except (TypeError, ValueError, RuntimeError) as err:
        kind = np.asarray(x, dtype=object).dtype if not isinstance(x, np.ndarray) else x.dtype
        raise ValueError(f"{name}: expected a numeric array (numpy or torch), got {type(x).__name__} of "
                         f"{kind} that cannot be converted ({err})") from err
    return t


def _where(name: str, split: str | None) -> str:
    return f"{name} of split {split!r}" if split else name


def _first(rows: Tensor, n: int = 5) -> str:
    shown = rows[:n].tolist()
    return f"{shown}{' ...' if len(rows) > n else ''}"


def check_embeddings(x, name: str = "embeddings", split: str | None = None, items: bool = False) -> Tensor:
    """``x`` as a non-empty [N, D] tensor of finite numbers; else ValueError (``NonFiniteEmbeddings`` for
    NaN / inf rows, naming the split and how many items are affected). ``items=True``: per-item arrays of
    any shape [N, ...] (what a pairwise scorer such as SSIM reads, e.g. images), checked as [N, -1]."""
    t = as_tensor(x, name)
    where = _where(name, split)
    if items and t.ndim > 2:
        t = t.reshape(len(t), -1)
    if t.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D array [N items, D dims], got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{where}: empty (0 items); nothing to search" + (f": split {split!r} has no samples"
                                                                            if split else ""))
    if t.shape[1] == 0:
        raise ValueError(f"{where}: 0 dimensions per item (shape {tuple(t.shape)})")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{where}: dtype {t.dtype} is not supported; expected float (or integer codes)")
    if t.is_floating_point():
        bad = ~torch.isfinite(t).all(1)
        n_bad = int(bad.sum())
        if n_bad:
            raise NonFiniteEmbeddings(
                f"{where}: {n_bad} of {len(t)} items contain NaN or inf (rows {_first(bad.nonzero()[:, 0])}); "
                f"non-finite embeddings cannot be ranked (the model diverged or embed() overflowed)",
                split, n_bad, len(t))
    return t


def check_codes(x: Tensor, name: str) -> None:
    """Hamming search: every value must be 0/1 or -1/+1 (one convention per array)."""
    other = (x != 0) & (x != 1) & (x != -1)
    n = int(other.sum())
    if n:
        example = x[other][0].item()
        raise ValueError(f"{name}: hamming distance needs binary codes in {{0,1}} or {{-1,+1}}; {n} values are "
                         f"neither (e.g. {example!r}); binarise them first (e.g. (x > 0).int())")


def check_lengths(n: int, what: str, **arrays) -> None:
    """Each non-None array must have ``n`` rows (one per item of ``what``)."""
    for name, a in arrays.items():
        if a is not None and len(a) != n:
            raise ValueError(f"{name}: {len(a)} entries for {n} {what}; expected one per item "
                             f"(same order as the embeddings)")


def check_labels(labels: Tensor, name: str, rule) -> None:
    """Labels must suit the relevance rule: integer class ids [N] for ``same_label``; multi-hot [N, C] for
    ``label_overlap`` / ``shared_label_count``; no NaN."""
    from callbacks.relevance import LabelOverlap, SameLabel, SharedLabelCount

    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError(f"{name}: {int((~torch.isfinite(labels)).sum())} labels are NaN or inf; mark unlabelled "
                         f"items with -1 instead")
    if isinstance(rule, SameLabel):
        if labels.ndim != 1:
            raise ValueError(f"{name}: relevance=same_label needs one integer class id per item, shape [N]; got "
                             f"shape {tuple(labels.shape)} (multi-hot labels: use relevance=label_overlap)")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name}: relevance=same_label needs integer class ids, got dtype {labels.dtype} "
                             f"(e.g. {labels[0].item()!r}); cast them with .long() / .astype(int)")
    elif isinstance(rule, (LabelOverlap, SharedLabelCount)) and labels.ndim != 2:
        rule_name = "label_overlap" if isinstance(rule, LabelOverlap) else "shared_label_count"
        raise ValueError(f"{name}: relevance={rule_name} needs multi-hot labels of shape [N, C classes]; got "
                         f"shape {tuple(labels.shape)} (single class ids: use relevance=same_label)")


def check_search_inputs(queries: Tensor, gallery: Tensor, distance: str, k: int, *,
                        query_ids=None, gallery_ids=None, query_groups=None, gallery_groups=None) -> None:
    """Everything ``exact_topk`` needs of its arrays (see the module docstring)."""
    check_embeddings(queries, "query embeddings")
    if gallery is not queries:
        check_embeddings(gallery, "gallery embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query embeddings have {queries.shape[1]} dims, gallery embeddings {gallery.shape[1]}; "
                         f"both must come from the same model")
    if distance == "hamming":
        check_codes(queries, "query embeddings")
        if gallery is not queries:
            check_codes(gallery, "gallery embeddings")
    check_lengths(len(queries), "queries", query_ids=query_ids, query_groups=query_groups)
    check_lengths(len(gallery), "gallery items", gallery_ids=gallery_ids, gallery_groups=gallery_groups)
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= len(gallery):
        raise ValueError(f"k={k}: expected an integer between 1 and the gallery size {len(gallery)}")


def check_retrieval_inputs(q_emb: Tensor, g_emb: Tensor, q_lab: Tensor, g_lab: Tensor, rule,
                           k_values: Sequence[int], items: bool = False) -> None:
    """``evaluate_retrieval``'s arrays: embeddings (``items``: any per-item shape, for pairwise scorers),
    labels that suit the rule, k_values within the gallery."""
    check_embeddings(q_emb, "query embeddings", items=items)
    if g_emb is not q_emb:
        check_embeddings(g_emb, "gallery embeddings", items=items)
    if q_lab is None or g_lab is None:
        raise ValueError("query_labels and gallery_labels are required (relevance is computed from labels)")
    check_lengths(len(q_emb), "query embeddings", query_labels=q_lab)
    check_lengths(len(g_emb), "gallery embeddings", gallery_labels=g_lab)
    check_labels(q_lab, "query_labels", rule)
    check_labels(g_lab, "gallery_labels", rule)
    if q_lab.shape[1:] != g_lab.shape[1:]:
        raise ValueError(f"query_labels {tuple(q_lab.shape)} and gallery_labels {tuple(g_lab.shape)} must have "
                         f"the same shape per item (same label columns)")
    if max(k_values) > len(g_emb):
        raise ValueError(f"k_values={list(k_values)}: k={max(k_values)} exceeds the gallery size {len(g_emb)}; "
                         f"use cut-offs up to {len(g_emb)}")


def check_maps(attributions: Tensor, masks: Tensor) -> None:
    """Relevance rank accuracy inputs, flattened to [N, pixels]: at least one image, finite numbers."""
    if len(attributions) == 0 or attributions.shape[1] == 0:
        raise ValueError(f"attributions: no images (shape {tuple(attributions.shape)}); RR needs at least one")
    for name, x in (("attributions", attributions), ("masks", masks)):
        if x.is_complex():
            raise ValueError(f"{name}: dtype {x.dtype} is not supported; expected real numbers")
        if x.is_floating_point():
            bad = ~torch.isfinite(x).all(1)
            if bool(bad.any()):
                raise ValueError(f"{name}: {int(bad.sum())} of {len(x)} images contain NaN or inf (images "
                                 f"{_first(bad.nonzero()[:, 0])}); relevance rank accuracy is undefined for them")


def check_policy(policy: str) -> str:
    if policy not in NON_FINITE_POLICIES:
        raise ValueError(f"non_finite={policy!r}: expected one of {NON_FINITE_POLICIES}")
    return policy


def screen_embeddings(splits: dict[str, Tensor], policy: str = "error", items: bool = False) -> str | None:
    """Check the embeddings of each named split for NaN / inf. ``policy="error"`` raises
    ``NonFiniteEmbeddings`` naming the split; ``"warn"`` warns and returns the message (None when clean)."""
    check_policy(policy)
    for split, emb in splits.items():
        try:
            check_embeddings(emb, "embeddings", split=split, items=items)
        except NonFiniteEmbeddings as err:
            if policy == "error":
                raise
            message = f"{err}; logging NaN metrics for this evaluation (non_finite='warn')"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return message
    return None


def metric_keys(metrics: Iterable[str], k_values: Iterable[int], candidate_infixes: Iterable[str],
                stage: str = "val", single_label: bool = True) -> list[str]:
    """The ``<stage>/<infix><metric>@<k>`` keys an evaluation logs (kNN metrics only for single-label data)."""
    return [f"{stage}/{infix}{m}@{k}" for infix in candidate_infixes for k in sorted(set(k_values))
            for m in metrics if single_label or not m.startswith("kNN")]


def nan_metrics(keys: Iterable[str]) -> dict[str, float]:
    """Every key set to NaN (an evaluation that could not run); Lightning ranks NaN below any score."""
    return {k: math.nan for k in keys}
