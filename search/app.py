"""The search web page and its JSON API (FastAPI). Bind to 127.0.0.1 unless you mean to share it.

    GET  /                                  the page (plain HTML + JS served from this package, no CDN)
    GET  /api/info                          method, index size, search space, labels, limits
    POST /api/search                        multipart: file, k, slice, crop=x0,y0,x1,y1, patient, patients, label
    POST /api/search/embedding              JSON: {"embedding": [...], "k", "patient", "patients", "label"}
    GET  /api/items/{id}                    metadata of one archive item
    GET  /api/items/{id}/thumbnail.png      its thumbnail (by integer id only: no path ever comes from a request)
    POST /api/explain                       JSON: {"token": <from /api/search>, "id": <item id>} -> RELAX overlays
"""
from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from search.query import QueryError, parse_crop, read_bounded
from search.service import SearchService

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


class EmbeddingQuery(BaseModel):
    embedding: list[float] = Field(min_length=1)
    k: int = 10
    patient: str | None = None
    patients: str = "all"
    label: str | None = None


class ExplainRequest(BaseModel):
    token: str = Field(min_length=1, max_length=64)
    id: int


def _static(name: str) -> str:
    return resources.files("search").joinpath("static", name).read_text()


def _crop(text: str | None):
    try:
        return parse_crop(text, "crop=")
    except QueryError as err:
        raise HTTPException(422, str(err)) from None


def create_app(service: SearchService) -> FastAPI:
    """The app around one loaded :class:`SearchService`."""
    app = FastAPI(title="medcbir search", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    limit = service.limits.max_bytes
    pages = {name: _static(name) for name in STATIC}
    page = _static("index.html")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            return JSONResponse({"detail": f"upload of {length} bytes is over the limit of {limit} bytes"},
                                status_code=413)
        return await call_next(request)

    def fail(err: Exception):
        if isinstance(err, QueryError):
            raise HTTPException(err.status, str(err))
        if isinstance(err, KeyError):
            raise HTTPException(404, str(err.args[0]) if err.args else "not found")
        raise HTTPException(422, str(err))

    @app.get("/", response_class=HTMLResponse)
    def index_page():
        return page

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(pages[name], media_type=STATIC[name])

    @app.get("/api/info")
    def info():
        m = service.manifest
        labels = sorted({n for names in service.index.labels for n in names})
        return {"method": m["method"], "search_space": m["search_space"], "n_items": len(service.index),
                "index": m["index"], "preprocessing": m["preprocessing"], "labels": labels,
                "checkpoint_sha256": m["checkpoint_sha256"], "max_upload_bytes": limit, "max_k": service.max_k}

    @app.post("/api/search")
    def search(file: UploadFile = File(...), k: int = Form(10), slice: int | None = Form(None),  # noqa: B008
               crop: str | None = Form(None), patient: str | None = Form(None), patients: str = Form("all"),
               label: str | None = Form(None), previews: bool = Form(True)):
        data = read_bounded(file.file, limit)
        if len(data) > limit:
            raise HTTPException(413, f"{file.filename}: upload over the limit of {limit} bytes")
        try:
            return service.search_file(data, file.filename or "", k, slice, _crop(crop), patient or None,
                                       patients, label or None, previews)
        except (QueryError, ValueError, KeyError) as err:
            fail(err)

    @app.post("/api/search/embedding")
    def search_embedding(body: EmbeddingQuery):
        try:
            import numpy as np

            results = service.search_embedding(np.asarray(body.embedding, np.float32), body.k, body.patient,
                                               body.patients, body.label)
        except (ValueError, KeyError) as err:
            fail(err)
        return {"search_space": service.index.search_space, "results": results}

    @app.get("/api/items/{item_id}")
    def item(item_id: int):
        try:
            return service.item(item_id)
        except KeyError as err:
            fail(err)

    @app.get("/api/items/{item_id}/thumbnail.png")
    def thumbnail(item_id: int):
        try:
            return Response(service.thumbnail_png(item_id), media_type="image/png",
                            headers={"Cache-Control": "max-age=3600"})
        except KeyError as err:
            fail(err)

    @app.post("/api/explain")
    def explain(body: ExplainRequest):
        try:
            return service.explain(body.token, body.id)
        except (KeyError, ValueError) as err:
            fail(err)

    return app
