"""Relevance rules: ``rule(q_labels [q, ...], g_labels [g, ...]) -> Tensor[q, g]`` (float, >= 0).

``binary`` rules give 0/1; graded rules any value >= 0 (used as rel_i in nDCG, docs/metrics.md). An item is
relevant when its relevance is > 0.
"""
from collections.abc import Callable

from torch import Tensor

UNLABELLED = -1
Rule = Callable[[Tensor, Tensor], Tensor]


class SameLabel:
    """Single-label int labels [N]: rel = 1 if the labels are equal; label -1 (unlabelled) is never
    relevant to anything, not even to another -1."""

    binary = True

    def __call__(self, q_labels: Tensor, g_labels: Tensor) -> Tensor:
        q, g = q_labels.reshape(-1, 1), g_labels.reshape(1, -1)
        return ((q == g) & (q != UNLABELLED)).float()


class SharedLabelCount:
    """Multi-hot labels [N, C]: graded rel = number of positive labels shared."""

    binary = False

    def __call__(self, q_labels: Tensor, g_labels: Tensor) -> Tensor:
        return (q_labels > 0).float() @ (g_labels > 0).float().t()


class LabelOverlap(SharedLabelCount):
    """Multi-hot labels [N, C]: rel = 1 if query and item share >= 1 positive label (the X-ray hashing
    paper's rule, docs/metrics.md; "No Finding" is one of the C labels)."""

    binary = True

    def __call__(self, q_labels: Tensor, g_labels: Tensor) -> Tensor:
        return (super().__call__(q_labels, g_labels) > 0).float()


RULES = {"same_label": SameLabel, "label_overlap": LabelOverlap, "shared_label_count": SharedLabelCount}


def get_relevance(name_or_rule: str | Rule) -> Rule:
    """A rule by name (``same_label``, ``label_overlap``, ``shared_label_count``) or the callable itself
    (a callable without a ``binary`` attribute is treated as graded)."""
    if isinstance(name_or_rule, str):
        if name_or_rule not in RULES:
            raise ValueError(f"unknown relevance {name_or_rule!r}; valid: {', '.join(RULES)} or a callable")
        return RULES[name_or_rule]()
    if callable(name_or_rule):
        return name_or_rule
    raise ValueError(f"relevance must be one of {', '.join(RULES)} or a callable, got {name_or_rule!r}")


def is_binary(rule: Rule) -> bool:
    return bool(getattr(rule, "binary", False))



def make_relevance(name_or_rule: str | Rule, args: dict | None = None, datamodule=None) -> Rule:
    """:func:`get_relevance` with keyword ``args`` for a named rule's constructor (``relevance_args`` in a
    config); a rule with ``bind`` (e.g. ``visual_similarity``) then takes what it needs from the DataModule
    (the layout of the per-item ``attributes``)."""
    if isinstance(name_or_rule, str) and args:
        get_relevance(name_or_rule)  # unknown names: the usual error
        try:
            rule = RULES[name_or_rule](**args)
        except TypeError as err:
            raise ValueError(f"relevance_args={args!r} do not fit relevance {name_or_rule!r}: {err}") from err
    else:
        rule = get_relevance(name_or_rule)
    if datamodule is not None and hasattr(rule, "bind"):
        rule = rule.bind(datamodule)
    return rule


def _register_visual_similarity() -> None:
    from callbacks.visual_similarity import VisualSimilarity

    RULES["visual_similarity"] = VisualSimilarity


_register_visual_similarity()
