"""The service's HTTP layer below the app: the JSON error body, reading a request's image bytes
within the size limit, and the uvicorn protocol that defends against slow and excess clients."""
from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest

from .config import ServeConfig

log = logging.getLogger(__name__)
RAW_TYPES = ("application/octet-stream",)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body of {declared} bytes is over the limit of {limit}")
    chunks, n = [], 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise ApiError(413, "payload_too_large", f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not a server error
        raise ApiError(400, "bad_request", "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
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
        await form.close()
        raise ApiError(400, "bad_request", "multipart body has no file field 'image'")
    data = await upload.read()
    await form.close()
    if not data:
        raise ApiError(400, "bad_image", "the 'image' field is empty")
    return data


def _raw_response(status: int, code: str, message: str, extra: str = "") -> bytes:
    """A complete HTTP/1.1 error response (JSON, Connection: close) written by the protocol
    itself, for connections that never reach the app."""
    body = error_body(status, code, message)
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + body


EVICT_AFTER_S = 0.5      # at max_connections, a connection waiting this long for its request head,
EVICT_BELOW_BPS = 1024   # or sending its body slower than this (bytes/s), gives its place to a new one


def guarded_protocol(config: ServeConfig):
    """uvicorn's h11 protocol with slow-client defences and JSON transport errors.

    uvicorn arms its keep-alive timer only after a response and drops it as soon as a byte
    arrives, so a client that sends its request head a byte at a time (slowloris) or trickles
    a body after its answer keeps its connection (and a file descriptor) forever. Here each
    connection has one deadline at a time: the request head must be complete within
    ``header_timeout_s`` of the connection opening (or of the previous answer), then the body
    within ``body_timeout_s``; a connection past its deadline gets 408 (unless an answer is
    already on its way) and is closed. When ``max_connections`` are open, a new connection takes
    the place of the one that has waited longest (at least ``EVICT_AFTER_S``) for its request head
    (idle keep-alive connections included), or sends its body slower than ``EVICT_BELOW_BPS``, or,
    answered, is only draining its body; with none such it gets 503 and is closed before it is
    read. A slow client thus cannot hold a slot against a prompt one. Malformed HTTP and
    oversized heads get JSON 400 / 431.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        refused = 0   # connections answered 503 at once (class-wide counters, for the log and tests)
        evicted = 0
        timed_out = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._phase: str | None = None
            self._since = 0.0
            self._timer: asyncio.TimerHandle | None = None
            self._got_bytes = False
            self._body_bytes = 0
            self._refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > config.max_connections and not self._evict_one():
                self._refused = True
                type(self).refused += 1
                self.connections.discard(self)  # a refused connection does not count against others
                transport.write(_raw_response(503, "too_many_connections", "the service already has "
                                              f"{config.max_connections} open connections; retry later",
                                              "retry-after: 1\r\n"))
                transport.close()
                return
            self._update_deadline()

        def _evictable(self, now: float) -> bool:
            if self._phase is None or now - self._since < EVICT_AFTER_S or self.transport.is_closing():
                return False
            if self._phase == "head" or (self.cycle is not None and self.cycle.response_complete):
                return True
            return self._body_bytes < EVICT_BELOW_BPS * (now - self._since)  # a trickling body

        def _evict_one(self) -> bool:
            """Close the connection that has waited longest for its request head (or drains an
            answered request's body), if any has waited ``EVICT_AFTER_S``: True if one was."""
            now = self.loop.time()
            waiting = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c._evictable(now)]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c._since)
            type(self).evicted += 1
            oldest._close(oldest._phase, "the service needed this connection's place for another client")
            self.connections.discard(oldest)
            return True

        def connection_lost(self, exc) -> None:
            self._set_phase(None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._got_bytes = True
            if self._phase == "body":
                self._body_bytes += len(data)
            super().data_received(data)
            self._update_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:
                self._got_bytes = bool(self.conn.trailing_data[0])  # a pipelined request has begun
            self._update_deadline()

        def _update_deadline(self) -> None:
            if self.transport.is_closing():
                return self._set_phase(None)
            state = self.conn.their_state
            self._set_phase("head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

        def _set_phase(self, phase: str | None) -> None:
            if phase == self._phase:
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._phase, self._since, self._body_bytes = phase, self.loop.time(), 0
            if phase is not None:
                seconds = config.header_timeout_s if phase == "head" else config.body_timeout_s
                self._timer = self.loop.call_later(seconds, self._expired, phase)

        def _expired(self, phase: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            type(self).timed_out += 1
            self._close(phase, f"the request head was not complete within {config.header_timeout_s:g} s"
                        if phase == "head" else f"the request body did not arrive within {config.body_timeout_s:g} s")

        def _close(self, phase: str | None, why: str) -> None:
            """Close now: 408 ``why`` unless the connection is idle or an answer is under way."""
            self._set_phase(None)
            answered = self.cycle is not None and self.cycle.response_started and phase == "body"
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app's receive() now says the client is gone
                self.cycle.message_event.set()
            if phase == "head" and not self._got_bytes:
                pass  # an idle connection: closed without a word, like a keep-alive timeout
            elif not answered:
                self.transport.write(_raw_response(408, "timeout", why))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """h11 refused the request: malformed HTTP, or a head over ``max_header_bytes``."""
            too_large = len(self.conn.trailing_data[0]) > config.max_header_bytes
            status, code = (431, "headers_too_large") if too_large else (400, "bad_request")
            message = (f"the request head is over {config.max_header_bytes} bytes" if too_large
                       else f"malformed HTTP request ({msg.rstrip('.')})")
            body = error_body(status, code, message)
            try:
                for event in (h11.Response(status_code=status, reason=HTTPStatus(status).phrase.encode(), headers=[
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")]), h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # an answer was already under way
                pass
            self.transport.close()

    return GuardedH11Protocol
