"""Load test of the search service on loopback: N concurrent clients for a bounded time against
``python -m experiments serve`` (its own process), p50 / p99 latency and queries/s, for a 100k-item index
(flat and IVF), plus the time to build each index.

The archive is 100k random clustered 512-d embeddings (ResNet-18's width) with metadata and 16 px
thumbnails, indexed by ``SearchIndex.build`` under a SimSiam ResNet-18 manifest (weights saved as the
checkpoint), so the server loads it exactly like a real index. Two request kinds:
- ``embedding``: POST /api/search/embedding (a precomputed query embedding; the goal excludes embedding);
- ``upload``: POST /api/search with CT_small.dcm (decode + preprocessing + ResNet-18 embed at 64 px + search).
Goals: p50 < 100 ms for the flat 100k index (embedding requests), no errors with 8 clients.

    python benchmarks/search_service.py                      # 100k items, 10 s per setting
    python benchmarks/search_service.py --items 20000 --seconds 5
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_index(folder: Path, n: int, dim: int, kind: str, nlist: int | None) -> float:
    """Write an index of ``n`` clustered embeddings; returns the build time (FAISS + recall + files) in s."""
    import torch

    from lightning_modules.simsiam import SimSiam
    from search.build import method_manifest
    from search.index import SearchIndex, sha256_file
    from search.preprocess import Preprocessing

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    emb = centres[rng.integers(0, 256, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    meta = [{"id": i, "patient_id": str(i // 20), "label_names": ["liver" if i % 3 else "no liver"],
             "source": f"archive/{i // 20:06d}.nii.gz", "slice": i % 20} for i in range(n)]
    thumbs = rng.integers(0, 255, size=(n, 16, 16), dtype=np.uint8)
    model = SimSiam(backbone="resnet18", proj_hidden_dim=64, proj_dim=64, pred_hidden_dim=16).eval()
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "model.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    manifest = method_manifest(model, None, None, Preprocessing("hu_window", 64, 3, (-200.0, 300.0)))
    manifest.update(checkpoint=str(ckpt), checkpoint_sha256=sha256_file(ckpt))
    start = time.perf_counter()
    index = SearchIndex.build(folder, emb, meta, thumbs, "euclidean", manifest, kind=kind, nlist=nlist)
    took = time.perf_counter() - start
    info = index.manifest["index"]
    print(f"{kind:>4} index of {n} x {dim}: built in {took:.1f} s (FAISS {info['build_seconds']} s)"
          + (f", recall@10 vs exact {info['recall@10']:.3f} {info['params']}" if "recall@10" in info else ""),
          flush=True)
    np.save(folder / "queries.npy", emb[rng.choice(n, 256, replace=False)] + 0.1)
    return took


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "experiments", "serve", f"--index={folder}", f"--port={port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 300 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, clients: int, seconds: float, request, pid: int) -> dict:
    """``clients`` threads, each sending ``request(client, i)`` back to back for ``seconds``; also the
    server's CPU time per answered query (what a query costs, whatever else the machine is doing)."""
    import httpx

    lat, errors, lock = [], [], threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(c):
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    r = request(client, c * 100_000 + i)
                    ok = r.status_code == 200
                except httpx.HTTPError as err:
                    ok, r = False, err
                dt = time.perf_counter() - t
                with lock:
                    (lat if ok else errors).append(dt if ok else str(r)[:200])
                i += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    cpu0, load0 = cpu_seconds(pid), os.getloadavg()[0]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / max(len(lat), 1)
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"clients": clients, "n": len(lat), "errors": len(errors), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "qps": len(lat) / wall, "first_error": errors[:1],
            "cpu_ms": cpu_ms, "load": (load0 + os.getloadavg()[0]) / 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    from pydicom.data import get_testdata_file

    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        for kind in ("flat", "ivf"):
            folder = Path(tmp) / kind
            build_s = make_index(folder, args.items, args.dim, kind, args.nlist if kind == "ivf" else None)
            queries = np.load(folder / "queries.npy")
            proc, url = serve(folder)
            try:
                def by_embedding(client, i, queries=queries):
                    return client.post("/api/search/embedding",
                                       json={"embedding": queries[i % len(queries)].tolist(), "k": args.k})

                def by_upload(client, i):
                    return client.post("/api/search", files={"file": ("CT_small.dcm", dicom)},
                                       data={"k": str(args.k), "previews": "false"})

                load(url, 2, 2.0, by_embedding, proc.pid)  # warm-up
                for request, name in ((by_embedding, "embedding"), (by_upload, "upload")):
                    if name == "upload" and kind != "flat":
                        continue
                    for clients in args.clients:
                        r = load(url, clients, args.seconds, request, proc.pid)
                        rows.append({"index": kind, "request": name, "build_s": build_s, **r})
                        print(f"{kind:>4} {name:>9} clients={clients}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} "
                              f"ms, {r['qps']:.1f} q/s, server CPU {r['cpu_ms']:.1f} ms/query, load {r['load']:.1f}, "
                              f"{r['n']} ok, {r['errors']} errors {r['first_error']}",
                              flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"\n| index ({args.items} x {args.dim}) | request | clients | p50 ms | p99 ms | queries/s | errors "
          f"| server CPU ms / query | load avg | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['request']} | {r['clients']} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['qps']:.1f} | {r['errors']} | {r['cpu_ms']:.1f} | {r['load']:.1f} | {r['build_s']:.1f} |")


if __name__ == "__main__":
    main()
