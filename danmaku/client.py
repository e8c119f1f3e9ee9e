"""The client of `python -m danmaku.serve`, shaped like bert-as-service's `BertClient`.

    from danmaku.client import BertClient
    bc = BertClient(port=8125, timeout=10000)      # timeout in milliseconds, -1 waits forever
    vectors = bc.encode(["草", "awsl"])               # np.ndarray float32 [2, width]

One client holds one keep-alive connection and is not thread-safe: give each thread its own, as
bert-as-service asks too. Only the standard library and NumPy are needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from typing import Sequence

import numpy as np


class BertClientError(ConnectionError):
    """No server answered, or the server refused the request (the message says which)."""


class BertClient:
    def __init__(self, ip: str = "localhost", port: int = 8125, timeout: float = -1,
                 output_fmt: str = "ndarray", check_length: bool = True, show_server_config: bool = False):
        """`timeout` is in milliseconds as in bert-as-service (-1: no limit); `output_fmt` 'ndarray' or 'list'.

        `check_length`: warn (once) when a text is longer than the server's `max_seq_len` characters
        (a rough check: the server truncates to `max_seq_len` tokens).
        """
        if output_fmt not in ("ndarray", "list"):
            raise ValueError(f"output_fmt must be 'ndarray' or 'list', got {output_fmt!r}")
        self.ip, self.port = ip, int(port)
        self.timeout = None if timeout is None or timeout < 0 else timeout / 1000.0
        self.output_fmt = output_fmt
        self.check_length = check_length
        self._connection: http.client.HTTPConnection | None = None
        self._request_id = 0
        self._server_config: dict | None = None
        if show_server_config:
            print(json.dumps(self.server_config, indent=2, ensure_ascii=False))

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.ip, self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                data = response.read()
                break
            except (ConnectionRefusedError, socket.gaierror) as error:
                self.close()
                raise BertClientError(f"no embedding server answers at {self.url} ({error}); start one "
                                      f"with `python -m danmaku.serve -model_dir ... -port {self.port}`") from None
            except (TimeoutError, socket.timeout):
                self.close()
                raise BertClientError(f"the server at {self.url} did not answer within "
                                      f"{self.timeout:g} s (timeout)") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                # A kept-alive connection the server has closed meanwhile: retry once on a new one.
                self.close()
                if attempt:
                    raise BertClientError(f"the server at {self.url} closed the connection ({error})") from None
        try:
            result = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BertClientError(f"{self.url}{path} answered HTTP {response.status} with a body that is "
                                  f"not JSON: {data[:200]!r}") from None
        if response.status != 200:
            raise BertClientError(f"{self.url}{path}: HTTP {response.status}: {result.get('error', result)}")
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return result

    @property
    def server_config(self) -> dict:
        """The server's `GET /status` (settings and counters)."""
        self._server_config = self._request("GET", "/status")
        return self._server_config

    server_status = server_config

    def encode(self, texts: Sequence[str], blocking: bool = True, is_tokenized: bool = False,
               show_tokens: bool = False):
        """Texts -> float32 embeddings `[n, width]` (`[n, max_seq_len, width]` under pooling NONE)."""
        if not blocking or is_tokenized or show_tokens:
            raise NotImplementedError("blocking=False, is_tokenized and show_tokens are not supported")
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"texts[{index}] must be a non-empty string, got {text!r:.60}")
        if self.check_length:
            self._warn_if_long(texts)
        self._request_id += 1
        result = self._request("POST", "/encode", {"texts": texts, "id": self._request_id, "format": "base64"})
        vectors = np.frombuffer(base64.b64decode(result["embeddings_base64"]), dtype="<f4")
        vectors = vectors.reshape(result["shape"]).astype(np.float32, copy=False)
        return vectors if self.output_fmt == "ndarray" else vectors.tolist()

    def _warn_if_long(self, texts: list[str]) -> None:
        if self._server_config is None:
            self.server_config  # no server / a timeout raises here, once, instead of again in encode()
        limit = self._server_config.get("max_seq_len")
        if limit and any(len(text) > limit - 2 for text in texts):
            import warnings
            warnings.warn(f"some texts are longer than the server's max_seq_len={limit}; they are "
                          "truncated (start the server with a larger -max_seq_len to keep them)", stacklevel=3)
            self.check_length = False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
