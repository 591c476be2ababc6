"""IG-CBIR's catalogue protocol ("paper") and graded nDCG from an expert ranking CSV."""
import math

import numpy as np
import pytest
import torch

from callbacks.catalogue import CatalogueProtocol, graded_relevance, paper_catalogue, read_expert_ranking


def pool_labels(n=60, positives=22):
    labels = np.zeros(n, int)
    labels[np.random.default_rng(0).permutation(n)[:positives]] = 1
    return labels


def test_paper_catalogue_is_stratified_and_queries_the_last_positive_left():
    from sklearn.model_selection import train_test_split

    labels = pool_labels()
    for size, expected_k in ((10, 4), (20, 7), (30, 11)):          # the paper's K at ~37 % prevalence
        cat, q = paper_catalogue(labels, size, 42)
        ref_cat, rest = train_test_split(np.arange(60), train_size=size, stratify=labels, random_state=42)
        assert np.array_equal(cat, ref_cat) and labels[cat].sum() == expected_k
        assert q not in cat and labels[q] == 1 and q == [i for i in rest if labels[i]][-1]
    assert not np.array_equal(paper_catalogue(labels, 10, 1)[0], paper_catalogue(labels, 10, 42)[0])


def test_catalogue_larger_than_the_pool_is_one_clear_error():
    with pytest.raises(ValueError, match="catalogue of 30 images needs a pool of more than 30 images.*holds 30"):
        paper_catalogue(pool_labels(30, 10), 30, 42)


def test_protocol_precision_mean_min_max():
    labels = torch.tensor(pool_labels())
    perfect = labels.float().unsqueeze(1)                             # positives at 1, negatives at 0
    out = CatalogueProtocol(sizes=[10, 20]).evaluate(perfect, labels, None, "euclidean")
    assert out["paper/P@cat10"] == out["paper/P@cat10_min"] == out["paper/P@cat10_max"] == 1.0
    assert out["paper/K@cat10"] == 4 and out["paper/K@cat20"] == 7
    noise = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    out = CatalogueProtocol(sizes=[10]).evaluate(noise, labels, None, "euclidean")
    assert 0 <= out["paper/P@cat10_min"] <= out["paper/P@cat10"] <= out["paper/P@cat10_max"] <= 1
    assert out["paper/P@cat10_min"] < out["paper/P@cat10_max"]


def write_ranking(path, rows):
    path.write_text("query,image,rank\n" + "".join(f"{q},{i},{r}\n" for q, i, r in rows))
    return path


def test_expert_ndcg_on_a_hand_made_ranking(tmp_path):
    names = ["v/q.jpg", "v/b.jpg", "v/c.jpg", "v/d.jpg"]
    csv = write_ranking(tmp_path / "ranking.csv", [("v/q.jpg", "v/b.jpg", 1), ("v/q.jpg", "v/c.jpg", 2),
                                                   ("v/q.jpg", "v/d.jpg", 3)])
    assert graded_relevance(torch.tensor([1, 2, 3]), 3).tolist() == [2.0, 1.5, 1.0]
    assert graded_relevance(torch.tensor([1, 10]), 10).tolist() == [5.5, 1.0]        # the paper's 1..5.5
    emb = torch.tensor([[0.0], [2.0], [1.0], [3.0]])                 # the method ranks c, b, d
    out = CatalogueProtocol(sizes=[2], ndcg_k=[3]).expert_ndcg(emb, read_expert_ranking(csv, names), "euclidean")
    gain = lambda r: 2 ** r - 1  # noqa: E731
    dcg = gain(1.5) + gain(2.0) / math.log2(3) + gain(1.0) / 2
    idcg = gain(2.0) + gain(1.5) / math.log2(3) + gain(1.0) / 2
    assert out["paper/nDCG_expert@3"] == pytest.approx(dcg / idcg) and out["paper/n_expert_queries"] == 1


def test_ranking_naming_an_unknown_image_is_one_clear_error(tmp_path):
    csv = write_ranking(tmp_path / "ranking.csv", [("v/q.jpg", "v/b.jpg", 1), ("v/q.jpg", "v/zzz.jpg", 2)])
    with pytest.raises(ValueError, match=r"ranking.csv line 3: image = 'v/zzz.jpg' is not an image of the"):
        read_expert_ranking(csv, ["v/q.jpg", "v/b.jpg"])
    bad = write_ranking(tmp_path / "dup.csv", [("v/q.jpg", "v/b.jpg", 2)])
    with pytest.raises(ValueError, match=r"ranks \[2\]; expected 1..1"):
        read_expert_ranking(bad, ["v/q.jpg", "v/b.jpg"])


def test_paper_protocol_through_the_callback(tmp_path, one_thread):
    """SSIM on a small CheXpert phantom, test stage: paper keys with K = positives, expert nDCG from a file."""
    import pytorch_lightning as pl

    from callbacks import RetrievalEvaluation
    from datamodules.chexpert import CheXpertDataModule
    from datamodules.synthetic.chexpert import write_chexpert_phantom
    from lightning_modules.ssim_baseline import SSIMBaseline

    root = write_chexpert_phantom(tmp_path / "CheXpert-v1.0-small", 6, 40, (40, 36), seed=1)
    dm = CheXpertDataModule(str(root), image_size=24, projections=None, num_workers=0)
    paths = dm.paths("test")
    ranking = write_ranking(tmp_path / "r.csv", [(paths[0], p, r) for r, p in enumerate(paths[1:11], 1)])
    cb = RetrievalEvaluation(k_values=[1], metrics=["P"], protocols=["paper"],
                             catalogue={"sizes": [10, 20], "expert_ranking": str(ranking), "ndcg_k": [5]})
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    out = trainer.test(SSIMBaseline(), datamodule=dm, verbose=False)[0]
    labels = np.array([int(x["label"]) for x in dm.retrieval_dataset("test")])
    k10 = np.mean([labels[paper_catalogue(labels, 10, s)[0]].sum() for s in (42, 1, 27, 57, 77)])
    assert out["test/paper/K@cat10"] == pytest.approx(k10)
    assert out["test/paper/P@cat10_min"] <= out["test/paper/P@cat10"] <= out["test/paper/P@cat10_max"]
    assert 0 < out["test/paper/nDCG_expert@5"] <= 1 and "test/P@1" not in out
