"""Slow check of SupCon on the BraTS phantom: training beats the untrained encoder and the equal-steps
frozen-weights control (``assert_learns``, 2 of 3 seeds) and clearly beats random ranking.

Protocol: 240 phantom patients (180 train / 60 test, 240 test queries of one sequence image each, 32 px),
cross-patient candidates, nDCG@10 (linear gain) under the *tumour* part of the visual-similarity relevance
(IoU of the whole-tumour masks + GFD of the tumour shape). These are the terms that the four sequences of a
slice share, which is what SupCon's positives teach. The grey-histogram term is left out: an untrained CNN
scores on it by retrieving images of the query's own sequence, which SupCon is trained to ignore.
docs/brats_supcon.md gives the numbers, also for the default rule and for same-sequence candidates.
"""
import numpy as np
import pytest
import torch

from callbacks import RetrievalEvaluation, evaluate_retrieval
from callbacks.visual_similarity import VisualSimilarity
from datamodules.brats import BraTSDataModule
from datamodules.synthetic.brats import write_brats_phantom
from lightning_modules.supcon import SupCon
from tests.learning import assert_learns

KEY = "test/cross_patient/nDCG_lin@10"
TUMOUR = {"wt_mask": {"measure": "iou", "weight": 1.0},
          "gfd": {"measure": "l1_exp", "weight": 1.0, "scale": 0.35}}


@pytest.fixture(scope="module")
def brats_dm(tmp_path_factory):
    root = write_brats_phantom(tmp_path_factory.mktemp("brats_learn") / "BraTS2021", n_patients=240,
                               shape=(32, 32, 10), seed=0)
    dm = BraTSDataModule(str(root), image_size=32, attribute_mask_size=32, val_fraction=0, test_fraction=0.25,
                         batch_size=16, num_workers=0)
    dm.setup()
    assert len(dm.retrieval_dataset("test")) >= 100
    return dm


def make_model():
    return SupCon(proj_hidden_dim=128, proj_dim=64, augment=False, lr=3e-3)


def evaluation(terms=None):
    return RetrievalEvaluation(gallery_split=None, relevance="visual_similarity", label_key="attributes",
                               relevance_args={"terms": terms} if terms else None, k_values=[10],
                               metrics=["nDCG_lin"], candidate_sets=["cross_patient"])


def random_ranking_ndcg(dm, terms=None, k=10, seeds=5):
    """nDCG@k of random embeddings on the test split, same relevance and candidates (mean over seeds)."""
    ds = dm.retrieval_dataset("test")
    attrs = torch.stack([ds[i]["attributes"] for i in range(len(ds))])
    groups = torch.stack([ds[i]["patient_id"] for i in range(len(ds))])
    rule = VisualSimilarity(terms).bind(dm)
    ids = torch.arange(len(ds))
    scores = []
    for seed in range(seeds):
        emb = torch.randn(len(ds), 16, generator=torch.Generator().manual_seed(seed))
        scores.append(evaluate_retrieval(emb, emb, attrs, attrs, k_values=[k], relevance=rule, metrics=["nDCG_lin"],
                                         query_ids=ids, gallery_ids=ids, query_groups=groups, gallery_groups=groups,
                                         candidates="other_group")[f"nDCG_lin@{k}"])
    return float(np.mean(scores))


@pytest.mark.slow
def test_supcon_training_improves_tumour_ndcg(brats_dm, tmp_path, one_thread):
    results = assert_learns(make_model, lambda: brats_dm, lambda: evaluation(TUMOUR), epochs=4, key=KEY,
                            tmp_path=tmp_path, margin=0.02)
    random = random_ranking_ndcg(brats_dm, TUMOUR)
    print(f"random ranking {random:.3f}")
    assert min(r.trained for r in results if r.passed(0.02)) > random + 0.08
