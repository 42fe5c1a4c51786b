"""The HTTP service: FastAPI app around an ImageClassifier and a MicroBatcher.

Endpoints: ``POST /v1/classify`` (raw image bytes or multipart field ``image``; query
``top_k``), ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``; with a gallery
``GET /v1/gallery``, ``POST`` / ``DELETE /v1/gallery/products?label=``; OpenAPI at ``/openapi.json``
and ``/docs``. Errors are JSON ``{"error": {"code", "message", "status"}}`` with stable codes.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import time

import anyio
import onnxruntime as ort
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest

from .._classifier import ClassifierOptions, ImageClassifier
from .._errors import GalleryError, ImageError
from .._gallery import image_sha256
from .._image import decode_image, header_size
from .._version import __version__
from ._batcher import MicroBatcher, Overloaded
from .config import ServeConfig

log = logging.getLogger(__name__)
MAX_GALLERY_TOP_K = 100
RAW_TYPES = ("application/octet-stream",)
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict",
          413: "payload_too_large", 415: "unsupported_media_type", 503: "overloaded", 504: "timeout",
          500: "internal"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class CategoryOut(BaseModel):
    label: str
    index: int
    score: float


class ClassifyOut(BaseModel):
    model: str
    categories: list[CategoryOut]
    batch_size: int
    elapsed_ms: float
    unknown: bool = False  # the top score is below the calibrated "none of these" threshold
    by: str = "model"      # "model": the model's labels; "gallery": retrieval among enrolled products


class ErrorBody(BaseModel):
    code: str
    message: str
    status: int


class ErrorOut(BaseModel):
    error: ErrorBody


def _error(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}},
                        status_code=status, headers=headers)


_BODY_DOC = {"requestBody": {"required": True, "content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}}}}}}}
_ERRORS_DOC = {s: {"model": ErrorOut} for s in (400, 401, 413, 415, 503, 504)}


def create_app(config: ServeConfig) -> FastAPI:
    """Open the model (ModelError now, not at the first request) and build the app."""
    clf = ImageClassifier.from_path(config.model, ClassifierOptions(
        num_threads=config.num_threads, max_pixels=config.max_pixels, gallery=config.gallery))
    n_labels = len(clf.labels) if clf.gallery is None else MAX_GALLERY_TOP_K
    clf.options = dataclasses.replace(clf.options, top_k=n_labels)  # each request slices its top_k
    gallery_lock = asyncio.Lock()  # one enrolment/removal (and its file write) at a time
    token = config.token if config.token is not None else os.environ.get("SKULENS_API_TOKEN") or None
    batcher = MicroBatcher(clf.run, max_batch=config.max_batch, max_delay_s=config.max_delay_ms / 1000,
                           max_queue=config.max_queue)
    meta = clf.metadata

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        log.info("serving %s (%d labels) batching max %d / %.1f ms", config.model, n_labels,
                 config.max_batch, config.max_delay_ms)
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish (graceful shutdown) before this
            await batcher.stop()
            clf.close()
            log.info("stopped after %d batches, %d images", batcher.batches, batcher.images)

    app = FastAPI(title="skulens", version=__version__, lifespan=lifespan,
                  description="Product image classification with a self-describing ONNX model.")
    app.state.batcher, app.state.config = batcher, config

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return _error(400, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _error(exc.status_code, _CODES.get(exc.status_code, f"http_{exc.status_code}"),
                      str(exc.detail), getattr(exc, "headers", None))

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
        if not ok:
            raise ApiError(401, "unauthorized", "missing or wrong bearer token",
                           {"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorOut}})
    async def readyz():
        """Readiness: the model is loaded and the batcher accepts work."""
        if not batcher.running:
            return _error(503, "not_ready", "the service is starting or shutting down")
        return {"status": "ready"}

    @app.get("/v1/model", tags=["model"], dependencies=[Depends(authorize)], responses={401: {"model": ErrorOut}})
    async def model_info() -> dict:
        """Labels, preprocessing contract, quantization and versions from the model's metadata."""
        return {"model_name": meta.model_name, "labels": list(meta.labels),
                "coarse_labels": list(meta.coarse_labels) if meta.coarse_labels else None,
                "preprocess": meta.preprocess.to_dict(), "quantization": meta.quantization,
                "io": meta.io, "schema_version": meta.schema_version,
                "provenance": meta.provenance, "metrics": meta.metrics,
                "versions": {"skulens": __version__, "onnxruntime": ort.__version__},
                "batching": {"max_batch": config.max_batch, "max_delay_ms": config.max_delay_ms,
                             "max_queue": config.max_queue}}

    @app.post("/v1/classify", tags=["classify"], response_model=ClassifyOut, responses=_ERRORS_DOC,
              dependencies=[Depends(authorize)], openapi_extra=_BODY_DOC)
    async def classify(request: Request, top_k: int = Query(config.top_k, ge=1, le=n_labels)):
        """Classify one image sent as the raw body (``image/*`` or ``application/octet-stream``)
        or as the multipart field ``image``."""
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(_classify(request, top_k, t0), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"not answered within {config.request_timeout_s:g} s") from None

    async def _classify(request: Request, top_k: int, t0: float) -> dict:
        with batcher.announce():  # a forming batch may wait for this request
            data = await _image_bytes(request, config.max_body_bytes)
            size = header_size(data)
            if size is not None and size[0] * size[1] > config.max_pixels:
                raise ApiError(413, "image_too_large", f"image is {size[0]}x{size[1]} pixels, over the "
                               f"limit of {config.max_pixels}")
            try:
                x = await anyio.to_thread.run_sync(clf.preprocess, data)
            except ImageError as exc:
                code, status = ("image_too_large", 413) if "over the limit" in str(exc) else ("bad_image", 400)
                raise ApiError(status, code, str(exc)) from None
            try:
                future = batcher.submit(x)
            except Overloaded as exc:
                raise ApiError(503, "overloaded", str(exc), {"Retry-After": "1"}) from None
        output, batch_size = await future
        result = clf.postprocess(output[None])[0]
        return {"model": meta.model_name, "batch_size": batch_size, "unknown": result.unknown,
                "by": "gallery" if clf.gallery is not None else "model",
                "categories": [{"label": c.label, "index": c.index, "score": c.score}
                               for c in result.categories[:top_k]],
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def gallery_or_404():
        if clf.gallery is None:
            raise ApiError(404, "no_gallery", "this service classifies with the model's labels; start it "
                           "with --gallery to enrol products")
        return clf.gallery

    def enrolment_input(data: bytes):
        """The model's input tensor and the photo's identity, from one decode (off the event loop)."""
        pixels = decode_image(data, config.max_pixels)
        return clf.preprocess(pixels), image_sha256(pixels)

    def editing_allowed():
        if token is None:
            raise ApiError(403, "forbidden", "enrolling and removing products needs the service to run "
                           "with a bearer token (--token or SKULENS_API_TOKEN)")

    @app.get("/v1/gallery", tags=["gallery"], dependencies=[Depends(authorize)], responses={401: {"model": ErrorOut}})
    async def gallery_info() -> dict:
        """The gallery's products (photo counts) and its "unknown" threshold."""
        g = gallery_or_404()
        return {"products": g.products(), "photos": len(g), "unknown": g.unknown, "embedding": g.embedding}

    @app.post("/v1/gallery/products", tags=["gallery"], responses=_ERRORS_DOC,
              dependencies=[Depends(authorize)], openapi_extra=_BODY_DOC)
    async def enrol(request: Request, label: str = Query(..., min_length=1, max_length=200)) -> dict:
        """Enrol one photo of product ``label`` (raw body or multipart field ``image``); the
        gallery file is saved atomically. A photo already enrolled is reported, not added twice."""
        editing_allowed()
        g = gallery_or_404()
        data = await _image_bytes(request, config.max_body_bytes)
        try:
            x, sha = await anyio.to_thread.run_sync(enrolment_input, data)
        except ImageError as exc:
            raise ApiError(400, "bad_image", str(exc)) from None
        embedding = await anyio.to_thread.run_sync(clf.run_embedding, x[None])
        async with gallery_lock:
            owner = g.label_of_image(sha)
            if owner is not None and owner != label.strip():
                raise ApiError(409, "conflict", f"this photo is already enrolled as {owner!r}")
            try:
                rep = g.add_embeddings(label, embedding, [sha], ["<upload>"])
            except GalleryError as exc:
                raise ApiError(400, "bad_request", str(exc)) from None
            await anyio.to_thread.run_sync(g.save, config.gallery)
        return {"label": rep.label, "added": rep.added, "duplicate": bool(rep.duplicates),
                "photos": g.products()[rep.label]}

    @app.delete("/v1/gallery/products", tags=["gallery"], dependencies=[Depends(authorize)],
                responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}})
    async def delist(label: str = Query(..., min_length=1, max_length=200)) -> dict:
        """Delist product ``label`` (all its photos); the gallery file is saved atomically."""
        editing_allowed()
        g = gallery_or_404()
        async with gallery_lock:
            try:
                removed = g.remove(label)
            except GalleryError as exc:
                raise ApiError(404, "not_found", str(exc)) from None
            await anyio.to_thread.run_sync(g.save, config.gallery)
        return {"label": label, "removed": removed}

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body of {declared} bytes is over the limit of {limit}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ApiError(413, "payload_too_large", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype in RAW_TYPES or ctype == "multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not supported: send the "
                       "image bytes as image/* or application/octet-stream, or as multipart field 'image'")
    body = await _read_limited(request, limit)
    if ctype != "multipart/form-data":
        if not body:
            raise ApiError(400, "bad_image", "empty request body: send the image bytes")
        return body

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as exc:  # malformed multipart
        raise ApiError(400, "bad_request", f"cannot parse the multipart body: {exc}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "bad_request", "multipart body has no file field 'image'")
    data = await upload.read()
    await form.close()
    if not data:
        raise ApiError(400, "bad_image", "the 'image' field is empty")
    return data


def serve(config: ServeConfig) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish (graceful shutdown)."""
    import uvicorn

    app = create_app(config)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                        access_log=config.access_log, timeout_graceful_shutdown=config.graceful_timeout_s,
                        lifespan="on")
    uvicorn.Server(uv).run()
