"""An HTTP JSON sentence-embedding server with bert-as-service's semantics, safe against slow or greedy clients.

    POST /encode  {"texts": ["草", "awsl"], "id": 7}  ->  {"id": 7, "result": [[...], [...]]}
    GET  /status  (also /status/server)                ->  settings and counters

The body and answer of `/encode` are those of bert-as-service's HTTP proxy (`"is_tokenized"` too); a
request may add `"format": "base64"` (`{"embeddings_base64", "shape", "dtype"}`: raw little-endian
float32, what `danmaku.client.BertClient` asks for) and `"show_tokens": true` (`"tokens"`, when the
server runs with `-show_tokens_to_client`). A text `"a ||| b"` is the pair (a, b), as in bert-as-service.

How one client cannot stall the others:
- HTTP threads read, parse, validate and tokenize (each text truncated before most of it is tokenized);
  one or more workers run the model. A request is split into chunks of at most `max_batch_size`
  texts; requests of at most `priority_batch_size` texts go first, larger ones take turns chunk by
  chunk (bert-as-service's priority socket). With `merge_requests` waiting requests share a batch;
  with `batch_seconds` chunks are cut to take about that long (a small request waits at most that).
- A merged batch that fails is retried request by request, so only the request that fails gets the
  error. A request that timed out is dropped from the queue.
- Sockets time out; an idle keep-alive connection is closed after `idle_timeout`, a request must arrive
  whole within `read_timeout`; at `max_open_connections` the longest-idle connection makes room for a new
  one; at most `http_max_connect` requests are worked on at once (503 beyond).
- Bodies over `max_request_bytes` and answers estimated over `max_response_bytes` get 413 with the limit;
  every malformed body gets 400 JSON.
"""

from __future__ import annotations

import base64
import collections
import http.server
import json
import math
import re
import socket
import threading
import time
from typing import Callable, Sequence

import numpy as np
from absl import logging

from common.cli import UserError
from danmaku.client import __version__

_ALLOWED_FORMATS = ("json", "base64")
_JSON_BYTES_PER_FLOAT = 20  # "-0.12345678938293457," is 21 characters; most are shorter
_INF = float("inf")


# ---- the queue of encoding work -------------------------------------------------------------------

class _Job:
    __slots__ = ("items", "count", "next", "filled", "shape", "result", "error", "cancelled", "done")

    def __init__(self, items: list, shape: tuple | None):
        self.items = items
        self.count = len(items)
        self.next = 0  # first item not yet handed to a worker
        self.filled = 0
        self.shape = shape  # the shape of one row of the answer, when known in advance
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()


class BatchingQueue:
    """Requests wait here; workers take batches of at most `max_batch_size` items: requests of at most
    `priority_batch_size` items first, then chunks of the larger ones, taking turns. A batch is one
    request's chunk, or with `merge_requests` as many waiting requests as fit (small ones only with
    small ones)."""

    def __init__(self, encode_fn: Callable[[list], np.ndarray], max_batch_size: int, num_workers: int = 1,
                 priority_batch_size: int = 16, merge_requests: bool = False, batch_seconds: float | None = None):
        if max_batch_size < 1 or num_workers < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and num_workers ({num_workers}) must be >= 1")
        self.encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.priority_batch_size = priority_batch_size
        self.merge_requests = merge_requests
        # Chunks of large requests are cut so that a batch takes about this long (a small request waits at
        # most that), by the measured seconds per text; never above max_batch_size.
        self.batch_seconds = batch_seconds
        self._seconds_per_item: float | None = None
        self._priority: collections.deque[_Job] = collections.deque()
        self._large: collections.deque[_Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self.batches = 0
        self.sentences = 0
        self.dropped = 0
        self.encode_seconds = 0.0
        self._workers = [threading.Thread(target=self._work, name=f"encode-worker-{index}", daemon=True)
                         for index in range(num_workers)]
        for worker in self._workers:
            worker.start()

    @property
    def pending(self) -> int:
        with self._condition:
            return sum(job.count - job.next for queue in (self._priority, self._large) for job in queue
                       if not job.cancelled)

    def submit(self, items: list, timeout: float | None = None, shape: tuple | None = None) -> np.ndarray:
        """items -> float32 `[len(items), *shape]`; raises the encoder's error or TimeoutError (the
        request's remaining work is dropped then)."""
        job = _Job(list(items), shape)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            (self._priority if job.count <= self.priority_batch_size else self._large).append(job)
            self._condition.notify()
        if not job.done.wait(timeout):
            with self._condition:
                job.cancelled = True
            if not job.done.is_set():
                raise TimeoutError(f"encoding took longer than {timeout:g} s; the rest of the request was dropped")
        if job.error is not None:
            raise job.error
        return job.result

    def _drop_cancelled(self) -> None:
        for queue in (self._priority, self._large):
            if any(job.cancelled for job in queue):
                kept = [job for job in queue if not job.cancelled]
                self.dropped += len(queue) - len(kept)
                queue.clear()
                queue.extend(kept)

    def _take_batch(self) -> list[tuple[_Job, int, int]] | None:
        with self._condition:
            while True:
                self._drop_cancelled()
                if self._priority or self._large:
                    break
                if self._stopping:
                    return None
                self._condition.wait()
            pieces, room = [], self.max_batch_size
            if not self._priority and self.batch_seconds and self._seconds_per_item:
                room = min(room, max(self.priority_batch_size, 1, int(self.batch_seconds / self._seconds_per_item)))
            # Small requests first, batched only with each other; else chunks of the larger ones, taking turns.
            # Without merge_requests a batch is one request's chunk, as in bert-as-service.
            for queue in (self._priority,) if self._priority else (self._large,):
                while room and queue and (self.merge_requests or not pieces):
                    job = queue.popleft()
                    take = min(room, job.count - job.next)
                    pieces.append((job, job.next, job.next + take))
                    job.next += take
                    room -= take
                    if job.next < job.count:
                        queue.append(job)  # its next chunk waits behind the other requests
            return pieces

    def _encode(self, items: list) -> np.ndarray:
        started = time.perf_counter()
        vectors = np.asarray(self.encode_fn(items), dtype=np.float32)
        with self._condition:
            elapsed = time.perf_counter() - started
            self.encode_seconds += elapsed
            if len(items) >= 8:  # smaller batches are mostly fixed cost
                per_item = elapsed / len(items)
                self._seconds_per_item = per_item if self._seconds_per_item is None else \
                    0.7 * self._seconds_per_item + 0.3 * per_item
        if len(vectors) != len(items):
            raise RuntimeError(f"encode_fn returned {len(vectors)} rows for {len(items)} texts")
        return vectors

    def _deliver(self, job: _Job, start: int, vectors: np.ndarray) -> None:
        with self._condition:
            if job.cancelled or job.error is not None:
                return
            if job.result is None:
                job.result = np.zeros((job.count,) + (job.shape or vectors.shape[1:]), np.float32)
            if vectors.ndim == 3:  # per-token rows: a batch is as long as its longest text, not this answer
                width = min(vectors.shape[1], job.result.shape[1])
                job.result[start:start + len(vectors), :width] = vectors[:, :width]
            else:
                job.result[start:start + len(vectors)] = vectors
            job.filled += len(vectors)
            self.sentences += len(vectors)
            if job.filled == job.count:
                job.done.set()

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._condition:
            if job.error is None:
                job.error = error
                job.cancelled = True  # its other chunks are not encoded
                job.done.set()

    def _work(self) -> None:
        while True:
            pieces = self._take_batch()
            if pieces is None:
                return
            items = [item for job, start, end in pieces for item in job.items[start:end]]
            try:
                vectors = self._encode(items)
            except Exception as error:  # noqa: BLE001 - retried request by request below
                if len(pieces) == 1:
                    logging.warning("encoding %d texts failed: %s", len(items), error)
                    self._fail(pieces[0][0], error)
                    continue
                # One bad request must not fail the others merged with it: retry each alone.
                for job, start, end in pieces:
                    try:
                        self._deliver(job, start, self._encode(job.items[start:end]))
                    except Exception as piece_error:  # noqa: BLE001 - this request's own failure
                        logging.warning("encoding %d texts failed: %s", end - start, piece_error)
                        self._fail(job, piece_error)
                continue
            with self._condition:
                self.batches += 1
            offset = 0
            for job, start, end in pieces:
                self._deliver(job, start, vectors[offset:offset + end - start])
                offset += end - start

    def close(self) -> None:
        with self._condition:
            self._stopping = True
            for queue in (self._priority, self._large):
                for job in queue:
                    job.error = job.error or RuntimeError("the server is shutting down")
                    job.done.set()
                queue.clear()
            self._condition.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)


# ---- requests --------------------------------------------------------------------------------------

class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class EncodeRequest(collections.namedtuple("EncodeRequest", "texts id format is_tokenized show_tokens")):
    """A validated POST /encode body."""


def _check_text(index: int, text) -> None:
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, f"texts[{index}] must be a non-empty string, got {text!r:.60}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, f"texts[{index}] contains a lone surrogate (not valid Unicode)") from None


def parse_encode_request(body: bytes, max_texts: int) -> EncodeRequest:
    """Validates a POST /encode body; raises RequestError (4xx) otherwise."""
    try:
        request = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RequestError(400, f"body is not valid UTF-8 JSON: {error}") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the parser's stack
        raise RequestError(400, "body is JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise RequestError(400, f"body is not valid UTF-8 JSON: {error}") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise RequestError(400, 'expected a JSON object {"texts": ["...", ...]}')
    texts = request["texts"]
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, '"texts" must be a non-empty list of strings')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the server takes at most {max_texts}")
    is_tokenized = request.get("is_tokenized")
    if is_tokenized is None:  # as bert-as-service's worker: a list of lists is tokenized
        is_tokenized = all(isinstance(text, list) for text in texts)
    if not isinstance(is_tokenized, bool):
        raise RequestError(400, f'"is_tokenized" must be true or false, got {is_tokenized!r:.60}')
    for index, text in enumerate(texts):
        if is_tokenized:
            if not isinstance(text, list) or not text:
                raise RequestError(400, f"texts[{index}] must be a non-empty list of tokens (is_tokenized), "
                                        f"got {text!r:.60}")
            for token in text:
                _check_text(index, token)
        else:
            _check_text(index, text)
    output_format = request.get("format", "json")
    if output_format not in _ALLOWED_FORMATS:
        raise RequestError(400, f'"format" must be one of {", ".join(_ALLOWED_FORMATS)}, got {output_format!r:.60}')
    show_tokens = request.get("show_tokens", False)
    if not isinstance(show_tokens, bool):
        raise RequestError(400, f'"show_tokens" must be true or false, got {show_tokens!r:.60}')
    request_id = request.get("id")
    try:  # it is sent back: it must be JSON again (no NaN, no lone surrogate)
        json.dumps(request_id, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise RequestError(400, f'"id" cannot be sent back as JSON: {request_id!r:.60}') from None
    return EncodeRequest(texts, request_id, output_format, is_tokenized, show_tokens)


def split_pair(text, is_tokenized: bool = False):
    """bert-as-service's sentence pairs: "a ||| b" -> ("a", "b"); a token list splits at its first "|||"."""
    if is_tokenized:
        if "|||" in text:
            index = text.index("|||")
            if text[index + 1:]:
                return (text[:index], text[index + 1:])
            return text[:index]
        return text
    text = text.strip()
    match = re.match(r"^(.*) \|\|\| (.*)$", text)
    return text if match is None or not match.group(2) else (match.group(1), match.group(2))


def response_size(count: int, shape: Sequence[int], output_format: str) -> int:
    """Estimated bytes of an answer of `count` rows of `shape` float32."""
    floats = count * math.prod(shape)
    return floats * 4 * 4 // 3 if output_format == "base64" else floats * _JSON_BYTES_PER_FLOAT


# ---- connections -----------------------------------------------------------------------------------

class _Connection:
    __slots__ = ("sock", "phase", "deadline", "since")

    def __init__(self, sock, deadline: float):
        self.sock, self.phase, self.deadline, self.since = sock, "idle", deadline, time.monotonic()


class _ConnectionTracker:
    """Open connections, what each is doing and until when; a reaper thread closes the overdue ones."""

    def __init__(self, max_open: int, idle_timeout: float):
        self.max_open = max_open
        self.idle_timeout = idle_timeout
        self._open: dict[object, _Connection] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.evicted = 0
        self.timed_out = 0
        self._reaper = threading.Thread(target=self._reap, name="connection-reaper", daemon=True)
        self._reaper.start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._open)

    def admit(self, sock) -> bool:
        """Registers a new connection; at the cap the longest-idle one is closed for it (False: none idle)."""
        with self._lock:
            if len(self._open) >= self.max_open:
                idle = [connection for connection in self._open.values() if connection.phase == "idle"]
                if not idle:
                    return False
                oldest = min(idle, key=lambda connection: connection.since)
                del self._open[oldest.sock]
                self.evicted += 1
                _shutdown(oldest.sock)
            self._open[sock] = _Connection(sock, time.monotonic() + self.idle_timeout)
        return True

    def set_phase(self, sock, phase: str, timeout: float | None) -> None:
        with self._lock:
            connection = self._open.get(sock)
            if connection is not None:
                now = time.monotonic()
                connection.phase, connection.since = phase, now
                connection.deadline = _INF if timeout is None else now + timeout

    def release(self, sock) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def _reap(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                overdue = [connection for connection in self._open.values() if connection.deadline < now]
                for connection in overdue:
                    del self._open[connection.sock]
                    self.timed_out += 1
            for connection in overdue:
                _shutdown(connection.sock)  # the blocked read or write returns; its thread ends

    def close(self) -> None:
        self._stop.set()
        self._reaper.join(timeout=5)


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


# ---- HTTP --------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server: "_HTTPServer"

    def setup(self):
        self.timeout = self.server.owner.socket_timeout  # every blocking read or write on the socket
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        logging.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self):
        """The stdlib's, with the connection's phase (idle / reading / ...) told to the tracker."""
        owner = self.server.owner
        owner.connections.set_phase(self.connection, "idle", owner.idle_timeout)
        try:
            self.raw_requestline = self.rfile.readline(65537)
            owner.connections.set_phase(self.connection, "reading", owner.read_timeout)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501)
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionError, OSError, ValueError):
            # A read or write timed out, the reaper closed the socket, or the client went away.
            self.close_connection = True

    def _start_response(self, status: int, headers: dict) -> None:
        owner = self.server.owner
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if owner.cors:
            self.send_header("Access-Control-Allow-Origin", owner.cors)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        owner = self.server.owner
        owner.connections.set_phase(self.connection, "writing", owner.write_timeout(len(body)))
        self._start_response(status, {"Content-Type": "application/json; charset=utf-8",
                                      "Content-Length": str(len(body))})
        self.wfile.write(body)

    def _send_error_json(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message, "status": status})

    def send_error(self, code, message=None, explain=None):
        """The stdlib's own errors (bad request line, unknown method, ...) as JSON too, not HTML."""
        if code == 501:  # an HTTP method we do not serve
            code, message = 405, f"method {self.command} not allowed; use POST /encode or GET /status"
        self.close_connection = True
        try:
            self._send_error_json(code, message or explain or http.HTTPStatus(code).phrase)
        except OSError:
            pass  # the client is gone

    def do_OPTIONS(self):  # CORS preflight
        self._start_response(204, {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                   "Access-Control-Allow-Headers": "Content-Type", "Content-Length": "0"})

    def do_GET(self):
        if self.path.rstrip("/") in ("/status", "/status/server"):
            self._send_json(200, self.server.owner.status())
        else:
            self._send_error_json(404, f"no such path {self.path!r:.200}; use POST /encode or GET /status")

    def _read_body(self) -> bytes | None:
        owner = self.server.owner
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except (TypeError, ValueError):
            self.close_connection = True  # the body's end is unknown: do not read it
            self._send_error_json(411, "a POST /encode needs a valid Content-Length header")
            return None
        if length > owner.max_request_bytes:
            # Read the body away (up to a bound) so the client sees the answer, not a reset connection.
            if length <= 4 * owner.max_request_bytes:
                remaining = length
                while remaining > 0 and self.rfile.read(min(1 << 20, remaining)):
                    remaining -= 1 << 20
            else:
                self.close_connection = True
            owner.count("rejected")
            self._send_error_json(413, f"request body of {length} bytes exceeds the limit of "
                                       f"{owner.max_request_bytes} bytes (-max_request_bytes)")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("the client closed the connection inside the body")
        return body

    def do_POST(self):
        owner = self.server.owner
        if self.path.rstrip("/") != "/encode":
            self.close_connection = True
            self._send_error_json(404, f"no such path {self.path!r:.200}; use POST /encode or GET /status")
            return
        body = self._read_body()
        if body is None:
            return
        owner.connections.set_phase(self.connection, "working", None)
        try:
            request = parse_encode_request(body, owner.max_texts_per_request)
        except RequestError as error:
            owner.count("rejected")
            self._send_error_json(error.status, str(error))
            return
        del body
        if not owner.in_flight.acquire(blocking=False):
            owner.count("rejected")
            self._send_error_json(503, f"the server is busy: {owner.http_max_connect} requests are being "
                                       "encoded (-http_max_connect); try again")
            return
        try:
            answer = owner.answer(request)
        except RequestError as error:
            owner.count("rejected")
            self._send_error_json(error.status, str(error))
            return
        except Exception as error:  # noqa: BLE001 - the model failed: 5xx, keep serving
            owner.count("failed")
            self._send_error_json(503 if isinstance(error, TimeoutError) else 500, f"{type(error).__name__}: {error}")
            return
        finally:
            owner.in_flight.release()
        owner.count("served")
        head, vectors = answer
        if request.format == "base64":
            array = np.ascontiguousarray(vectors, dtype="<f4")
            head.update(shape=list(array.shape), dtype="float32",
                        embeddings_base64=base64.b64encode(array.data).decode("ascii"))
            self._send_json(200, head)
        else:
            self._send_json_rows(head, vectors)

    def _send_json_rows(self, head: dict, vectors: np.ndarray) -> None:
        """{**head, "result": vectors.tolist()}, written block by block (chunked) when large."""
        owner = self.server.owner
        if vectors.size <= 65536:
            self._send_json(200, {**head, "result": vectors.tolist()})
            return
        owner.connections.set_phase(self.connection, "writing",
                                    owner.write_timeout(vectors.size * _JSON_BYTES_PER_FLOAT))
        self._start_response(200, {"Content-Type": "application/json; charset=utf-8",
                                   "Transfer-Encoding": "chunked"})
        prefix = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        pieces = [(prefix + ("," if head else "") + '"result":[').encode("utf-8")]
        rows_per_block = max(1, 65536 // max(1, vectors[0].size))
        for start in range(0, len(vectors), rows_per_block):
            block = json.dumps(vectors[start:start + rows_per_block].tolist(), separators=(",", ":"))[1:-1]
            pieces.append(((", " if start else "") + block).encode("utf-8"))
        pieces.append(b"]}")
        for piece in pieces:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    owner: "EmbeddingServer"

    def process_request(self, request, client_address):
        if not self.owner.connections.admit(request):
            self.owner.count("refused")
            body = json.dumps({"error": f"too many open connections ({self.owner.connections.max_open}), "
                                        "none idle; try again", "status": 503}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.owner.connections.release(request)
        super().shutdown_request(request)


class EmbeddingServer:
    """`encode_fn(items) -> float32 [n, ...]` served over HTTP; `port=0` picks a free port.

    `featurize_fn(texts, is_tokenized) -> items` runs in the HTTP thread (default: the texts themselves);
    `output_shape_fn(items) -> shape of one answer row` lets the server refuse oversized answers before
    encoding; `tokens_fn(items) -> token lists` answers `show_tokens` (with `show_tokens_to_client`).
    """

    def __init__(self, encode_fn: Callable[[list], np.ndarray], host: str = "127.0.0.1", port: int = 8125,
                 max_batch_size: int = 256, num_worker: int = 1, max_texts_per_request: int = 10000,
                 max_request_bytes: int = 16 * 1024 * 1024, max_response_bytes: int = 512 * 1024 * 1024,
                 request_timeout: float | None = 600.0, priority_batch_size: int = 16, merge_requests: bool = False,
                 batch_seconds: float | None = None,
                 http_max_connect: int = 10,
                 max_open_connections: int = 256, idle_timeout: float = 15.0, read_timeout: float = 30.0,
                 socket_timeout: float = 30.0, cors: str | None = "*",
                 featurize_fn: Callable[[list, bool], list] | None = None,
                 output_shape_fn: Callable[[list], tuple] | None = None,
                 tokens_fn: Callable[[list], list] | None = None, show_tokens_to_client: bool = False,
                 info: dict | None = None):
        if http_max_connect < 1 or max_open_connections < 1:
            raise ValueError(f"http_max_connect ({http_max_connect}) and max_open_connections "
                             f"({max_open_connections}) must be >= 1")
        self.max_texts_per_request = max_texts_per_request
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.request_timeout = request_timeout
        self.idle_timeout, self.read_timeout, self.socket_timeout = idle_timeout, read_timeout, socket_timeout
        self.http_max_connect = http_max_connect
        self.in_flight = threading.BoundedSemaphore(http_max_connect)
        self.cors = cors or None
        self.featurize_fn = featurize_fn or (lambda texts, is_tokenized: list(texts))
        self.output_shape_fn = output_shape_fn
        self.tokens_fn = tokens_fn
        self.show_tokens_to_client = show_tokens_to_client and tokens_fn is not None
        self.info = dict(info or {})
        self.queue = BatchingQueue(encode_fn, max_batch_size, num_worker, priority_batch_size, merge_requests,
                                   batch_seconds)
        self.connections = _ConnectionTracker(max_open_connections, idle_timeout)
        self._counts = collections.Counter()
        self._lock = threading.Lock()
        self._started = time.time()
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError:
            self.queue.close()
            self.connections.close()
            raise
        self.httpd.owner = self
        self._thread: threading.Thread | None = None
        self.info.update(server_version=__version__, max_batch_size=max_batch_size, num_worker=num_worker,
                         priority_batch_size=priority_batch_size, merge_requests=merge_requests,
                         batch_seconds=batch_seconds,
                         http_max_connect=http_max_connect,
                         max_texts_per_request=max_texts_per_request, max_request_bytes=max_request_bytes,
                         max_response_bytes=max_response_bytes, show_tokens_to_client=self.show_tokens_to_client,
                         cors=self.cors)

    def write_timeout(self, size: int) -> float:
        """Seconds a client may take to read an answer of `size` bytes (at least 1 MB/s)."""
        return self.socket_timeout + size / 1e6

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def answer(self, request: EncodeRequest) -> tuple[dict, np.ndarray]:
        """A validated request -> (answer fields but the vectors, vectors); RequestError for 4xx."""
        try:
            items = self.featurize_fn(request.texts, request.is_tokenized)
        except (TypeError, ValueError) as error:
            raise RequestError(400, f"cannot tokenize the texts: {error}") from None
        shape = None
        if self.output_shape_fn is not None:
            shape = tuple(self.output_shape_fn(items))
            size = response_size(len(items), shape, request.format)
            if size > self.max_response_bytes:
                raise RequestError(413, f"the answer would take about {size} bytes ({len(items)} rows of shape "
                                        f"{list(shape)}, {request.format}); the limit is {self.max_response_bytes} "
                                        "bytes (-max_response_bytes): send fewer texts")
        vectors = self.queue.submit(items, timeout=self.request_timeout, shape=shape)
        head = {"id": request.id} if request.id is not None else {}
        if request.show_tokens and self.show_tokens_to_client:
            head["tokens"] = self.tokens_fn(items)
        return head, vectors

    def status(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
        batches, sentences = self.queue.batches, self.queue.sentences
        return {**self.info, "status": "ok", "uptime_s": round(time.time() - self._started, 3),
                "requests_served": counts.get("served", 0), "requests_rejected": counts.get("rejected", 0),
                "requests_failed": counts.get("failed", 0), "connections_refused": counts.get("refused", 0),
                "connections_open": self.connections.count, "connections_evicted": self.connections.evicted,
                "connections_timed_out": self.connections.timed_out, "requests_dropped": self.queue.dropped,
                "sentences_encoded": sentences, "sentences_pending": self.queue.pending,
                "batches": batches, "mean_batch_size": sentences / batches if batches else 0.0,
                "encode_seconds": round(self.queue.encode_seconds, 3)}

    def start(self) -> "EmbeddingServer":
        """Serves in a background thread (tests, benches); `shutdown()` stops it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=30)
            self._thread = None
        self.httpd.server_close()
        self.queue.close()
        self.connections.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.shutdown()


# ---- the command line's pieces (danmaku.serve) ---------------------------------------------------

_LIST_FLAGS = ("pooling_layer", "device_map")
_FLAG_ALIASES = {"port_in": "port", "port_data": "port", "port_result": "port_out"}  # bert-as-service's aliases


def normalize_argv(argv: list[str]) -> list[str]:
    """bert-as-service's `-pooling_layer -4 -3 -2 -1` (argparse nargs='+') -> `--pooling_layer=-4,-3,-2,-1`,
    and its flag aliases (`-port_in`, `-port_data`, `-port_result`) -> our names."""
    result, index = [], 0
    while index < len(argv):
        argument = argv[index]
        name, equals, value = argument.lstrip("-").partition("=")
        if argument.startswith("-") and name in _FLAG_ALIASES:
            argument = f"--{_FLAG_ALIASES[name]}{equals}{value}"
            name = _FLAG_ALIASES[name]
        if argument.startswith("-") and name in _LIST_FLAGS and not equals:
            values = []
            while index + 1 < len(argv) and re.fullmatch(r"-?\d+", argv[index + 1]):
                values.append(argv[index + 1])
                index += 1
            result.append(f"--{name}={','.join(values)}" if values else argument)
        else:
            result.append(argument)
        index += 1
    return result


def parse_max_seq_len(value: str, model_limit: int) -> int | None:
    """bert-as-service's -max_seq_len: an integer > 3, or NONE (None: each request's longest text)."""
    if value is None or str(value).upper() == "NONE":
        return None
    try:
        length = int(value)
    except ValueError:
        raise UserError(f"-max_seq_len must be an integer or NONE, got {value!r}") from None
    if not 3 < length <= model_limit:
        raise UserError(f"-max_seq_len={length} must be in 4..{model_limit} (the model's positions; "
                        "[CLS] and up to two [SEP] take 3) or NONE")
    return length


def build_server(model_dir: str, tuned_model_dir: str | None = None, ckpt_name: str | None = None,
                 config_name: str = "bert_config.json", max_seq_len: str | int | None = 25,
                 pooling_strategy: str = "REDUCE_MEAN", pooling_layer=(-2,), mask_cls_sep: bool = False,
                 max_batch_size: int = 256, num_worker: int = 1, host: str = "127.0.0.1", port: int = 8125,
                 lowercase: bool | None = None, show_tokens_to_client: bool = False,
                 fixed_embed_length: bool = False, xla: bool = False, info: dict | None = None,
                 loaded=None, **server_kwargs):
    """Loads the model and returns an `EmbeddingServer` (not yet serving) with bert-as-service's
    semantics: `pooling_layer` counts encoder blocks (0 = the first, -1 = the last), `mask_cls_sep`
    zeroes the input mask of [CLS]/[SEP] (hidden from attention and pooling), "a ||| b" is a pair.
    `loaded`: a `common.model_source.load` result already loaded (the folder arguments are then only reported)."""
    from common import model_source
    from common.embeddings import SentenceEncoder, check_strategy, tokenize_prefix

    if max_batch_size < 1 or num_worker < 1:
        raise UserError(f"-max_batch_size ({max_batch_size}) and -num_worker ({num_worker}) must be at least 1")
    if loaded is None:
        loaded = model_source.load(model_dir, weights=tuned_model_dir, ckpt_name=ckpt_name, config_name=config_name,
                                   lowercase=lowercase)
    positions = loaded.config.max_position_embeddings
    length = parse_max_seq_len(None if max_seq_len is None else str(max_seq_len), positions)
    try:
        layers = tuple(int(layer) for layer in pooling_layer)
        encoder = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling=pooling_strategy, layers=layers,
                                  max_seq_length=length, batch_size=max_batch_size, mask_cls_sep=mask_cls_sep,
                                  mask_cls_sep_in_attention=mask_cls_sep, layer_indexing="encoder_blocks",
                                  jit_compile=xla, pad_to_multiple_of=8 if xla else 1)
    except ValueError as error:
        raise UserError(str(error)) from None
    strategy = check_strategy(pooling_strategy)

    def featurize(texts, is_tokenized):
        return encoder.featurize([split_pair(text, is_tokenized) for text in texts])

    def output_shape(rows):
        if strategy != "NONE":
            return (encoder.width,)
        if length is not None:
            return (length, encoder.width)
        if fixed_embed_length:
            return (positions, encoder.width)
        # As bert-as-service: the longest text's tokens plus 3 special tokens if any text is a pair, else 2.
        pairs = any(any(segments) for _, segments in rows)
        longest = max(len(ids) - (3 if any(segments) else 2) for ids, segments in rows)
        return (min(longest + (3 if pairs else 2), positions), encoder.width)

    def tokens(rows):
        return [loaded.tokenizer.convert_ids_to_tokens(ids) for ids, _ in rows]

    details = {"model_dir": model_dir, "tuned_model_dir": tuned_model_dir, "weights": loaded.weights,
               "pooling_strategy": strategy, "pooling_layer": list(layers), "mask_cls_sep": mask_cls_sep,
               "max_seq_len": length, "fixed_embed_length": fixed_embed_length, "width": encoder.width,
               "max_position_embeddings": positions, "vocab_size": loaded.tokenizer.vocab_size,
               "do_lower_case": loaded.tokenizer.lowercase, "xla": xla}
    encoder.encode(["warm up"])  # trace once before the first client waits for it
    tokenize_prefix(loaded.tokenizer, "warm up " * 200, 2)  # its table is built now, not in a request
    return EmbeddingServer(encoder.encode_rows, host=host, port=port, max_batch_size=max_batch_size,
                           num_worker=num_worker, featurize_fn=featurize, output_shape_fn=output_shape,
                           tokens_fn=tokens, show_tokens_to_client=show_tokens_to_client,
                           info={**(info or {}), **details}, **server_kwargs)
