"""The search service: FastAPI over one index (``itm serve``).

Endpoints: ``POST /search`` {text, k, rerank, concepts} -> ranked photos, with ``words`` (the query's words
the models read only through their word table, read by spelling, or could not read), ``concepts`` (those
of them also looked for by ImageNet's classes) and a one-line ``notice``; ``GET /images/{id}`` and
``GET /thumbnails/{id}`` by image id from the index database (never by path);
``GET /explain?image_id=..&text=..[&method=concept|attention]`` -> where each word's thing is (default)
or the matcher's word heat maps, as a PNG, with the words it draws panels for in the header
``X-Explained-Words`` (a JSON list: function words get none); ``GET /health``;
``GET /`` the web page (static, no CDN). Bad requests get 4xx answers with a one-line ``detail``.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from itm.errors import ItmError
from itm.retrieval.search import Searcher
from itm.retrieval.search_models import MAX_QUERY_CHARS

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 100
MAX_BODY_BYTES = 10 * 2**20
THUMBNAIL_PX = 256


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=12, ge=1, le=MAX_K)
    rerank: int = Field(default=50, ge=0, le=1000)
    concepts: bool = True  # words outside the training captions also rank photos by their ImageNet classes


class BodyTooLarge(BaseException):
    """Raised from ``receive``; not an Exception, so FastAPI's body parser cannot turn it into a 400."""


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by its declared length or as it streams in. Pure
    ASGI, so nothing is buffered; FastAPI's app does not apply Starlette's size limits itself."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.too_large(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self.too_large(scope, receive, send)

    async def too_large(self, scope, receive, send):
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        await response(scope, receive, send)


async def one_line_validation_error(request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line ("body.k: Input should be less than or equal to 100")."""
    parts = [f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in exc.errors()]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def create_app(searcher: Searcher, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="itm search", description="Text -> photo search with an exact cross-attention re-rank.")
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_exception_handler(RequestValidationError, one_line_validation_error)
    lock = threading.Lock()  # one model, one query at a time: torch threads are the parallelism
    thumbnails: OrderedDict[int, bytes] = OrderedDict()

    def photo_path(image_id: int) -> Path:
        path = searcher.path_of(image_id)
        if path is None:
            raise HTTPException(404, f"no image with id {image_id}")
        return path

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "images": len(searcher)}

    @app.post("/search")
    def search(request: SearchRequest) -> dict:
        try:
            with lock:
                hits = searcher.search(request.text, request.k, request.rerank, request.concepts)
        except ItmError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"query": request.text, "words": hits.words.to_dict(), "concepts": hits.concepts,
                "notice": hits.notice(), "results": [
            {"rank": n + 1, "image_id": h.image_id, "path": h.path, "score": h.score,
             "shortlist_score": h.shortlist_score, "image": f"/images/{h.image_id}",
             "thumbnail": f"/thumbnails/{h.image_id}"} for n, h in enumerate(hits)]}

    @app.post("/search/image")
    def search_image(file: UploadFile = File(...), k: int = Query(12, ge=1, le=MAX_K),
                     rerank: int = Query(50, ge=0, le=1000)) -> dict:
        data = file.file.read()  # a worker thread, like every model call: the event loop stays free
        try:
            with lock:
                hits = searcher.search_image(data, file.filename or "upload", k, rerank)
        except ItmError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"results": [{"rank": n + 1, "caption_id": h.caption_id, "text": h.text, "score": h.score,
                             "shortlist_score": h.shortlist_score} for n, h in enumerate(hits)]}

    @app.get("/images/{image_id}")
    def image(image_id: int) -> FileResponse:
        return FileResponse(photo_path(image_id))

    @app.get("/thumbnails/{image_id}")
    def thumbnail(image_id: int) -> Response:
        if image_id not in thumbnails:
            from itm.features.images import load_image

            img = load_image(photo_path(image_id))
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=85)
            thumbnails[image_id] = out.getvalue()
            while len(thumbnails) > 2048:
                thumbnails.popitem(last=False)
        return Response(thumbnails[image_id], media_type="image/jpeg")

    @app.get("/explain")
    def explain(image_id: int = Query(...), text: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS),
                method: Literal["concept", "attention"] = Query("concept")):
        photo_path(image_id)
        try:
            with lock:
                png = searcher.explain_png(image_id, text, method)
        except ItmError as exc:
            raise HTTPException(400, str(exc)) from None
        # the words the picture has panels for (function words have none), as the PNG records them
        from itm.viz.explain import png_words

        words = png_words(png)
        headers = {} if words is None else {"X-Explained-Words": json.dumps(words)}  # JSON escapes to ASCII
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    return app
