"""``python -m experiments index|search|serve``: build an index, query it from a shell, serve the web page.

    index  --config <method config> [--ckpt_path C] [--index.split=train | --index.folder=DIR]
           [--index.out=DIR] [--index.kind=flat|ivf|hnsw] [--index.nlist=N] [--index.nprobe=N]
           [--index.hnsw_m=M] [--index.batch_size=B] [any --model... / --data... override]
    search --index DIR --query FILE [--k 10] [--slice Z] [--crop x0,y0,x1,y1] [--patient P]
           [--patients all|same|other] [--exclude-patient P] [--label NAME] [--json OUT] [--figure OUT]
    serve  --index DIR [--host 127.0.0.1] [--port 8000] [--max-upload-mb 32] [--relax-masks 200]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from search.index import IndexMismatch
from search.query import QueryError, parse_crop

log = logging.getLogger(__name__)
COMMANDS = ("index", "search", "serve")


def configured(rest: list[str]):
    """Model and DataModule of a LightningCLI command line (``--config`` and overrides), not run."""
    from experiments.cli import RetrievalCLI

    argv, sys.argv = sys.argv, sys.argv[:1]  # the arguments come from ``rest`` only
    try:
        cli = RetrievalCLI(args=rest, run=False)
    finally:
        sys.argv = argv
    config = cli.config.as_dict() if hasattr(cli.config, "as_dict") else dict(cli.config)
    config = {k: v for k, v in config.items() if k in ("model", "data", "seed_everything")}
    return cli.model, cli.datamodule, config


def check_config(manifest: dict, rest: list[str]) -> None:
    """Refuse an index when ``--config`` describes another method or preprocessing than its manifest."""
    from search.build import method_manifest

    model, dm, config = configured(rest)
    mine = json.loads(json.dumps(method_manifest(model, dm, None), default=str))
    for key in ("method", "model_init_args", "preprocessing"):
        if mine[key] != manifest.get(key):
            raise IndexMismatch(f"the index was built with another {key}: index {manifest.get(key)!r}, "
                                f"--config {mine[key]!r}")


def index_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments index", description="Build a search index.")
    p.add_argument("--ckpt_path", default=None, help="checkpoint of the method (none: initial weights)")
    p.add_argument("--index.split", dest="split", default=None, help="DataModule split to index (train)")
    p.add_argument("--index.folder", dest="folder", default=None, help="folder of DICOM/NIfTI/PNG/JPEG files")
    p.add_argument("--index.out", dest="out", default=None, help="index folder (default runs/index/<config>)")
    p.add_argument("--index.kind", dest="kind", default="flat", choices=("flat", "ivf", "hnsw"))
    p.add_argument("--index.nlist", dest="nlist", type=int, default=None)
    p.add_argument("--index.nprobe", dest="nprobe", type=int, default=None)
    p.add_argument("--index.hnsw_m", dest="hnsw_m", type=int, default=32)
    p.add_argument("--index.batch_size", dest="batch_size", type=int, default=64)
    args, rest = p.parse_known_args(argv)
    if args.split and args.folder:
        p.error("give either --index.split or --index.folder, not both")
    if not args.folder:
        args.split = args.split or "train"
    from search.build import build_index, folder_items, method_manifest, split_items
    from search.preprocess import from_datamodule

    model, dm, config = configured(rest)
    if args.ckpt_path:
        from search.model import load_state_dict

        model.load_state_dict(load_state_dict(args.ckpt_path))
    model.eval()
    prep = from_datamodule(dm)
    out = Path(args.out or Path("runs") / "index" / _config_name(rest))
    manifest = method_manifest(model, dm, config, prep)
    if args.folder:
        items, manifest["source"] = folder_items(Path(args.folder), prep), {"folder": str(Path(args.folder))}
    else:
        items, manifest["source"] = split_items(dm, args.split, args.batch_size), {"split": args.split}
    manifest = json.loads(json.dumps(manifest, default=str))
    index = build_index(model, items, out, manifest, args.ckpt_path, args.batch_size, kind=args.kind,
                        nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m)
    info = index.manifest["index"]
    recall = f", recall@10 vs exact {info['recall@10']:.4f}" if "recall@10" in info else ""
    print(f"indexed {len(index)} items in {out} ({info['kind']} {index.search_space}, built in "
          f"{info['build_seconds']} s{recall})")
    return 0


def _config_name(rest: list[str]) -> str:
    for i, a in enumerate(rest):
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1]).stem
        if a == "--config" and i + 1 < len(rest):
            return Path(rest[i + 1]).stem
    return "index"


def _crop(text: str | None):
    try:
        return parse_crop(text, "--crop")
    except QueryError as err:
        raise SystemExit(str(err)) from None


def results_table(results: list[dict]) -> str:
    """Plain-text table: rank, distance, label, patient, file (and slice)."""
    rows = [("rank", "distance", "label", "patient", "file")]
    for r in results:
        where = str(r.get("source") or "") + (f" [slice {r['slice']}]" if r.get("slice") is not None else "")
        rows.append((str(r["rank"]), f"{r['distance']:.4f}", ", ".join(r.get("label_names") or []) or "-",
                     str(r.get("patient_id") or "-"), where or f"item {r['id']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def results_figure(service, out: dict, path: Path) -> None:
    """Query (as the model sees it) + top-k thumbnails with distance, label and patient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    token = out["query"]["token"]
    images = [service._queries[token].mean(0).numpy()] + [
        np.asarray(service.index.thumbnails[r["id"]]) / 255.0 for r in out["results"]]
    fig, axes = plt.subplots(1, len(images), figsize=(1.8 * len(images), 2.3), squeeze=False)
    for j, (ax, img) in enumerate(zip(axes[0], images)):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_title(f"query\n{Path(out['query']['file']).name}", fontsize=7)
        else:
            r = out["results"][j - 1]
            ax.set_title(f"#{r['rank']} d={r['distance']:.3f}\n{', '.join(r['label_names']) or '-'} "
                         f"p{r.get('patient_id') or '-'}", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments search", description="Query an index with a file.")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--slice", type=int, default=None, help="frame / slice of a multi-frame DICOM or NIfTI")
    p.add_argument("--crop", default=None, help="x0,y0,x1,y1 region, fractions of the width / height")
    p.add_argument("--patient", default=None, help="the query's patient id (default: the DICOM PatientID)")
    p.add_argument("--patients", default="all", choices=("all", "same", "other"))
    p.add_argument("--exclude-patient", default=None, help="leave out this patient (= --patients other)")
    p.add_argument("--label", default=None, help="only items carrying this label name")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--figure", default=None, help="write query + top-k as a PNG figure here")
    p.add_argument("--ckpt_path", default=None, help="the index's checkpoint, if it moved (hash-checked)")
    args, rest = p.parse_known_args(argv)
    from search.service import SearchService

    service = SearchService(args.index, args.ckpt_path)
    if rest:
        check_config(service.manifest, rest)
    patient, patients = args.patient, args.patients
    if args.exclude_patient:
        patient, patients = args.exclude_patient, "other"
    query = Path(args.query)
    if not query.is_file():
        raise SystemExit(f"--query {query}: file not found")
    out = service.search_file(query.read_bytes(), query.name, args.k, args.slice, _crop(args.crop), patient,
                              patients, args.label)
    out["query"]["file"] = str(query)
    print(results_table(out["results"]))
    if args.figure:
        results_figure(service, out, Path(args.figure))
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in out.items()}, indent=2))
    return 0


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments serve", description="Serve the search page.")
    p.add_argument("--index", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=32.0)
    p.add_argument("--relax-masks", type=int, default=200, help="RELAX masks per explanation (paper 3000)")
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS / torch threads per request (concurrent requests run in parallel)")
    p.add_argument("--ckpt_path", default=None)
    args = p.parse_args(argv)
    import faiss
    import torch
    import uvicorn

    faiss.omp_set_num_threads(args.threads)
    faiss.cvar.distance_compute_blas_threshold = 2  # a batch of 2+ concurrent queries: one pass (BLAS)
    torch.set_num_threads(args.threads)

    from search.app import create_app
    from search.query import UploadLimits
    from search.service import SearchService

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the page has no authentication; anyone who can reach this address can "
                    "query the archive", args.host)
    service = SearchService(args.index, args.ckpt_path, UploadLimits(max_bytes=int(args.max_upload_mb * 2 ** 20)),
                            relax_masks=args.relax_masks, threads=args.threads)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"expected one of {COMMANDS}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return {"index": index_main, "search": search_main, "serve": serve_main}[argv[0]](argv[1:])
    except (IndexMismatch, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
