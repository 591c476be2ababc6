"""The shared retrieval-evaluation callback: the evaluation protocol is configuration, not code."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from callbacks.catalogue import CatalogueProtocol
from callbacks.distributed import embed_dataset
from callbacks.evaluate import evaluate_retrieval, retrieved_relevance
from callbacks.io import run_dir, update_json
from callbacks.pairwise import pairwise_scorer
from callbacks.protocol_checks import check_monitors, check_protocol
from callbacks.provenance import evaluation_section
from callbacks.relevance import make_relevance
from callbacks.search import KEYED_CANDIDATES
from callbacks.validation import check_policy, metric_keys, nan_metrics, screen_embeddings

log = logging.getLogger(__name__)


@dataclass
class Neighbours:
    """Top-k of the last evaluation of a stage (first candidate set), for figures: row q = query index q of
    ``query_split``; ``indices`` are positions in ``gallery_split`` (-1 = no candidate)."""

    query_split: str
    gallery_split: str
    distance: str
    distances: Tensor
    indices: Tensor
    relevance: Tensor
    epoch: int


#: candidate set name in the config -> (exact_topk ``candidates``, key infix)
CANDIDATE_SETS = {"all": ("all", ""), "same_patient": ("same_group", "same_patient/"),
                  "cross_patient": ("other_group", "cross_patient/"),
                  "cross_patient_same_key": ("other_group_same_key", "cross_patient_same_key/")}


class RetrievalEvaluation(Callback):
    """Embeds query and gallery splits with ``embed()``, searches exactly, logs metrics every epoch.

    Protocol (all configuration):
        gallery_split: split searched (``train``: the un-augmented training set, as in the CT-liver paper);
            ``None`` = leave-one-out inside the query split (the query itself is never retrieved).
        val_query_split / test_query_split: splits giving the queries in validation and test.
        relevance: ``same_label``, ``label_overlap`` (multi-label, shares >= 1 finding) or
            ``shared_label_count`` (graded), see ``callbacks.relevance``; ``visual_similarity`` (graded, from
            per-item attributes: set ``label_key: attributes``, see ``callbacks.visual_similarity``).
        relevance_args: keyword arguments of the named relevance rule (e.g. visual_similarity's ``terms``).
        distance: ``cosine``, ``euclidean`` or ``hamming``; None = the module's ``search_space``.
        k_values, metrics: cut-offs and metric families (``mP``, ``P``, ``AP``, ``nDCG``, ``nDCG_lin``,
            ``kNN``), definitions in ``callbacks.retrieval_metrics`` / docs/metrics.md.
        candidate_sets: ``all`` (keys ``val/mP@5``), ``same_patient`` / ``cross_patient`` (keys
            ``val/same_patient/AP@10``...), restricting the gallery by ``group_key``;
            ``cross_patient_same_key``: other patients whose ``same_key`` equals the query's (e.g. ``same_key:
            sequence``: a T2 query searches the other patients' T2 images; keys ``val/cross_patient_same_key/``).
        protocols: ``all_queries`` (every query searches the gallery, the keys above) and/or ``paper``
            (IG-CBIR's seeded catalogues drawn from the query split, ``callbacks.catalogue``; keys
            ``val/paper/P@cat10`` ...); ``catalogue``: that protocol's settings (``CatalogueProtocol``).
        distance ``pairwise`` (or a module whose ``search_space`` is ``pairwise``): the module's
            ``pairwise_score`` ranks the gallery instead of an embedding distance (``callbacks.pairwise``).
        non_finite: NaN / inf embeddings are never ranked. ``error`` (default) stops with a message naming
            the split and the number of items; ``warn`` warns and logs NaN metrics for that evaluation
            (``ModelCheckpoint`` ranks NaN below every real score).
        key_prefix: inserted after the stage in every key (e.g. ``graded/`` -> ``val/graded/nDCG@10``), so two
            instances with different protocols can log side by side (give them different metrics_filename).

    Embedding variants: a module with ``embedding_variants = {name: distance}`` and ``embed_variants(images)
    -> {"embedding": ..., name: ...}`` (e.g. attention hashing: binary codes + relaxed ``float`` codes) also
    gets every metric of each variant, searched with that variant's distance, under ``<stage>/<name>/...``.

    Under DDP every rank embeds its shard, all ranks gather and de-duplicate by dataset index, then compute
    the same numbers, so ``ModelCheckpoint(monitor="val/mP@5")`` works on any rank. Validation and test
    results are also written to ``metrics.json`` in the run folder (rank 0, atomic write).
    """

    def __init__(self, gallery_split: str | None = "train", val_query_split: str = "val",
                 test_query_split: str = "test", relevance: str = "same_label", distance: str | None = None,
                 k_values: list[int] = (1, 5, 10),
                 metrics: list[str] = ("mP", "P", "AP", "nDCG", "nDCG_lin", "kNN"),
                 candidate_sets: list[str] = ("all",), label_key: str = "label", group_key: str = "patient_id",
                 every_n_epochs: int = 1, batch_size: int | None = None,
                 metrics_filename: str = "metrics.json", protocols: list[str] = ("all_queries",),
                 catalogue: dict | None = None, relevance_args: dict | None = None, non_finite: str = "error",
                 key_prefix: str = "", same_key: str | None = None):
        unknown = [c for c in candidate_sets if c not in CANDIDATE_SETS]
        if unknown:
            raise ValueError(f"candidate_sets {unknown}: expected names from {sorted(CANDIDATE_SETS)}")
        if "cross_patient_same_key" in candidate_sets and not same_key:
            raise ValueError("candidate_sets cross_patient_same_key needs same_key: the per-item key a candidate "
                             "must share with its query (e.g. sequence)")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: expected >= 1")
        bad = [p for p in protocols if p not in ("all_queries", "paper")] or ([] if protocols else ["(none)"])
        if bad:
            raise ValueError(f"protocols {bad}: expected a non-empty list of all_queries, paper")
        self.protocols = list(protocols)
        self.catalogue = CatalogueProtocol(**(catalogue or {}))
        self.gallery_split = gallery_split
        self.query_splits = {"val": val_query_split, "test": test_query_split}
        self.relevance = relevance
        self.relevance_args = dict(relevance_args or {})
        self.distance = distance
        self.k_values = sorted(set(int(k) for k in k_values))
        self.metrics = list(metrics)
        self.candidate_sets = list(candidate_sets)
        self.label_key = label_key
        self.group_key = group_key
        self.same_key = same_key
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.metrics_filename = metrics_filename
        self.non_finite = check_policy(non_finite)
        self.key_prefix = key_prefix
        self.last_results: dict[str, dict[str, float]] = {}
        self.neighbours: dict[str, Neighbours] = {}

    # -- protocol ------------------------------------------------------------------------------------
    def _embed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "retrieval_dataset"):
            raise TypeError("RetrievalEvaluation needs a DataModule with retrieval_dataset(split) "
                            "(subclass datamodules.base.RetrievalDataModule)")
        return embed_dataset(trainer, pl_module, dm.retrieval_dataset(split),
                             batch_size=self.batch_size or dm.batch_size, num_workers=dm.num_workers,
                             keys=(self.label_key, self.group_key) + ((self.same_key,) if self.same_key else ()))

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Run the protocol for ``stage`` (``val`` or ``test``); returns ``{"<stage>/<key>": value}``."""
        query_split = self.query_splits[stage]
        queries = self._embed(trainer, pl_module, query_split)
        loo = self.gallery_split is None or self.gallery_split == query_split
        all_queries = "all_queries" in self.protocols
        gallery = queries if loo or not all_queries else self._embed(trainer, pl_module, self.gallery_split)
        distance = self.distance or getattr(pl_module, "search_space", "cosine")
        scorer = pairwise_scorer(pl_module, distance)
        rule = make_relevance(self.relevance, self.relevance_args, trainer.datamodule)
        if screen_embeddings({query_split: queries["embedding"], self.gallery_split: gallery["embedding"]}
                             if not loo else {query_split: queries["embedding"]}, self.non_finite,
                             items=scorer is not None):
            self.neighbours.pop(stage, None)
            labels = torch.as_tensor(queries[self.label_key])
            results = nan_metrics(metric_keys(self.metrics, self.k_values,
                                              self.key_infixes(), stage,
                                              single_label=labels.ndim == 1 and not labels.is_floating_point()))
            self._write(trainer, stage, results, query_split, distance)
            return results
        results: dict[str, float] = {}
        counts: dict[str, float] = {}
        variants = [("embedding", distance, "")] + [
            (name, dist, f"{name}/") for name, dist in getattr(pl_module, "embedding_variants", {}).items()]
        pairs = [(v, c) for v in variants for c in self.candidate_sets] if all_queries else []
        for (emb, dist, variant), name in pairs:
            candidates, infix = CANDIDATE_SETS[name]
            infix = f"{self.key_prefix}{variant}{infix}"
            needs_groups = candidates != "all"
            if candidates in KEYED_CANDIDATES:
                q_groups, g_groups = (_keyed_groups(d, self.group_key, self.same_key) for d in (queries, gallery))
            else:
                q_groups, g_groups = queries.get(self.group_key), gallery.get(self.group_key)
            values, distances, indices = evaluate_retrieval(
                queries[emb], gallery[emb], queries[self.label_key], gallery[self.label_key],
                k_values=self.k_values, distance=dist, relevance=rule, metrics=self.metrics,
                query_ids=queries["index"] if loo else None, gallery_ids=gallery["index"] if loo else None,
                query_groups=q_groups if needs_groups else None,
                gallery_groups=g_groups if needs_groups else None, candidates=candidates,
                return_neighbours=True, pairwise_score=scorer)
            for key, value in values.items():
                target = counts if key.startswith("n_") else results
                target[f"{stage}/{infix}{key}"] = float(value)
            if name == self.candidate_sets[0] and emb == "embedding":
                self.neighbours[stage] = Neighbours(
                    query_split, query_split if loo else self.gallery_split, distance, distances, indices,
                    retrieved_relevance(rule, torch.as_tensor(queries[self.label_key]),
                                        torch.as_tensor(gallery[self.label_key]), indices),
                    trainer.current_epoch)
        if "paper" in self.protocols and stage in self.catalogue.stages:
            paths = getattr(trainer.datamodule, "paths", None)
            results.update({f"{stage}/{k}": v for k, v in self.catalogue.evaluate(
                queries["embedding"], queries[self.label_key], paths and (lambda: paths(query_split)),
                distance, scorer).items()})
        self._write(trainer, stage, {**results, **counts}, query_split, distance)
        return results

    def key_infixes(self) -> list[str]:
        """The part between the stage and the metric in each logged key, per candidate set."""
        return [self.key_prefix + CANDIDATE_SETS[c][1] for c in self.candidate_sets]

    def _write(self, trainer: pl.Trainer, stage: str, values: dict[str, float], query_split: str,
               distance: str) -> None:
        self.last_results[stage] = values
        folder = run_dir(trainer)  # a collective under DDP (broadcast): every rank must call it
        if trainer.is_global_zero:
            protocol = {"query_split": query_split, "gallery_split": self.gallery_split or "leave-one-out",
                        "relevance": self.relevance, "distance": distance, "k_values": self.k_values,
                        "candidate_sets": self.candidate_sets, "protocols": self.protocols}
            if self.relevance_args:
                protocol["relevance_args"] = self.relevance_args
            if self.same_key:
                protocol["same_key"] = self.same_key
            section = {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                       "protocol": protocol, "metrics": values, **evaluation_section(trainer)}
            update_json(folder / self.metrics_filename, stage, section)

    def _log(self, pl_module: pl.LightningModule, results: dict[str, float]) -> None:
        for key, value in results.items():
            # Identical on every rank by construction: no reduction needed.
            pl_module.log(key, value, on_epoch=True, sync_dist=False, batch_size=1)

    # -- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Protocol and monitor keys checked before the first step (callbacks/protocol_checks.py)."""
        check_protocol(self, trainer, stage)
        if stage == "fit":
            check_monitors(trainer.callbacks)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch:
            return
        self._log(pl_module, self.evaluate(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, self.evaluate(trainer, pl_module, "test"))


def _keyed_groups(items: dict, group_key: str, same_key: str) -> Tensor:
    """[N, 2] (group, key) columns for the ``other_group_same_key`` candidates."""
    if same_key not in items:
        raise KeyError(f"candidate set cross_patient_same_key: the retrieval samples carry no {same_key!r} "
                       f"(same_key); found {sorted(items)}")
    return torch.stack([torch.as_tensor(items[group_key]).long(), torch.as_tensor(items[same_key]).long()], 1)
