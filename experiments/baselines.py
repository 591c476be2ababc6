"""Non-learned baselines: how far retrieval gets without any training, under a config's own protocol.

``python -m experiments.baselines --config experiments/configs/simsiam_hu_phantom.yaml [--config ...]``

For each config the data and the ``RetrievalEvaluation`` protocol (splits, relevance, distance, k, candidate
sets) come from the config; the embedding is replaced by a fixed feature:

* ``raw_pixels``: the model input ``image`` itself, flattened (Euclidean);
* ``hu_histogram``: the histogram of the crop / slice in HU (key ``hu``; 50 HU bins from -1000 to 1500,
  normalised; Euclidean);
* ``slice_index`` (CT only): the axial position of the slice in its volume (a confound probe: a phantom on
  which it scores well gives the label away through the scan geometry).

Prints one Markdown table (test split) and writes ``<out>/<config>/<baseline>/metrics.json`` in the run format,
so ``python -m experiments report <out>`` puts the baselines in the same tables as trained runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from callbacks.evaluate import evaluate_retrieval
from callbacks.retrieval_evaluation import CANDIDATE_SETS, RetrievalEvaluation
from medcbir_io import update_json

HU_BINS = torch.arange(-1000.0, 1501.0, 50.0)


def features(sample: dict, name: str) -> torch.Tensor | None:
    """The fixed feature ``name`` of one sample (None when the sample lacks what it needs)."""
    if name == "raw_pixels":
        return sample["image"].float().flatten()
    if name == "hu_histogram":
        if "hu" not in sample:
            return None
        hu = sample["hu"].float().flatten().clamp(HU_BINS[0], HU_BINS[-1] - 1e-3)
        hist = torch.histc(hu, bins=len(HU_BINS) - 1, min=float(HU_BINS[0]), max=float(HU_BINS[-1]))
        return hist / hist.sum().clamp_min(1)
    if name == "slice_index":
        return sample["slice_index"].float().reshape(1) if "slice_index" in sample else None
    raise ValueError(f"unknown baseline {name!r}")


def split_features(dataset, name: str, keys: tuple[str, ...]) -> dict | None:
    rows = [dataset[i] for i in range(len(dataset))]
    feats = [features(r, name) for r in rows]
    if any(f is None for f in feats):
        return None
    out = {"embedding": torch.stack(feats)}
    for key in keys:
        out[key] = torch.stack([torch.as_tensor(r[key]) for r in rows])
    out["index"] = torch.arange(len(rows))
    return out


def evaluate_baseline(dm, protocol: RetrievalEvaluation, name: str, stage: str = "test") -> dict[str, float] | None:
    """``protocol`` (a RetrievalEvaluation's settings) on fixed features instead of a model's embeddings."""
    keys = (protocol.label_key, protocol.group_key)
    query_split = protocol.query_splits[stage]
    queries = split_features(dm.retrieval_dataset(query_split), name, keys)
    if queries is None:
        return None
    loo = protocol.gallery_split is None or protocol.gallery_split == query_split
    gallery = queries if loo else split_features(dm.retrieval_dataset(protocol.gallery_split), name, keys)
    results = {}
    for set_name in protocol.candidate_sets:
        candidates, infix = CANDIDATE_SETS[set_name]
        groups = candidates != "all"
        values = evaluate_retrieval(
            queries["embedding"], gallery["embedding"], queries[keys[0]], gallery[keys[0]],
            k_values=protocol.k_values, distance="euclidean", relevance=protocol.relevance, metrics=protocol.metrics,
            query_ids=queries["index"] if loo else None, gallery_ids=gallery["index"] if loo else None,
            query_groups=queries[keys[1]] if groups else None, gallery_groups=gallery[keys[1]] if groups else None,
            candidates=candidates)
        results.update({f"{stage}/{infix}{k}": float(v) for k, v in values.items()})
    return results


def run(config: str, out: Path, names: tuple[str, ...], overrides: list[str]) -> list[tuple[str, dict]]:
    from experiments.cli import RetrievalCLI

    cli = RetrievalCLI(args=["--config", config, *overrides], run=False)
    protocol = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RetrievalEvaluation))
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("test")
    rows = []
    for name in names:
        results = evaluate_baseline(dm, protocol, name)
        if results is None:
            continue
        update_json(out / Path(config).stem / name / "metrics.json", "test",
                    {"epoch": 0, "global_step": 0, "protocol": {"baseline": name, "config": config},
                     "metrics": results})
        rows.append((name, results))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="a method config (repeatable)")
    parser.add_argument("--baselines", nargs="+", default=["raw_pixels", "hu_histogram", "slice_index"])
    parser.add_argument("--out", default="runs/baselines")
    parser.add_argument("--metrics", nargs="+", default=["mP@5", "mP@10", "P@1", "kNN@5", "cross_patient/mP@10"])
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --data.init_args.data_root=...")
    args, extra = parser.parse_known_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    print("| config | baseline | queries | " + " | ".join(args.metrics) + " |")
    print("|---|---|---|" + "---|" * len(args.metrics))
    for config in args.config:
        for name, results in run(config, Path(args.out), tuple(args.baselines), [*args.overrides, *extra]):
            cells = [results.get(f"test/{m}") for m in args.metrics]
            n = results.get("test/n_queries_scored", np.nan)
            print(f"| {Path(config).stem} | {name} | {int(n)} | "
                  + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
