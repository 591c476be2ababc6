"""Pairwise scorers in the shared evaluation: same search, tie rule, masks and metrics as embeddings; SSIM."""
import numpy as np
import pytest
import torch

from callbacks import evaluate_retrieval, exact_topk
from callbacks.pairwise import pairwise_scorer, pairwise_topk
from callbacks.search import pairwise_distance
from lightning_modules.components.ssim import ssim_matrix


def neg_euclidean(q, g):
    return -pairwise_distance(q, g, "euclidean")


@pytest.mark.parametrize("chunks", [(3, 4), (64, 64)])
def test_pairwise_topk_equals_exact_topk(chunks):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (23, 4), generator=gen).float()          # many exact ties
    ids, groups = torch.arange(23), torch.arange(23) % 4
    for candidates in ("all", "same_group", "other_group"):
        kw = dict(query_ids=ids, gallery_ids=ids, query_groups=groups, gallery_groups=groups, candidates=candidates)
        d_ref, i_ref = exact_topk(x, x, 7, "euclidean", query_chunk=chunks[0], gallery_chunk=chunks[1], **kw)
        d, i = pairwise_topk(x, x, 7, neg_euclidean, query_chunk=chunks[0], gallery_chunk=chunks[1], **kw)
        assert torch.equal(i, i_ref), candidates
        finite = torch.isfinite(d_ref)
        assert torch.allclose(d[finite], d_ref[finite], atol=1e-5) and torch.equal(torch.isinf(d), ~finite)


def test_evaluate_retrieval_pairwise_path_gives_the_embedding_metrics():
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(17, 5, generator=gen), torch.randn(29, 5, generator=gen)
    ql, gl = torch.randint(0, 3, (17,), generator=gen), torch.randint(0, 3, (29,), generator=gen)
    ref = evaluate_retrieval(q, g, ql, gl, k_values=[1, 5, 10], distance="euclidean")
    got = evaluate_retrieval(q, g, ql, gl, k_values=[1, 5, 10], pairwise_score=neg_euclidean, query_chunk=4,
                             gallery_chunk=6)
    assert got == pytest.approx(ref, abs=1e-9)


def test_scorer_shape_and_missing_scorer_are_clear_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"returned shape \(5,\), expected \(5, 5\)"):
        pairwise_topk(x, x, 2, lambda a, b: a.sum(1))
    with pytest.raises(TypeError, match="pairwise_score"):
        pairwise_scorer(torch.nn.Linear(1, 1), "pairwise")
    assert pairwise_scorer(torch.nn.Linear(1, 1), "euclidean") is None


def test_batched_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(3, 24, 30, generator=gen) * 255).round()
    b = (torch.rand(4, 24, 30, generator=gen) * 255).round()
    b[0] = (a[0] * 0.6 + 40).round()                                  # a similar pair
    b[1] = a[1]                                                      # an identical pair
    got = ssim_matrix(a, b, max_pixels=3000).numpy()                 # several pair blocks
    ref = np.array([[structural_similarity(x.numpy(), y.numpy(), data_range=255) for y in b] for x in a])
    assert np.abs(got - ref).max() < 1e-6 and got[1, 1] == pytest.approx(1.0)


def test_ssim_baseline_through_the_shared_evaluation(one_thread):
    from lightning_modules.ssim_baseline import SSIMBaseline

    model = SSIMBaseline()
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(12, 3, 16, 16, generator=gen).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    reps = model.embed(images)
    labels = torch.arange(12) % 2
    out, dist, idx = evaluate_retrieval(reps, reps, labels, labels, k_values=[3], metrics=["P"],
                                        query_ids=torch.arange(12), gallery_ids=torch.arange(12),
                                        pairwise_score=model.pairwise_score, return_neighbours=True)
    full = ssim_matrix(reps, reps).fill_diagonal_(-np.inf)
    order = torch.tensor(np.argsort(-full.numpy(), axis=1, kind="stable")[:, :3])
    assert torch.equal(idx, order) and out["P@3"] == pytest.approx((labels[order] == labels[:, None]).float().mean())


@pytest.mark.slow
def test_pairwise_metrics_are_ddp_exact(tmp_path):
    """SSIM (a pairwise scorer) validated by two gloo processes gives the single-process numbers."""
    import os
    import subprocess
    import sys

    from experiments.cli import RetrievalCLI
    from tests.conftest import CONFIGS, chexpert_tiny_args, read_metrics

    config = CONFIGS / "ssim_phantom.yaml"
    data_root = f"--data.init_args.data_root={tmp_path / 'CheXpert-v1.0-small'}"
    args = lambda run: [*chexpert_tiny_args(config.read_text(), run), "--data.init_args.batch_size=3",  # noqa: E731
                        data_root, "--trainer.accelerator=cpu"]
    RetrievalCLI(args=["validate", "--config", str(config), *args(tmp_path / "single"), "--trainer.devices=1"])
    cmd = [sys.executable, "-m", "experiments", "validate", "--config", str(config), *args(tmp_path / "ddp"),
           "--trainer.devices=2", "--trainer.strategy=ddp"]
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=CONFIGS.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, double = (read_metrics(tmp_path / run)["val"]["metrics"] for run in ("single", "ddp"))
    assert single["val/n_gallery"] % 2 == 1 or single["val/n_queries"] % 2 == 1   # DistributedSampler pads
    assert double.keys() == single.keys()
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-9), key
