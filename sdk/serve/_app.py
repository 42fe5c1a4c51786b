"""The HTTP service: FastAPI app around an ImageClassifier and a MicroBatcher.

Endpoints: ``POST /v1/classify`` (raw image bytes or multipart field ``image``; query
``top_k``), ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``; with a gallery
``GET /v1/gallery``, ``POST`` / ``DELETE /v1/gallery/products?label=``; OpenAPI at ``/openapi.json``
and ``/docs`` (a self-contained page rendered from that schema: no CDN, works on an offline
kiosk). Every error, the web stack's own (404, 405, malformed HTTP, unhandled exceptions) included,
is JSON ``{"error": {"code", "message", "status"}}`` with a stable code; the OpenAPI schema lists
each operation's statuses.

Hostile clients: the HTTP protocol (:func:`guarded_protocol`) gives every request head
``header_timeout_s`` and every body ``body_timeout_s``, and answers connections beyond
``max_connections`` with 503 at once; images are decoded in a :class:`DecodePool` of worker
processes whose decodes stop at the request's deadline and whose memory is capped.
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
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._classifier import ClassifierOptions, ImageClassifier
from .._errors import GalleryError
from .._errors import ImageError, ImageTooLargeError
from .._image import check_encoded
from .._version import __version__
from ._batcher import MicroBatcher, Overloaded
from ._decode_pool import DecodeError, DecodePool, DecodeSetup
from ._docs import docs_html
from ._http import ApiError, guarded_protocol, image_bytes
from ._schema import (BODY_DOC, CODES, DECODE_500, ERROR_DOCS, TRANSPORT_ERRORS_DOC, ClassifyOut, ErrorOut,
                      error_response, error_responses)
from .config import ServeConfig, ServeError

log = logging.getLogger(__name__)
MAX_GALLERY_TOP_K = 100
def decode_workers(config: ServeConfig) -> int:
    if config.decode_workers:
        return config.decode_workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def create_app(config: ServeConfig) -> FastAPI:
    """Open the model (ModelError now, not at the first request) and build the app. ServeError
    when the token from ``SKULENS_API_TOKEN`` cannot be used."""
    try:
        token = config.api_token()
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    clf = ImageClassifier.from_path(config.model, ClassifierOptions(
        num_threads=config.num_threads, max_pixels=config.max_pixels, max_aspect_ratio=config.max_aspect_ratio,
        gallery=config.gallery))
    n_labels = len(clf.labels) if clf.gallery is None else MAX_GALLERY_TOP_K
    clf.options = dataclasses.replace(clf.options, top_k=n_labels)  # each request slices its top_k
    gallery_lock = asyncio.Lock()  # one enrolment/removal (and its file write) at a time
    batcher = MicroBatcher(clf.run, max_batch=config.max_batch, max_delay_s=config.max_delay_ms / 1000,
                           max_queue=config.max_queue)
    decoders = DecodePool(DecodeSetup(config.max_pixels, config.max_aspect_ratio, clf.decode_contract,
                                      clf.preprocess_config),
                          workers=decode_workers(config), memory_mb=config.decode_memory_mb,
                          max_waiting=config.max_queue)
    meta = clf.metadata

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await decoders.start()
        await batcher.start()
        log.info("serving %s (%d labels) batching max %d / %.1f ms, %d decode workers", config.model, n_labels,
                 config.max_batch, config.max_delay_ms, decoders.workers)
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish (graceful shutdown) before this
            await batcher.stop()
            await decoders.stop()
            clf.close()
            log.info("stopped after %d batches, %d images", batcher.batches, batcher.images)
            p = app.state.protocol
            if p.refused or p.evicted or p.timed_out or decoders.stopped or decoders.crashed:
                log.info("defences: %d connections refused (503), %d closed for a new one, %d timed out; "
                         "%d decodes stopped at their deadline, %d decoder crashes", p.refused, p.evicted,
                         p.timed_out, decoders.stopped, decoders.crashed)

    # FastAPI's /docs and /redoc load their scripts from a CDN: blank without a network. /docs
    # is a page of our own, rendered once from the OpenAPI schema (no script, no external URL).
    app = FastAPI(title="skulens", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Product image classification with a self-describing ONNX model. "
                  + ("Operations under /v1 require `Authorization: Bearer TOKEN` (the token is set with "
                     "--token or SKULENS_API_TOKEN when the service starts). " if token is not None else
                     "This service runs without authentication (start it with SKULENS_API_TOKEN set to "
                     "require a bearer token on /v1). ")
                  + "Errors are JSON `{\"error\": {\"code\", \"message\", \"status\"}}`. "
                  + TRANSPORT_ERRORS_DOC)
    app.state.batcher, app.state.decoders, app.state.config = batcher, decoders, config
    app.state.protocol = guarded_protocol(config)  # the HTTP protocol serve() runs the app with

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return error_response(400, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, CODES.get(exc.status_code, f"http_{exc.status_code}"),
                      str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request, exc: Exception):  # Starlette logs it and re-raises after this answer
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); the service log has the details")

    def openapi() -> dict:
        """FastAPI's schema with the statuses the service really answers: no 422 (invalid
        requests get 400 ``bad_request``), and 500/503 on every operation."""
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
            if "ErrorOut" not in schemas:  # operations without error models still answer errors
                schemas["ErrorOut"] = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schemas["ErrorOut"].pop("$defs", {}))
            if token is not None:
                spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in spec["paths"].items():
                for op in ops.values():
                    responses = op.setdefault("responses", {})
                    responses.pop("422", None)
                    for status in (500, 503):
                        responses.setdefault(str(status), {"description": ERROR_DOCS[status], **ref})
                    if token is not None and path.startswith("/v1/"):
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
        if not ok:
            raise ApiError(401, "unauthorized", "missing or wrong bearer token",
                           {"WWW-Authenticate": "Bearer"})

    def strict_query(*known: str):
        """A dependency refusing query parameters the operation does not take, or gives more than
        once (a typo such as ``?topk=3`` would otherwise be ignored without a word)."""
        def check(request: Request) -> None:
            params = request.query_params
            unknown = sorted({k for k in params.keys() if k not in known})
            if unknown:
                raise ApiError(400, "bad_request", f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                               + (f"this operation takes {', '.join(known)}" if known else "this operation takes none"))
            repeated = sorted(k for k in known if len(params.getlist(k)) > 1)
            if repeated:
                raise ApiError(400, "bad_request", f"query parameter(s) {', '.join(map(repr, repeated))} given "
                               "more than once")
        return Depends(check)

    def check_header(data: bytes) -> None:
        """413 at once for an image whose header declares it over the limits (the checks decoding
        starts with, without a worker); any other problem is the decode worker's to report."""
        try:
            check_encoded(data, "image", config.max_pixels, config.max_aspect_ratio)
        except ImageTooLargeError as exc:
            raise ApiError(413, "image_too_large", str(exc)) from None
        except ImageError:
            pass

    async def decode(kind: str, data: bytes, deadline: float):
        """The model's input from encoded bytes, in a decode worker, before ``deadline``."""
        try:
            return await decoders.run(kind, data, deadline)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), {"Retry-After": "1"}) from None
        except DecodeError as exc:
            if exc.kind == "image":
                raise ApiError(400, "bad_image", exc.message) from None
            if exc.kind == "too_large":
                raise ApiError(413, "image_too_large", exc.message) from None
            if exc.kind == "memory":
                raise ApiError(413, "image_too_large", "decoding this image needs more memory than one decode "
                               f"may use ({config.decode_memory_mb} MiB, --decode-memory-mb): {exc.message}") from None
            if exc.kind == "timeout":
                raise ApiError(504, "timeout", f"not answered within {config.request_timeout_s:g} s: "
                               + exc.message) from None
            if exc.kind == "crashed":
                raise ApiError(500, "decoder_crashed", exc.message) from None
            raise ApiError(500, "internal", exc.message) from None

    docs_page: list[str] = []

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs() -> HTMLResponse:
        if not docs_page:
            docs_page.append(docs_html(app.openapi(), token_required=token is not None))
        return HTMLResponse(docs_page[0])

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=error_responses(503, d503="`not_ready`: starting or shutting down"))
    async def readyz():
        """Readiness: the model is loaded and the batcher accepts work."""
        if not batcher.running:
            return error_response(503, "not_ready", "the service is starting or shutting down")
        return {"status": "ready"}

    @app.get("/v1/model", tags=["model"], dependencies=[Depends(authorize), strict_query()],
             responses=error_responses(400, 401))
    async def model_info() -> dict:
        """Labels, preprocessing contract, quantization and versions from the model's metadata."""
        return {"model_name": meta.model_name, "labels": list(meta.labels),
                "coarse_labels": list(meta.coarse_labels) if meta.coarse_labels else None,
                "preprocess": meta.preprocess.to_dict(), "quantization": meta.quantization,
                "io": meta.io, "schema_version": meta.schema_version,
                "provenance": meta.provenance, "metrics": meta.metrics,
                "versions": {"skulens": __version__, "onnxruntime": ort.__version__},
                "batching": {"max_batch": config.max_batch, "max_delay_ms": config.max_delay_ms,
                             "max_queue": config.max_queue},
                "decoding": {"workers": decoders.workers, "memory_mb": config.decode_memory_mb,
                             "decodes": decoders.decodes, "stopped": decoders.stopped, "crashed": decoders.crashed}}

    @app.post("/v1/classify", tags=["classify"], response_model=ClassifyOut,
              responses=error_responses(400, 401, 413, 415, 500, 503, 504, d500=DECODE_500),
              dependencies=[Depends(authorize), strict_query("top_k")], openapi_extra=BODY_DOC)
    async def classify(request: Request, top_k: int = Query(config.top_k, ge=1, le=n_labels)):
        """Classify one image sent as the raw body (``image/*`` or ``application/octet-stream``)
        or as the multipart field ``image``."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + config.request_timeout_s
        try:
            return await asyncio.wait_for(_classify(request, top_k, t0, deadline), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"not answered within {config.request_timeout_s:g} s") from None

    async def _classify(request: Request, top_k: int, t0: float, deadline: float) -> dict:
        with batcher.announce():  # a forming batch may wait for this request
            data = await image_bytes(request, config.max_body_bytes)
            check_header(data)
            x = await decode("classify", data, deadline)
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
                "coarse": None if result.coarse is None else dataclasses.asdict(result.coarse),
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def gallery_or_404():
        if clf.gallery is None:
            raise ApiError(404, "no_gallery", "this service classifies with the model's labels; start it "
                           "with --gallery to enrol products")
        return clf.gallery

    def editing_allowed():
        if token is None:
            raise ApiError(403, "forbidden", "enrolling and removing products needs the service to run "
                           "with a bearer token (--token or SKULENS_API_TOKEN)")

    @app.get("/v1/gallery", tags=["gallery"], dependencies=[Depends(authorize), strict_query()],
             responses=error_responses(400, 401, 404, d404="`no_gallery`: the service runs without --gallery"))
    async def gallery_info() -> dict:
        """The gallery's products (photo counts) and its "unknown" threshold."""
        g = gallery_or_404()
        return {"products": g.products(), "photos": len(g), "unknown": g.unknown, "embedding": g.embedding}

    @app.post("/v1/gallery/products", tags=["gallery"], responses=error_responses(
                  400, 401, 403, 404, 409, 413, 415, 500, 503, 504,
                  d404="`no_gallery`: the service runs without --gallery", d500=DECODE_500),
              dependencies=[Depends(authorize), strict_query("label")], openapi_extra=BODY_DOC)
    async def enrol(request: Request, label: str = Query(..., min_length=1, max_length=200)) -> dict:
        """Enrol one photo of product ``label`` (raw body or multipart field ``image``); the
        gallery file is saved atomically. A photo already enrolled is reported, not added twice."""
        editing_allowed()
        g = gallery_or_404()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.request_timeout_s
        try:
            data = await asyncio.wait_for(image_bytes(request, config.max_body_bytes), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the body did not arrive within {config.request_timeout_s:g} s") from None
        x, sha = await decode("enrol", data, deadline)
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

    @app.delete("/v1/gallery/products", tags=["gallery"], dependencies=[Depends(authorize), strict_query("label")],
                responses=error_responses(400, 401, 403, 404))
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


def _ensure_file_descriptors(config: ServeConfig) -> None:
    """Raise the soft open-files limit if ``max_connections`` needs it; ServeError if impossible."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    need = config.max_connections + 64 + 4 * decode_workers(config)  # sockets + model, pipes, logs...
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard == resource.RLIM_INFINITY or hard >= need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        else:
            raise ServeError(f"--max-connections {config.max_connections} needs about {need} open files but "
                             f"the limit is {hard} (ulimit -n); lower --max-connections")


def serve(config: ServeConfig) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish (graceful shutdown)."""
    import uvicorn

    _ensure_file_descriptors(config)
    app = create_app(config)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                        access_log=config.access_log, timeout_graceful_shutdown=config.graceful_timeout_s,
                        lifespan="on", http=app.state.protocol, timeout_keep_alive=config.keep_alive_s,
                        h11_max_incomplete_event_size=config.max_header_bytes)
    uvicorn.Server(uv).run()
