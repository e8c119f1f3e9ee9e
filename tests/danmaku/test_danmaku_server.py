"""The embedding server: batching across clients, vectors equal to direct computation, bad requests, client errors."""

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

from common.cli import UserError
from common.embeddings import SentenceEncoder
from danmaku.client import BertClient, BertClientError
from common.model_source import load as load_model
from danmaku.server import BatchingQueue, EmbeddingServer, build_server, normalize_argv

TEXTS = ["前方高能", "awsl", "哈哈哈哈哈哈哈哈", "草", "泪目", "这就是青春啊", "下次一定", "来了来了", "打卡", "名场面"]


def fake_encode(texts):
    """Row i = (length of text i, code point of its first character): easy to check per request."""
    return np.array([[len(text), ord(text[0])] for text in texts], np.float32)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port, body: bytes, headers=None, path="/encode"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_waiting_requests_are_batched_together_and_each_gets_its_own_rows():
    release = threading.Event()
    batch_sizes = []

    def slow_encode(texts):
        batch_sizes.append(len(texts))
        release.wait(10)
        return fake_encode(texts)

    queue = BatchingQueue(slow_encode, max_batch_size=6, num_workers=1)
    results = {}
    requests = {0: ["a"], 1: ["bb", "c"], 2: ["ddd"], 3: ["e", "ff", "g"], 4: ["hh"]}

    def submit(key):
        results[key] = queue.submit(requests[key], timeout=10)

    threads = [threading.Thread(target=submit, args=(0,))]
    threads[0].start()
    while not batch_sizes:  # the worker now holds request 0 alone
        time.sleep(0.01)
    for waiting, key in enumerate((1, 2, 3, 4), start=1):
        threads.append(threading.Thread(target=submit, args=(key,)))
        threads[-1].start()
        while len(queue._pending) < waiting:  # one at a time, so the arrival order is 1, 2, 3, 4
            time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    queue.close()
    # Whole requests in arrival order up to 6 texts: [1, 2, 3] (6 texts), then [4].
    assert batch_sizes == [1, 6, 1]
    for key, texts in requests.items():
        np.testing.assert_array_equal(results[key], fake_encode(texts))


def test_concurrent_clients_get_the_vectors_of_direct_computation(tiny_model_dir):
    server = build_server(tiny_model_dir, port=0, pooling_layer=[-1], max_batch_size=16, max_seq_len=12)
    loaded = load_model(tiny_model_dir)
    direct = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling="REDUCE_MEAN", layers=(-1,),
                             max_seq_length=12).encode(TEXTS)
    results, errors = {}, []

    def client_thread(index):
        try:
            with BertClient(port=server.port, timeout=20000) as client:
                for repeat in range(4):
                    chosen = [TEXTS[(index + repeat + offset) % len(TEXTS)] for offset in range(1 + index % 3)]
                    results[index, repeat] = (chosen, client.encode(chosen))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    with server:
        threads = [threading.Thread(target=client_thread, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        status = BertClient(port=server.port).server_status
        as_list = BertClient(port=server.port, output_fmt="list").encode(TEXTS[:2])
    assert not errors
    rows = {text: row for text, row in zip(TEXTS, direct)}
    for chosen, vectors in results.values():
        assert vectors.dtype == np.float32 and vectors.shape == (len(chosen), 32)
        np.testing.assert_allclose(vectors, np.stack([rows[text] for text in chosen]), atol=1e-5)
    assert len(results) == 32 and status["requests_served"] == 32
    assert status["sentences_encoded"] == sum(len(chosen) for chosen, _ in results.values())
    assert status["max_seq_len"] == 12 and status["pooling_layer"] == [-1] and status["width"] == 32
    np.testing.assert_allclose(as_list, direct[:2], atol=1e-5)


def test_pooling_flags_follow_bert_as_service(tiny_model_dir):
    """REDUCE_MEAN_MAX of layers -1 and -2 with [CLS]/[SEP] masked, and CLS_TOKEN, against NumPy."""
    loaded = load_model(tiny_model_dir)
    texts = ["前方高能", "awsl草"]
    features = loaded.tokenizer.encode_batch(texts, max_seq_length=25)
    hidden = [np.asarray(state) for state in loaded.encoder(features, training=False)["hidden_states"]]
    expected_mean_max, expected_cls = [], []
    for row in range(len(texts)):
        length = int(features["input_mask"][row].sum())
        tokens = np.concatenate([hidden[-1][row], hidden[-2][row]], axis=-1)[1:length - 1]  # no [CLS]/[SEP]
        expected_mean_max.append(np.concatenate([tokens.mean(0), tokens.max(0)]))
        expected_cls.append(hidden[-2][row, 0])
    server = build_server(tiny_model_dir, port=0, pooling_strategy="REDUCE_MEAN_MAX", pooling_layer=[-1, -2],
                          mask_cls_sep=True)
    with server:
        mean_max = BertClient(port=server.port).encode(texts)
    server = build_server(tiny_model_dir, port=0, pooling_strategy="CLS_TOKEN")  # default layer -2
    with server:
        cls = BertClient(port=server.port).encode(texts)
    np.testing.assert_allclose(mean_max, np.stack(expected_mean_max), atol=1e-5)
    np.testing.assert_allclose(cls, np.stack(expected_cls), atol=1e-5)


def test_malformed_and_oversized_requests_get_4xx_json_and_the_server_keeps_serving():
    def encode(texts):
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return fake_encode(texts)

    server = EmbeddingServer(encode, port=0, max_texts_per_request=4, max_request_bytes=300)
    with server:
        port = server.port
        cases = [
            (b"not json", 400, "not valid UTF-8 JSON"),
            (b"\xff\xfe", 400, "not valid UTF-8 JSON"),
            (b'["a"]', 400, "expected a JSON object"),
            (b'{"text": ["a"]}', 400, "expected a JSON object"),
            (b'{"texts": "a"}', 400, "non-empty list"),
            (b'{"texts": []}', 400, "non-empty list"),
            (b'{"texts": ["a", 3]}', 400, "texts[1] must be a non-empty string"),
            (b'{"texts": ["a", "  "]}', 400, "texts[1] must be a non-empty string"),
            (b'{"texts": ["a"], "format": "xml"}', 400, '"format" must be one of'),
            (json.dumps({"texts": list("abcde")}).encode(), 413, "at most 4"),
            (json.dumps({"texts": ["x" * 400]}).encode(), 413, "exceeds the limit of 300 bytes"),
            (b'{"texts": ["boom"]}', 500, "model exploded"),
        ]
        for body, status, message in cases:
            got_status, payload = post(port, body)
            assert (got_status, message in payload["error"]) == (status, True), (body, payload)
            assert post(port, b'{"texts": ["ok"], "id": 5}') == (200, {"embeddings": [[2.0, 111.0]], "id": 5})
        assert post(port, b'{"texts": ["a"]}', path="/nowhere")[0] == 404
        # No Content-Length: 411 and the connection is closed, not left waiting for a body.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := raw.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length header" in reply
        status = BertClient(port=port).server_status
        assert status["requests_rejected"] == 11 and status["requests_failed"] == 1
        assert status["requests_served"] == len(cases)
        client = BertClient(port=port, check_length=False)
        with pytest.raises(BertClientError, match="HTTP 413.*at most 4"):
            client.encode(list("abcde"))
        with pytest.raises(BertClientError, match="HTTP 413: request body of 3[0-9]{3} bytes exceeds"):
            client.encode(["x" * 3000])  # the unread body is drained: an answer, not a reset
        np.testing.assert_array_equal(client.encode(["ok"]), fake_encode(["ok"]))  # same connection


def test_deeply_nested_json_and_other_methods_get_json_errors_too():
    with EmbeddingServer(fake_encode, port=0) as server:
        status, payload = post(server.port, b"[" * 100000)  # the parser's recursion limit, not a dropped connection
        assert (status, payload["error"]) == (400, "body is JSON nested too deeply")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("PUT", "/encode", body=b'{"texts": ["a"]}')
        response = connection.getresponse()
        assert response.status == 405 and "method PUT not allowed" in json.loads(response.read())["error"]
        connection.close()
        assert post(server.port, b'{"texts": ["ok"]}') == (200, {"embeddings": [[2.0, 111.0]]})


def test_client_timeout_is_waited_once_when_the_server_never_answers():
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with pytest.raises(BertClientError, match="did not answer within 0.3 s"):
            BertClient(ip="127.0.0.1", port=silent.getsockname()[1], timeout=300).encode(["草"])
        assert time.monotonic() - started < 0.55  # not once for GET /status and again for POST /encode


def test_client_errors_are_clear_when_no_server_answers_or_it_is_too_slow():
    port = free_port()
    with pytest.raises(BertClientError, match=f"no embedding server answers at http://127.0.0.1:{port}"):
        BertClient(ip="127.0.0.1", port=port, timeout=2000).encode(["草"])
    with pytest.raises(ValueError, match="texts\\[0\\] must be a non-empty string"):
        BertClient(port=port).encode([""])

    def slow(texts):
        time.sleep(1.0)
        return fake_encode(texts)

    with EmbeddingServer(slow, port=0) as server:
        with pytest.raises(BertClientError, match="did not answer within 0.2 s"):
            BertClient(port=server.port, timeout=200, check_length=False).encode(["草"])
        # The server is still fine for a patient client.
        np.testing.assert_array_equal(BertClient(port=server.port, timeout=5000).encode(["草"]), fake_encode(["草"]))


def test_bert_as_service_style_arguments():
    argv = ["serve", "-model_dir", "m", "-pooling_layer", "-4", "-3", "-2", "-num_worker=1", "--pooling_layer=-1"]
    assert normalize_argv(argv) == ["serve", "-model_dir", "m", "--pooling_layer=-4,-3,-2", "-num_worker=1",
                                    "--pooling_layer=-1"]


@pytest.mark.parametrize("sizes", [dict(num_worker=0), dict(max_batch_size=0)])
def test_zero_workers_or_batch_size_is_a_user_error_before_the_model_loads(sizes):
    with pytest.raises(UserError, match="must be at least 1"):
        build_server("no_such_model_dir", **sizes)
