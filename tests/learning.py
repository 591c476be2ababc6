"""Controlled "training improves retrieval" checks, shared by every method's slow test.

A gain after training is only evidence of learning when it beats an equal-steps *control*: the same
optimiser steps on the same batches, but with weights that never move (BatchNorm running statistics still
update, and those alone change retrieval). :func:`learning_check` runs untrained / control / trained for
one seed; :func:`assert_learns` repeats it over seeds and requires the gain on most of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pytorch_lightning as pl

from callbacks.learning_curve import FrozenWeights, evaluate_after_steps  # noqa: F401 (FrozenWeights re-exported)


@dataclass
class LearningResult:
    seed: int
    untrained: float
    control: float
    trained: float
    n_queries: int = 0  # queries scored by the metric (the retrieval callback's count)

    def passed(self, margin: float) -> bool:
        return self.trained > max(self.untrained, self.control) + margin


def _score(make_model, make_data, make_callback, epochs: int, key: str, tmp_path: Path, seed: int,
           frozen: bool, trainer_kwargs: dict) -> tuple[float, int]:
    pl.seed_everything(seed)
    evaluation = make_callback()
    out = evaluate_after_steps(make_model(), make_data(), [evaluation], epochs, frozen, tmp_path, **trainer_kwargs)
    counts = getattr(evaluation, "last_results", {}).get("test", {})
    return float(out[key]), int(counts.get(f"{key.rsplit('/', 1)[0]}/n_queries_scored", 0))


def learning_check(make_model: Callable, make_data: Callable, make_callback: Callable, epochs: int, key: str,
                   tmp_path: Path, seed: int = 0, trainer_kwargs: dict | None = None) -> LearningResult:
    """``key`` of ``trainer.test`` for the untrained model, the frozen-weights control after ``epochs``, and
    the trained model after ``epochs``; same seed, data and batches for all three."""
    kw = dict(trainer_kwargs or {})
    untrained, n_queries = _score(make_model, make_data, make_callback, 0, key, tmp_path, seed, False, kw)
    control, _ = _score(make_model, make_data, make_callback, epochs, key, tmp_path, seed, True, kw)
    trained, _ = _score(make_model, make_data, make_callback, epochs, key, tmp_path, seed, False, kw)
    result = LearningResult(seed, untrained, control, trained, n_queries)
    print(f"{key} seed {seed}: untrained {untrained:.3f}  control (frozen weights) {control:.3f}  "
          f"trained {trained:.3f}  ({epochs} epochs, {n_queries} queries)")
    return result


def assert_learns(make_model: Callable, make_data: Callable, make_callback: Callable, epochs: int, key: str,
                  tmp_path: Path, margin: float, seeds: Sequence[int] = (0, 1, 2), need: int = 2,
                  trainer_kwargs: dict | None = None) -> list[LearningResult]:
    """Training beats both the untrained model and the equal-steps control by ``margin`` on ``need`` of
    ``seeds``. Stops as soon as the outcome is decided (2 passes of 3 seeds need only 2 runs)."""
    results: list[LearningResult] = []
    for seed in seeds:
        results.append(learning_check(make_model, make_data, make_callback, epochs, key, tmp_path, seed,
                                      trainer_kwargs))
        passes = sum(r.passed(margin) for r in results)
        fails = len(results) - passes
        if passes >= need or fails > len(seeds) - need:
            break
    passes = sum(r.passed(margin) for r in results)
    assert passes >= need, (f"{key}: training beat untrained and control by {margin} on {passes} of "
                            f"{len(results)} seeds (need {need}): {results}")
    return results
