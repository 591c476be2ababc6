"""The evaluation protocol and the callback configuration, checked before the first training step.

``RetrievalEvaluation.setup`` calls :func:`check_protocol` (splits exist and are large enough for
``k_values``, labels suit ``relevance``, the samples carry ``group_key`` for restricted candidate sets) and
:func:`check_monitors` (every ``monitor`` of ModelCheckpoint / EarlyStopping that names a retrieval key is
one the callbacks log). The CLI additionally calls :func:`check_callbacks` (one callback configured twice
with clashing outputs) and :func:`check_monitors` for configs without a RetrievalEvaluation. Each message
names the config key, the value and what is expected.
"""
from __future__ import annotations

import difflib
import re
import warnings
from collections import Counter
from collections.abc import Sequence

import torch

from callbacks.validation import metric_keys

RETRIEVAL_KEY = re.compile(r"^(val|test)/(?:(same_patient|cross_patient)/)?(mP|P|AP|nDCG|nDCG_lin|kNN|kNN_F1)"
                           r"@(\d+)$")


def _column(dataset, key: str) -> list | None:
    """``key`` of every sample, read from the dataset's record list (MONAI ``Dataset.data``) when it has one,
    without decoding images; None when the dataset does not expose its records."""
    records = getattr(dataset, "data", None)
    if not isinstance(records, Sequence) or not records or not isinstance(records[0], dict):
        return None
    if key not in records[0]:
        return []
    return [r[key] for r in records]


def _where(cb) -> str:
    """``trainer.callbacks[i].init_args`` when the CLI set ``cb.config_key``, else the class name."""
    key = getattr(cb, "config_key", None)
    return f"{key}.init_args" if key else type(cb).__name__


def check_protocol(cb, trainer, stage: str) -> None:
    """Splits, cut-offs, relevance rule, candidate sets of the RetrievalEvaluation ``cb`` vs the DataModule."""
    from callbacks.relevance import LabelOverlap, SameLabel, SharedLabelCount, make_relevance

    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "retrieval_dataset"):
        return  # reported by the callback itself when it runs
    datasets = getattr(dm, "datasets", None) or {}
    stages = {"fit": ["val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
    where = _where(cb)
    for st in stages:
        q_split = cb.query_splits[st]
        key = f"{st}_query_split"
        if datasets and q_split not in datasets:
            raise ValueError(f"{where}.{key}={q_split!r}: no such split; the DataModule has "
                             f"{sorted(datasets)}")
        if cb.gallery_split is not None and datasets and cb.gallery_split not in datasets:
            raise ValueError(f"{where}.gallery_split={cb.gallery_split!r}: no such split; the "
                             f"DataModule has {sorted(datasets)} (null = leave-one-out inside the query split)")
        queries = dm.retrieval_dataset(q_split)
        loo = cb.gallery_split is None or cb.gallery_split == q_split
        gallery = queries if loo else dm.retrieval_dataset(cb.gallery_split)
        g_name = q_split if loo else cb.gallery_split
        if len(queries) == 0:
            raise ValueError(f"{where}.{key}={q_split!r}: the split is empty; nothing to evaluate")
        if max(cb.k_values) > len(gallery):
            raise ValueError(f"{where}.k_values={cb.k_values}: k={max(cb.k_values)} exceeds the "
                             f"{len(gallery)} items of the gallery split {g_name!r}; use cut-offs up to "
                             f"{len(gallery)}")
        labels = _column(queries, cb.label_key)
        if labels == []:
            raise ValueError(f"{where}.label_key={cb.label_key!r}: the samples of split {q_split!r} have "
                             f"no such key")
        if labels:
            rule = make_relevance(cb.relevance, getattr(cb, "relevance_args", None))
            first = torch.as_tensor(labels[0])
            if isinstance(rule, SameLabel) and (first.ndim != 0 or first.is_floating_point()):
                raise ValueError(f"{where}.relevance={cb.relevance!r}: needs one integer class id per "
                                 f"sample, but {cb.label_key!r} of split {q_split!r} is {first.dtype} of shape "
                                 f"{tuple(first.shape)} (multi-hot labels: use label_overlap or "
                                 f"shared_label_count)")
            if isinstance(rule, (LabelOverlap, SharedLabelCount)) and first.ndim != 1:
                raise ValueError(f"{where}.relevance={cb.relevance!r}: needs multi-hot labels [C] per "
                                 f"sample, but {cb.label_key!r} of split {q_split!r} has shape "
                                 f"{tuple(first.shape)} (class ids: use same_label)")
        restricted = [c for c in cb.candidate_sets if c != "all"]
        if restricted:
            q_groups = _column(queries, cb.group_key)
            if q_groups == []:
                raise ValueError(f"{where}.candidate_sets={cb.candidate_sets}: {restricted} need the "
                                 f"sample key group_key={cb.group_key!r}, which split {q_split!r} does not have")
            g_groups = q_groups if loo else _column(gallery, cb.group_key)
            if q_groups and g_groups and "same_patient" in restricted:
                counts = Counter(int(g) for g in q_groups)
                if (all(c == 1 for c in counts.values()) if loo
                        else not set(counts) & {int(g) for g in g_groups}):
                    warnings.warn(f"{where}.candidate_sets includes 'same_patient' but no query of split "
                                  f"{q_split!r} has another item of its {cb.group_key} in the gallery split "
                                  f"{g_name!r}: every same_patient metric will count 0 queries", stacklevel=2)


def logged_keys(callbacks: list) -> tuple[set[str], bool]:
    """Retrieval keys the configured callbacks log, and whether a RetrievalEvaluation is configured."""
    from callbacks.explanation import ExplanationEvaluation
    from callbacks.retrieval_evaluation import RetrievalEvaluation

    keys: set[str] = set()
    found = False
    for cb in callbacks:
        if isinstance(cb, RetrievalEvaluation):
            found = True
            for stage in ("val", "test"):
                keys.update(metric_keys(cb.metrics, cb.k_values, cb.key_infixes(),
                                        stage))
        if isinstance(cb, ExplanationEvaluation):
            keys.update({"val/RR", "test/RR"})
    return keys, found


def check_monitors(callbacks: list, names: dict | None = None) -> None:
    """Each ``monitor`` that looks like a retrieval key (``val/mP@5``, ``val/cross_patient/AP@10``,
    ``val/RR``) must be logged by a configured callback. Other monitors (``val/loss``, logged by the module)
    cannot be known before the first epoch and are left to Lightning. ``names`` maps a callback to its
    config key (the CLI passes ``trainer.callbacks[i]``)."""
    keys, has_retrieval = logged_keys(callbacks)
    for cb in callbacks:
        monitor = getattr(cb, "monitor", None)
        if not isinstance(monitor, str) or not (RETRIEVAL_KEY.match(monitor) or monitor.endswith("/RR")):
            continue
        if monitor in keys:
            continue
        where = f"{names[id(cb)]}.init_args" if names and id(cb) in names else _where(cb)
        if monitor.endswith("/RR"):
            expected = "an ExplanationEvaluation callback (it logs val/RR)"
        elif not has_retrieval:
            expected = "a callbacks.RetrievalEvaluation callback (it logs the retrieval metrics)"
        else:
            close = difflib.get_close_matches(monitor, sorted(keys), n=3, cutoff=0.5)
            expected = ("one of the keys the callbacks log" + (f", e.g. {close}" if close else "") +
                        " (set k_values / metrics / candidate_sets of RetrievalEvaluation to log it)")
        raise ValueError(f"{where}.monitor={monitor!r}: no callback logs this key; expected {expected}")


def _outputs(cb) -> set[str]:
    """Files and logged keys a project callback writes (empty for others)."""
    from callbacks.explanation import ExplanationEvaluation
    from callbacks.prediction_writer import EmbeddingWriter
    from callbacks.retrieval_evaluation import RetrievalEvaluation
    from callbacks.retrieval_grid import RetrievalGrid

    if isinstance(cb, RetrievalEvaluation):
        keys = metric_keys(cb.metrics, cb.k_values, cb.key_infixes(), "val")
        return {f"file {cb.metrics_filename} (sections val/test)", *(f"key {k}" for k in keys)}
    if isinstance(cb, EmbeddingWriter):
        return {f"file {cb.filename}"}
    if isinstance(cb, ExplanationEvaluation):
        return {"key val/RR", "figures explained_retrieval_<stage>_epoch<N>.png"}
    if isinstance(cb, RetrievalGrid):
        return {"figures retrieval_<stage>_epoch<N>.png"}
    return set()


def check_callbacks(callbacks: list, names: list[str] | None = None) -> None:
    """The same project callback configured twice must not write the same files or log the same keys."""
    names = names or [f"trainer.callbacks[{i}]" for i in range(len(callbacks))]
    seen: list[tuple[str, object, set[str]]] = []
    for name, cb in zip(names, callbacks):
        out = _outputs(cb)
        for other_name, other, other_out in seen:
            clash = out & other_out
            if type(other) is type(cb) and clash:
                shown = sorted(clash)[:3]
                raise ValueError(f"{name} and {other_name}: callbacks.{type(cb).__name__} is configured twice and "
                                 f"both write {shown}{' ...' if len(clash) > 3 else ''}; expected it once (or "
                                 f"give the copies distinct outputs, e.g. another metrics_filename / filename)")
        seen.append((name, cb, out))
