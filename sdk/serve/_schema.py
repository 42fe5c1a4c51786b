"""The service's wire format: the response models, the stable error codes and what each HTTP
status means, as the OpenAPI schema and ``/docs`` show them."""
from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          408: "timeout", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
          431: "headers_too_large", 503: "overloaded", 504: "timeout", 500: "internal"}

# What each status means, shown in the OpenAPI schema and /docs (every one is an ErrorOut body).
ERROR_DOCS = {
    400: "`bad_request` (an invalid query parameter or multipart body) or `bad_image` (empty, corrupt, "
         "truncated or unsupported image data)",
    401: "`unauthorized`: the service requires `Authorization: Bearer TOKEN` and it is missing or wrong",
    403: "`forbidden`: enrolling and removing products needs the service to run with a token",
    404: "`no_gallery` (the service runs without --gallery) or `not_found` (no such product)",
    409: "`conflict`: this photo is already enrolled as another product",
    413: "`payload_too_large` (body over --max-body-bytes) or `image_too_large` (over --max-pixels, or "
         "its decode needs more memory than --decode-memory-mb allows)",
    415: "`unsupported_media_type`: send image/*, application/octet-stream or multipart/form-data",
    500: "`internal`: an unexpected failure (a bug; the service log has the details)",
    503: "`overloaded` (the model's or the decoders' queue is full, or the service is shutting down; "
         "retry after `Retry-After` seconds), `not_ready` or `too_many_connections`",
    504: "`timeout`: not answered within --request-timeout-s (a decode still running is stopped)",
}
DECODE_500 = ERROR_DOCS[500] + ", or `decoder_crashed`: the image decoder died on this image"
TRANSPORT_ERRORS_DOC = (
    "Any request may also get, before it reaches an operation: 400 `bad_request` (malformed HTTP), "
    "408 `timeout` (request head not complete within --header-timeout-s, or body within "
    "--body-timeout-s; the connection is closed), 431 `headers_too_large` (an unfinished head over "
    "--max-header-bytes) and 503 `too_many_connections` (--max-connections open, none of them idle "
    "or slow enough to give its place).")


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
    coarse: CategoryOut | None = None  # the top product's coarse group and its total probability (if any)


class ErrorBody(BaseModel):
    code: str
    message: str
    status: int


class ErrorOut(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}},
                        status_code=status, headers=headers)


def error_responses(*statuses: int, **descriptions: str) -> dict:
    """``responses=`` of an operation: each status an ErrorOut with its meaning."""
    return {s: {"model": ErrorOut, "description": descriptions.get(f"d{s}", ERROR_DOCS[s])} for s in statuses}


BODY_DOC = {"requestBody": {"required": True, "content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}}}}}}}
