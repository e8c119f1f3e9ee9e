"""The client of `python -m danmaku.serve`, shaped like bert-as-service's `BertClient`.

    from danmaku.client import BertClient
    bc = BertClient(port=8125, timeout=10000)      # timeout in milliseconds, -1 waits forever
    vectors = bc.encode(["草", "awsl"])               # np.ndarray float32 [2, width]
    vectors, tokens = bc.encode(["草"], show_tokens=True)      # with `-show_tokens_to_client`
    bc.encode([["草", "awsl"]], is_tokenized=True)             # wordpieces given
    bc.encode(["前方高能 ||| awsl"])                            # a sentence pair

The constructor's arguments are bert-as-service's, in its order. As there, the constructor asks the
server for its settings (`ignore_all_checks=True` skips that); `encode(..., blocking=False)` with
`fetch()` / `fetch_all()` / `encode_async()` sends requests one after another from a background thread.
One client holds one keep-alive HTTP connection: give each thread its own, as bert-as-service asks
too. Only the standard library and NumPy are needed.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import http.client
import json
import socket
import threading
import time
import uuid
import warnings
from typing import Sequence

import numpy as np

__version__ = "1.10.0"  # bert-as-service's protocol this server and client follow (client == server)

Response = collections.namedtuple("Response", ["id", "embedding", "tokens"])


class BertClientError(ConnectionError):
    """No server answered, or the server refused the request (the message says which)."""


class BertClientTimeout(BertClientError, TimeoutError):
    """The server did not answer within the client's `timeout` (a TimeoutError, as in bert-as-service)."""


class BertClient:
    def __init__(self, ip: str = "localhost", port: int = 8125, port_out: int | None = None,
                 output_fmt: str = "ndarray", show_server_config: bool = False, identity: str | None = None,
                 check_version: bool = True, check_length: bool = True, check_token_info: bool = True,
                 ignore_all_checks: bool = False, timeout: float = -1):
        """bert-as-service's arguments, in its order. `port_out` is accepted and unused (one HTTP port
        serves both ways); `timeout` is in milliseconds (-1: no limit); `output_fmt` 'ndarray' or 'list';
        `identity` names this client to the server (default a UUID). Unless `ignore_all_checks`, the
        server's settings are read now: `check_version` raises AttributeError when its version differs,
        `check_length` warns when a text has more whitespace-separated words than its `max_seq_len`,
        `check_token_info` learns whether it can show tokens, `show_server_config` prints them."""
        if output_fmt not in ("ndarray", "list"):
            raise AttributeError('"output_fmt" must be "ndarray" or "list"')
        self.ip, self.port, self.port_out = ip, int(port), port_out
        self.timeout = timeout
        self._timeout_s = None if timeout is None or timeout < 0 else timeout / 1000.0
        self.output_fmt = output_fmt
        self.identity = str(identity or uuid.uuid4())
        self.length_limit = 0
        self.token_info_available = False
        self.request_id = 0
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # the connection is shared by blocking calls and the background sender
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._server_config: dict | None = None
        if not ignore_all_checks and (check_version or show_server_config or check_length or check_token_info):
            status = self.server_status
            if check_version and status.get("server_version") != __version__:
                raise AttributeError(f"version mismatch! server version is {status.get('server_version')} but "
                                     f"client version is {__version__}; disable the check with "
                                     "BertClient(check_version=False)")
            if check_length and "max_seq_len" in status:
                limit = status["max_seq_len"]
                self.length_limit = None if limit is None else int(limit)
            if check_token_info:
                self.token_info_available = bool(status.get("show_tokens_to_client"))
            if show_server_config:
                print("server config:")
                for key, value in status.items():
                    print("%30s\t=\t%-30s" % (key, value))

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"X-Client-Identity": self.identity}
        if body is not None:
            headers["Content-Type"] = "application/json"
        with self._lock:
            for attempt in (0, 1):
                if self._connection is None:
                    self._connection = http.client.HTTPConnection(self.ip, self.port, timeout=self._timeout_s)
                try:
                    self._connection.request(method, path, body=body, headers=headers)
                    response = self._connection.getresponse()
                    data = response.read()
                    break
                except (ConnectionRefusedError, socket.gaierror) as error:
                    self._close_connection()
                    raise BertClientError(f"no embedding server answers at {self.url} ({error}); start one "
                                          f"with `python -m danmaku.serve -model_dir ... -port {self.port}`") from None
                except (TimeoutError, socket.timeout):
                    self._close_connection()
                    raise BertClientTimeout(f"the server at {self.url} did not answer within {self._timeout_s:g} s "
                                            f"(timeout={self.timeout} ms)") from None
                except (http.client.RemoteDisconnected, http.client.IncompleteRead, BrokenPipeError,
                        ConnectionResetError) as error:
                    # A kept-alive connection the server has closed meanwhile: retry once on a new one.
                    self._close_connection()
                    if attempt:
                        raise BertClientError(f"the server at {self.url} closed the connection ({error})") from None
            if response.getheader("Connection", "").lower() == "close":
                self._close_connection()
        try:
            result = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BertClientError(f"{self.url}{path} answered HTTP {response.status} with a body that is "
                                  f"not JSON: {data[:200]!r}") from None
        if response.status != 200:
            message = result.get("error", result) if isinstance(result, dict) else result
            raise BertClientError(f"{self.url}{path}: HTTP {response.status}: {message}")
        return result

    @property
    def server_status(self) -> dict:
        """The server's `GET /status` (settings and counters)."""
        self._server_config = self._request("GET", "/status")
        return self._server_config

    server_config = server_status

    @property
    def status(self) -> dict:
        """This client's settings and counters (bert-as-service's `BertClient.status`)."""
        return {"identity": self.identity, "num_request": self.request_id,
                "num_pending_request": len(self._pending), "pending_request": set(self._pending),
                "output_fmt": self.output_fmt, "port": self.port, "port_out": self.port_out,
                "server_ip": self.ip, "client_version": __version__, "timeout": self.timeout}

    def encode(self, texts: Sequence, blocking: bool = True, is_tokenized: bool = False, show_tokens: bool = False):
        """Texts -> float32 embeddings `[n, width]` (`[n, max_seq_len, width]` under pooling NONE);
        `(embeddings, tokens)` when `show_tokens` and the server shows tokens. `is_tokenized`: each
        text is a list of wordpieces. `blocking=False` returns None at once; `fetch()` gets the result."""
        texts = _check_texts(texts, is_tokenized)
        if self.length_limit is None:
            warnings.warn('the server does not restrict "max_seq_len": it pads each request to its longest '
                          "text; restricting lengths on the client side is more efficient", stacklevel=2)
        elif self.length_limit and not all(len(text if is_tokenized else text.split()) <= self.length_limit
                                           for text in texts):
            warnings.warn(f'some texts have more tokens than "max_seq_len={self.length_limit}" set on the server '
                          "and are truncated; disable this check with BertClient(check_length=False) or start "
                          "the server with a larger -max_seq_len", stacklevel=2)
        if show_tokens and not self.token_info_available:
            warnings.warn('"show_tokens=True", but the server does not send tokens: start it with '
                          "-show_tokens_to_client (or the client without check_token_info=False)", stacklevel=2)
            show_tokens = False
        self.request_id += 1
        request_id = self.request_id
        payload = {"id": request_id, "texts": texts, "is_tokenized": is_tokenized, "format": "base64",
                   "show_tokens": show_tokens}
        if not blocking:
            if self._sender is None:
                self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bert-client")
            self._pending[request_id] = self._sender.submit(self._encode_payload, payload, show_tokens)
            return None
        response = self._encode_payload(payload, show_tokens)
        return (response.embedding, response.tokens) if show_tokens else response.embedding

    def _encode_payload(self, payload: dict, show_tokens: bool) -> Response:
        result = self._request("POST", "/encode", payload)
        vectors = np.frombuffer(base64.b64decode(result["embeddings_base64"]), dtype="<f4")
        vectors = vectors.reshape(result["shape"]).astype(np.float32, copy=False)
        embedding = vectors if self.output_fmt == "ndarray" else vectors.tolist()
        return Response(payload["id"], embedding, result.get("tokens", "") if show_tokens else "")

    def fetch(self, delay: float = 0.0):
        """Yields `Response(id, embedding, tokens)` of the `encode(..., blocking=False)` requests as they finish."""
        time.sleep(delay)
        while self._pending:
            done, _ = concurrent.futures.wait(list(self._pending.values()), timeout=self._timeout_s,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                raise BertClientTimeout(f"no answer from {self.url} within {self._timeout_s:g} s "
                                        f"(timeout={self.timeout} ms)")
            for request_id in sorted(key for key, future in self._pending.items() if future in done):
                yield self._pending.pop(request_id).result()

    def fetch_all(self, sort: bool = True, concat: bool = False):
        """All pending results (in sending order with `sort`), concatenated into one array with `concat`."""
        if not self._pending:
            return None
        responses = list(self.fetch())
        if sort:
            responses.sort(key=lambda response: response.id)
        embeddings = [response.embedding for response in responses]
        if concat:
            if self.output_fmt == "ndarray":
                return np.concatenate(embeddings, axis=0)
            return [row for embedding in embeddings for row in embedding]
        return embeddings

    def encode_async(self, batch_generator, max_num_batch: int | None = None, delay: float = 0.1, **kwargs):
        """Sends each batch the generator yields (`encode(batch, blocking=False, **kwargs)`); yields Responses."""
        def send():
            for count, texts in enumerate(batch_generator, start=1):
                self.encode(texts, blocking=False, **kwargs)
                if max_num_batch and count == max_num_batch:
                    break

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(delay)
        while sender.is_alive() or self._pending:
            if self._pending:
                yield from self.fetch()
            else:
                sender.join(0.01)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        with self._lock:
            self._close_connection()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _check_texts(texts, is_tokenized: bool) -> list:
    """bert-as-service's client checks: a non-empty list of non-empty strings (of lists of them if tokenized)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f'"texts" must be a list of {"lists of strings" if is_tokenized else "strings"}, '
                        f"not {type(texts).__name__}")
    if not texts:
        raise ValueError('"texts" must be a non-empty list')
    texts = list(texts)
    for index, text in enumerate(texts):
        if is_tokenized:
            if isinstance(text, str) or not isinstance(text, (list, tuple)) or not text:
                raise TypeError(f"texts[{index}] must be a non-empty list of tokens (is_tokenized), got {text!r:.60}")
            text = texts[index] = list(text)
            for token in text:
                if not isinstance(token, str) or not token.strip():
                    raise ValueError(f"texts[{index}] has a token that is not a non-empty string: {token!r:.60}")
        elif not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a string, got {type(text).__name__}")
        elif not text.strip():
            raise ValueError(f"texts[{index}] must be a non-empty string, got {text!r:.60}")
    return texts
