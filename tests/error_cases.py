"""The table of validated inputs: every row is a test (tests/test_errors.py) and a row of docs/errors.md.

A case runs ``call(ctx)`` and expects ``error`` with ``message`` (a literal part of the text). ``ctx`` gives
the fixtures CLI cases need (``ctx.tmp_path``, ``ctx.phantom_root``, ``ctx.cli``). Regenerate the docs
with ``python -m tests.error_cases > docs/errors.md``; a test checks they are in step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from callbacks import evaluate_retrieval, exact_topk
from callbacks.explanation_metrics import relevance_rank_accuracy


@dataclass(frozen=True)
class Case:
    entry: str          # the public entry point
    bad: str            # the bad input, in words
    call: Callable      # call(ctx) must raise ``error``
    error: type
    message: str        # a literal part of the message

    @property
    def id(self) -> str:
        return f"{self.entry}: {self.bad}"


E = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
LAB = np.array([0, 1, 0, 1, 2, 2])
T = torch.from_numpy(E)


def _nan(x, rows=(1, 3)):
    x = x.copy()
    x[list(rows), 0] = np.nan
    return x


def _ev(q=E, g=E, ql=LAB, gl=LAB, **kw):
    kw.setdefault("k_values", [1, 5])
    return lambda ctx: evaluate_retrieval(q, g, ql, gl, **kw)


EV = "evaluate_retrieval"
TOPK = "exact_topk"
RR = "relevance_rank_accuracy"

ARRAY_CASES = [
    Case(EV, "labels shorter than the embeddings", _ev(ql=LAB[:4]), ValueError,
         "query_labels: 4 entries for 6 query embeddings"),
    Case(EV, "float labels with relevance=same_label", _ev(ql=LAB.astype(float), gl=LAB.astype(float)), ValueError,
         "relevance=same_label needs integer class ids, got dtype torch.float64"),
    Case(EV, "class ids with relevance=label_overlap", _ev(relevance="label_overlap"), ValueError,
         "relevance=label_overlap needs multi-hot labels of shape [N, C classes]"),
    Case(EV, "multi-hot labels with different columns", _ev(ql=np.eye(6, 3), gl=np.eye(6, 4),
                                                            relevance="label_overlap"), ValueError,
         "must have the same shape per item"),
    Case(EV, "NaN in the labels", _ev(ql=_nan(np.eye(6, 3)), gl=np.eye(6, 3), relevance="label_overlap"),
         ValueError, "2 labels are NaN or inf"),
    Case(EV, "NaN query embeddings", _ev(q=_nan(E)), ValueError,
         "query embeddings: 2 of 6 items contain NaN or inf (rows [1, 3])"),
    Case(EV, "inf gallery embeddings", _ev(g=np.where(np.arange(6)[:, None] == 0, np.inf, E)), ValueError,
         "gallery embeddings: 1 of 6 items contain NaN or inf"),
    Case(EV, "empty query set", _ev(q=E[:0], ql=LAB[:0]), ValueError, "query embeddings: empty (0 items)"),
    Case(EV, "1-D embeddings", _ev(q=E[:, 0]), ValueError, "expected a 2-D array [N items, D dims]"),
    Case(EV, "strings instead of numbers", _ev(ql=np.array(list("abcdef"))), ValueError,
         "query_labels: expected a numeric array"),
    Case(EV, "k_values larger than the gallery", _ev(k_values=[1, 10]), ValueError,
         "k_values=[1, 10]: k=10 exceeds the gallery size 6"),
    Case(EV, "groups of the wrong length", _ev(query_groups=LAB[:3], gallery_groups=LAB,
                                               candidates="same_group"), ValueError,
         "query_groups: 3 entries for 6 queries"),
    Case(TOPK, "non-binary codes with distance=hamming", lambda ctx: exact_topk(T, T, 2, "hamming"), ValueError,
         "hamming distance needs binary codes in {0,1} or {-1,+1}"),
    Case(TOPK, "NaN embeddings", lambda ctx: exact_topk(torch.from_numpy(_nan(E)), T, 2), ValueError,
         "query embeddings: 2 of 6 items contain NaN or inf"),
    Case(TOPK, "query and gallery of different widths", lambda ctx: exact_topk(T, T[:, :3], 2), ValueError,
         "query embeddings have 4 dims, gallery embeddings 3"),
    Case(TOPK, "ids of the wrong length", lambda ctx: exact_topk(T, T, 2, query_ids=torch.arange(5),
                                                                 gallery_ids=torch.arange(6)), ValueError,
         "query_ids: 5 entries for 6 queries"),
    Case(TOPK, "k larger than the gallery", lambda ctx: exact_topk(T, T, 7), ValueError,
         "k=7: expected an integer between 1 and the gallery size 6"),
    Case(RR, "inf in the attributions", lambda ctx: relevance_rank_accuracy(
        torch.tensor([[[0.0, float("inf")], [1.0, 2.0]]]), torch.ones(1, 2, 2)), ValueError,
         "attributions: 1 of 1 images contain NaN or inf"),
    Case(RR, "NaN in the masks", lambda ctx: relevance_rank_accuracy(
        torch.rand(2, 2, 2), torch.tensor([[[0.0, float("nan")], [1.0, 0.0]]] * 2)), ValueError,
         "masks: 2 of 2 images contain NaN or inf"),
    Case(RR, "no images", lambda ctx: relevance_rank_accuracy(torch.rand(0, 4, 4), torch.ones(0, 4, 4)),
         ValueError, "attributions: no images"),
    Case(RR, "masks of another size", lambda ctx: relevance_rank_accuracy(torch.rand(2, 4, 4), torch.ones(2, 4, 5)),
         ValueError, "must describe the same N images of the same size"),
]

CASES: list[Case] = [*ARRAY_CASES]


def markdown(cases: list[Case] = None) -> str:
    """docs/errors.md: one table row per case."""
    cases = CASES if cases is None else cases
    lines = [
        "# Errors: every validated input",
        "",
        "Each bad input below stops with one message that names the array, key or file, the value given and",
        "what was expected. Every row is a test (`tests/test_errors.py` runs `tests/error_cases.py`); this",
        "file is generated from that table (`python -m tests.error_cases > docs/errors.md`) and a test checks",
        "that it is in step. On the command line the message is printed as one line (exit status 2); set",
        "`MEDCBIR_TRACEBACK=1` to see the full traceback instead.",
        "",
        "| entry point | bad input | error | message contains |",
        "|---|---|---|---|",
    ]
    for c in cases:
        msg = c.message.replace("|", "\\|")
        lines.append(f"| `{c.entry}` | {c.bad} | `{c.error.__name__}` | `{msg}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
