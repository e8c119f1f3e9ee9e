"""An HTTP JSON sentence-embedding server that batches requests across clients (bert-as-service style).

    POST /encode  {"texts": ["草", "awsl"], "id": 7}  ->  {"embeddings": [[...], [...]], "id": 7}
    GET  /status  (also /status/server)                ->  settings and counters

A request may add `"format": "base64"` to receive `{"embeddings_base64", "shape", "dtype"}` (raw
little-endian float32), which `danmaku.client.BertClient` uses: it skips formatting floats as text.

Handler threads only parse and validate; one or more worker threads take whatever requests are
waiting, concatenate their texts up to `max_batch_size`, call `encode_fn` once and hand each request
its rows. Bad requests get a 4xx JSON `{"error": ...}` and the server keeps serving.
"""

from __future__ import annotations

import base64
import collections
import http.server
import json
import re
import threading
import time
from typing import Callable, Sequence

import numpy as np
from absl import logging

from common.cli import UserError

_ALLOWED_FORMATS = ("json", "base64")


class _Job:
    __slots__ = ("texts", "done", "result", "error")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchingQueue:
    """Requests wait here; workers take them in arrival order, as many as fit in one batch."""

    def __init__(self, encode_fn: Callable[[list[str]], np.ndarray], max_batch_size: int, num_workers: int = 1,
                 output_length: int | None = None):
        if max_batch_size < 1 or num_workers < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and num_workers ({num_workers}) must be >= 1")
        self.encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        # Per-token outputs (pooling NONE) are zero-padded to this length so every row has one shape.
        self.output_length = output_length
        self._pending: collections.deque[_Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self.batches = 0
        self.sentences = 0
        self._workers = [threading.Thread(target=self._work, name=f"encode-worker-{index}", daemon=True)
                         for index in range(num_workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        job = _Job(texts)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._condition.notify()
        if not job.done.wait(timeout):
            raise TimeoutError(f"encoding took longer than {timeout} s")
        if job.error is not None:
            raise job.error
        return job.result

    def _take_batch(self) -> list[_Job] | None:
        with self._condition:
            while not self._pending and not self._stopping:
                self._condition.wait()
            if not self._pending:
                return None
            jobs, size = [], 0
            # Whole requests only; the first one goes even if it alone exceeds the batch size
            # (encode_fn splits it into batches itself).
            while self._pending and (not jobs or size + len(self._pending[0].texts) <= self.max_batch_size):
                job = self._pending.popleft()
                jobs.append(job)
                size += len(job.texts)
            return jobs

    def _pad(self, rows: np.ndarray) -> np.ndarray:
        if rows.ndim != 3 or self.output_length is None or rows.shape[1] >= self.output_length:
            return rows
        padded = np.zeros((rows.shape[0], self.output_length, rows.shape[2]), rows.dtype)
        padded[:, : rows.shape[1]] = rows
        return padded

    def _work(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            texts = [text for job in jobs for text in job.texts]
            try:
                vectors = self._pad(np.asarray(self.encode_fn(texts), dtype=np.float32))
                if len(vectors) != len(texts):
                    raise RuntimeError(f"encode_fn returned {len(vectors)} rows for {len(texts)} texts")
            except Exception as error:  # noqa: BLE001 - reported to every waiting request, server lives on
                logging.exception("encoding a batch of %d texts failed", len(texts))
                for job in jobs:
                    job.error = error
                    job.done.set()
                continue
            with self._condition:
                self.batches += 1
                self.sentences += len(texts)
            start = 0
            for job in jobs:
                job.result = vectors[start: start + len(job.texts)]
                start += len(job.texts)
                job.done.set()

    def close(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_encode_request(body: bytes, max_texts: int) -> tuple[list[str], object, str]:
    """Validates a POST /encode body -> (texts, id, format); raises RequestError (4xx) otherwise."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"body is not valid UTF-8 JSON: {error}") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the parser's stack
        raise RequestError(400, "body is JSON nested too deeply") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise RequestError(400, 'expected a JSON object {"texts": ["...", ...]}')
    texts = request["texts"]
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, '"texts" must be a non-empty list of strings')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the server takes at most {max_texts}")
    for index, text in enumerate(texts):
        # As bert-as-service: every element must be a non-empty string.
        if not isinstance(text, str) or not text.strip():
            raise RequestError(400, f"texts[{index}] must be a non-empty string, got {text!r:.60}")
    output_format = request.get("format", "json")
    if output_format not in _ALLOWED_FORMATS:
        raise RequestError(400, f'"format" must be one of {", ".join(_ALLOWED_FORMATS)}, got {output_format!r}')
    return texts, request.get("id"), output_format


def encode_response(vectors: np.ndarray, request_id, output_format: str) -> dict:
    response = {"id": request_id} if request_id is not None else {}
    if output_format == "base64":
        array = np.ascontiguousarray(vectors, dtype="<f4")
        response.update(embeddings_base64=base64.b64encode(array.tobytes()).decode("ascii"),
                        shape=list(array.shape), dtype="float32")
    else:
        response["embeddings"] = vectors.tolist()
    return response


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server: "_HTTPServer"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        logging.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """The stdlib's own errors (bad request line, unknown method, ...) as JSON too, not HTML."""
        if code == 501:  # an HTTP method we do not serve
            code, message = 405, f"method {self.command} not allowed; use POST /encode or GET /status"
        self.close_connection = True
        try:
            self._send_json(code, {"error": message or explain or http.HTTPStatus(code).phrase})
        except OSError:
            pass  # the client is gone

    def do_GET(self):
        if self.path.rstrip("/") in ("/status", "/status/server"):
            self._send_json(200, self.server.owner.status())
        else:
            self._send_json(404, {"error": f"no such path {self.path!r}; use POST /encode or GET /status"})

    def do_POST(self):
        owner = self.server.owner
        if self.path.rstrip("/") != "/encode":
            self.close_connection = True
            self._send_json(404, {"error": f"no such path {self.path!r}; use POST /encode or GET /status"})
            return
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except (TypeError, ValueError):
            self.close_connection = True  # the body's end is unknown: do not read it
            self._send_json(411, {"error": "a POST /encode needs a valid Content-Length header"})
            return
        if length > owner.max_request_bytes:
            # Read the body away (up to a bound) so the client sees the answer, not a reset connection.
            if length <= 16 * owner.max_request_bytes:
                for _ in range(0, length, 1 << 20):
                    self.rfile.read(min(1 << 20, length))
                    length -= 1 << 20
            else:
                self.close_connection = True
            owner.count("rejected")
            self._send_json(413, {"error": f"request body of {int(self.headers['Content-Length'])} bytes "
                                           f"exceeds the limit of {owner.max_request_bytes} bytes"})
            return
        body = self.rfile.read(length)
        try:
            texts, request_id, output_format = parse_encode_request(body, owner.max_texts_per_request)
        except RequestError as error:
            owner.count("rejected")
            self._send_json(error.status, {"error": str(error)})
            return
        try:
            vectors = owner.queue.submit(texts, timeout=owner.request_timeout)
        except Exception as error:  # noqa: BLE001 - the model failed: 5xx, keep serving
            owner.count("failed")
            self._send_json(503 if isinstance(error, TimeoutError) else 500,
                            {"error": f"{type(error).__name__}: {error}"})
            return
        owner.count("served")
        self._send_json(200, encode_response(vectors, request_id, output_format))


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: "EmbeddingServer"


class EmbeddingServer:
    """`encode_fn(texts) -> float32 [n, width]` served over HTTP; `port=0` picks a free port."""

    def __init__(self, encode_fn: Callable[[list[str]], np.ndarray], host: str = "127.0.0.1", port: int = 8125,
                 max_batch_size: int = 256, num_worker: int = 1, max_texts_per_request: int = 10000,
                 max_request_bytes: int = 16 * 1024 * 1024, request_timeout: float | None = 600.0,
                 output_length: int | None = None, info: dict | None = None):
        self.max_texts_per_request = max_texts_per_request
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.info = dict(info or {})
        self.queue = BatchingQueue(encode_fn, max_batch_size, num_worker, output_length)
        self._counts = collections.Counter()
        self._lock = threading.Lock()
        self._started = time.time()
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError:
            self.queue.close()
            raise
        self.httpd.owner = self
        self._thread: threading.Thread | None = None
        self.info.update(max_batch_size=max_batch_size, num_worker=num_worker,
                         max_texts_per_request=max_texts_per_request)

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

    def status(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
        batches, sentences = self.queue.batches, self.queue.sentences
        return {**self.info, "status": "ok", "uptime_s": round(time.time() - self._started, 3),
                "requests_served": counts.get("served", 0), "requests_rejected": counts.get("rejected", 0),
                "requests_failed": counts.get("failed", 0), "sentences_encoded": sentences,
                "batches": batches, "mean_batch_size": sentences / batches if batches else 0.0}

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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.shutdown()


def sentence_encoder_fn(sentence_encoder) -> Callable[[Sequence[str]], np.ndarray]:
    """`common.embeddings.SentenceEncoder.encode` as the server's `encode_fn`."""
    return lambda texts: sentence_encoder.encode(list(texts))


# ---- the command line's pieces (danmaku.serve) ---------------------------------------------------

_LIST_FLAGS = ("pooling_layer",)


def normalize_argv(argv: list[str]) -> list[str]:
    """bert-as-service's `-pooling_layer -4 -3 -2 -1` (argparse nargs='+') -> `--pooling_layer=-4,-3,-2,-1`."""
    result, index = [], 0
    while index < len(argv):
        argument = argv[index]
        name = argument.lstrip("-")
        if argument.startswith("-") and name in _LIST_FLAGS:
            values = []
            while index + 1 < len(argv) and re.fullmatch(r"-?\d+", argv[index + 1]):
                values.append(argv[index + 1])
                index += 1
            result.append(f"--{name}={','.join(values)}" if values else argument)
        else:
            result.append(argument)
        index += 1
    return result


def parse_max_seq_len(value: str, model_limit: int) -> int:
    if str(value).upper() == "NONE":
        return model_limit
    try:
        length = int(value)
    except ValueError:
        raise UserError(f"-max_seq_len must be an integer or NONE, got {value!r}") from None
    if not 3 <= length <= model_limit:
        raise UserError(f"-max_seq_len={length} must be in 3..{model_limit} (the model's positions)")
    return length


def build_server(model_dir: str, tuned_model_dir: str | None = None, ckpt_name: str | None = None,
                 config_name: str = "bert_config.json", max_seq_len: str | int = 25,
                 pooling_strategy: str = "REDUCE_MEAN", pooling_layer=(-2,), mask_cls_sep: bool = False,
                 max_batch_size: int = 256, num_worker: int = 1, host: str = "127.0.0.1", port: int = 8125,
                 lowercase: bool | None = None, **server_kwargs):
    """Loads the model and returns an `EmbeddingServer` (not yet serving)."""
    from common.embeddings import SentenceEncoder, check_strategy
    from common import model_source

    if max_batch_size < 1 or num_worker < 1:
        raise UserError(f"-max_batch_size ({max_batch_size}) and -num_worker ({num_worker}) must be at least 1")
    loaded = model_source.load(model_dir, weights=tuned_model_dir, ckpt_name=ckpt_name, config_name=config_name,
                               lowercase=lowercase)
    length = parse_max_seq_len(str(max_seq_len), loaded.config.max_position_embeddings)
    try:
        layers = tuple(int(layer) for layer in pooling_layer)
        sentence_encoder = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling=pooling_strategy,
                                           layers=layers, max_seq_length=length, batch_size=max_batch_size,
                                           mask_cls_sep=mask_cls_sep)
    except ValueError as error:
        raise UserError(str(error)) from None
    info = {"model_dir": model_dir, "tuned_model_dir": tuned_model_dir, "weights": loaded.weights,
            "pooling_strategy": check_strategy(pooling_strategy), "pooling_layer": list(layers),
            "mask_cls_sep": mask_cls_sep, "max_seq_len": length, "width": sentence_encoder.width,
            "vocab_size": loaded.tokenizer.vocab_size, "do_lower_case": loaded.tokenizer.lowercase}
    sentence_encoder.encode(["warm up"])  # trace once before the first client waits for it
    return EmbeddingServer(sentence_encoder_fn(sentence_encoder), host=host, port=port,
                           max_batch_size=max_batch_size, num_worker=num_worker, info=info,
                           output_length=length, **server_kwargs)
