"""The embedding server: batching, bert-as-service's request/answer shapes and client, bad requests,
slow or greedy clients. (Its vectors against bert-as-service's: test_danmaku_bert_as_service.py.)"""

import http.client
import inspect
import json
import socket
import threading
import time

import numpy as np
import pytest

from common.cli import UserError
from common.embeddings import SentenceEncoder
from danmaku.client import BertClient, BertClientError, BertClientTimeout
from common.model_source import load as load_model
from danmaku.server import BatchingQueue, EmbeddingServer, build_server, normalize_argv, split_pair

TEXTS = ["前方高能", "awsl", "哈哈哈哈哈哈哈哈", "草", "泪目", "这就是青春啊", "下次一定", "来了来了", "打卡", "名场面"]


def fake_encode(texts):
    """Row i = (length of text i, code point of its first character): easy to check per request."""
    return np.array([[len(text), ord(text[0])] for text in texts], np.float32)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port, method, path, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def post(port, body: bytes, path="/encode"):
    response, data = request(port, "POST", path, body)
    return response.status, json.loads(data)


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class GatedEncoder:
    """fake_encode that records each batch and waits for `release()` before answering it."""

    def __init__(self, fail_on=None):
        self.batches, self.fail_on = [], fail_on
        self._permits = threading.Semaphore(0)

    def __call__(self, texts):
        self.batches.append(list(texts))
        assert self._permits.acquire(timeout=10)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on}")
        return fake_encode(texts)

    def release(self, count=1):
        for _ in range(count):
            self._permits.release()


def submit_in_thread(queue, results, key, texts, timeout=10):
    def run():
        try:
            results[key] = queue.submit(texts, timeout=timeout)
        except Exception as error:  # noqa: BLE001 - checked by the test
            results[key] = error
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_requests_are_split_at_max_batch_size_and_small_ones_go_first():
    encoder = GatedEncoder()
    queue = BatchingQueue(encoder, max_batch_size=4, num_workers=1, priority_batch_size=2, merge_requests=True)
    results, threads = {}, []
    large = [f"L{index}" for index in range(10)]
    threads.append(submit_in_thread(queue, results, "large", large))
    wait_until(lambda: len(encoder.batches) == 1)  # the worker holds L0..L3
    threads.append(submit_in_thread(queue, results, "medium", ["M0", "M1", "M2"]))
    wait_until(lambda: queue.pending == 9)
    threads.append(submit_in_thread(queue, results, "small", ["S0", "S1"]))
    wait_until(lambda: queue.pending == 11)
    for _ in range(5):
        encoder.release()
        time.sleep(0.05)
    for thread in threads:
        thread.join(10)
    queue.close()
    # The small request first, alone; then the large ones take turns, a batch's room filled from the next.
    assert encoder.batches == [large[:4], ["S0", "S1"], ["L4", "L5", "L6", "L7"], ["M0", "M1", "M2", "L8"], ["L9"]]
    np.testing.assert_array_equal(results["large"], fake_encode(large))
    np.testing.assert_array_equal(results["medium"], fake_encode(["M0", "M1", "M2"]))
    np.testing.assert_array_equal(results["small"], fake_encode(["S0", "S1"]))


def test_without_merging_a_batch_is_one_request_s_chunk_as_in_bert_as_service():
    encoder = GatedEncoder()
    queue = BatchingQueue(encoder, max_batch_size=4, num_workers=1, priority_batch_size=2)
    results, threads = {}, []
    threads.append(submit_in_thread(queue, results, "large", [f"L{index}" for index in range(6)]))
    wait_until(lambda: len(encoder.batches) == 1)
    for count, (key, texts) in enumerate((("a", ["A0", "A1", "A2"]), ("b", ["B0"]), ("c", ["C0"])), start=1):
        threads.append(submit_in_thread(queue, results, key, texts))
        wait_until(lambda: queue.pending == 2 + [3, 4, 5][count - 1])
    encoder.release(5)
    for thread in threads:
        thread.join(10)
    queue.close()
    assert encoder.batches == [["L0", "L1", "L2", "L3"], ["B0"], ["C0"], ["L4", "L5"], ["A0", "A1", "A2"]]


def test_max_batch_seconds_cuts_large_requests_by_the_measured_time_per_text():
    queue = BatchingQueue(fake_encode, max_batch_size=100, num_workers=1, priority_batch_size=2, batch_seconds=0.35)
    queue.submit([f"x{index}" for index in range(8)])  # measures seconds per text
    queue._seconds_per_item = 0.1  # as if a text took 0.1 s: chunks of 3
    batches = []
    queue.encode_fn = lambda texts: batches.append(len(texts)) or fake_encode(texts)
    queue.submit([f"y{index}" for index in range(7)])
    queue.close()
    assert batches[:2] == [3, 3]


def test_a_failing_request_fails_alone_and_a_timed_out_one_is_dropped():
    encoder = GatedEncoder(fail_on="boom")
    queue = BatchingQueue(encoder, max_batch_size=8, num_workers=1, merge_requests=True)
    results = {}
    first = submit_in_thread(queue, results, "first", ["a"])
    wait_until(lambda: len(encoder.batches) == 1)
    with pytest.raises(TimeoutError, match="dropped"):
        queue.submit(["late"], timeout=0.05)  # times out while the worker is busy: never encoded
    threads = []
    for count, key in enumerate(("ok", "boom", "fine"), start=1):  # one at a time: this arrival order
        threads.append(submit_in_thread(queue, results, key, [key]))
        wait_until(lambda: queue.pending == count)
    encoder.release(5)  # "a"; the merged batch; then each of the three alone
    for thread in [first, *threads]:
        thread.join(10)
    queue.close()
    assert ["late"] not in encoder.batches and not any("late" in batch for batch in encoder.batches)
    assert encoder.batches[1] == ["ok", "boom", "fine"] and encoder.batches[2:] == [["ok"], ["boom"], ["fine"]]
    np.testing.assert_array_equal(results["ok"], fake_encode(["ok"]))
    np.testing.assert_array_equal(results["fine"], fake_encode(["fine"]))
    assert isinstance(results["boom"], RuntimeError) and queue.dropped == 1


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


@pytest.fixture(scope="module")
def token_server(tiny_model_dir):
    """The tiny model served with -show_tokens_to_client, -pooling_strategy NONE, -max_seq_len NONE."""
    server = build_server(tiny_model_dir, port=0, pooling_strategy="NONE", pooling_layer=[0], max_seq_len=None,
                          show_tokens_to_client=True, max_batch_size=4)
    with server:
        yield server


def test_pairs_tokenized_input_tokens_and_the_proxy_body(token_server):
    port = token_server.port
    with BertClient(port=port) as client:
        with pytest.warns(UserWarning, match="does not restrict"):
            vectors, tokens = client.encode(["前方高能 ||| awsl", "草"], show_tokens=True)
        assert tokens == [["[CLS]", "前", "方", "高", "能", "[SEP]", "awsl", "[SEP]"],
                          ["[CLS]", "草", "[SEP]"]]
        # NONE with -max_seq_len NONE: as long as the longest text; zeros past each text and padding.
        assert vectors.shape == (2, 8, 32) and not vectors[1, 3:].any() and vectors[1, :3].any()
        with pytest.warns(UserWarning):
            tokenized = client.encode([["前", "方", "|||", "a", "?"]], is_tokenized=True, show_tokens=True)
        assert tokenized[1] == [["[CLS]", "前", "方", "[SEP]", "a", "[UNK]", "[SEP]"]]
    # bert-as-service's HTTP proxy body and answer; CORS as its -cors default.
    response, data = request(port, "POST", "/encode", json.dumps({"id": 3, "texts": ["草"], "is_tokenized": False})
                             .encode())
    answer = json.loads(data)
    assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == "*"
    assert set(answer) == {"id", "result"} and answer["id"] == 3 and np.array(answer["result"]).shape == (1, 3, 32)
    response, _ = request(port, "OPTIONS", "/encode")
    assert response.status == 204 and "POST" in response.getheader("Access-Control-Allow-Methods")
    assert split_pair("a ||| b ||| c") == ("a ||| b", "c") and split_pair("a |||b") == "a |||b"


def test_non_blocking_encode_and_fetch_all(token_server):
    with BertClient(port=token_server.port, check_length=False) as client:
        assert client.encode(["草", "泪目"], blocking=False) is None
        client.encode(["awsl"], blocking=False)
        first, second = client.fetch_all(sort=True)
        assert first.shape[0] == 2 and second.shape[0] == 1 and client.fetch_all() is None


def test_client_arguments_and_checks_are_bert_as_service_s(token_server):
    names = list(inspect.signature(BertClient).parameters)
    assert names == ["ip", "port", "port_out", "output_fmt", "show_server_config", "identity", "check_version",
                     "check_length", "check_token_info", "ignore_all_checks", "timeout"]
    BertClient("127.0.0.1", free_port(), ignore_all_checks=True)  # no server: nothing asked yet
    token_server.info["server_version"] = "0.0.1"
    try:
        with pytest.raises(AttributeError, match="version mismatch"):
            BertClient(port=token_server.port)
        BertClient(port=token_server.port, check_version=False)
    finally:
        token_server.info["server_version"] = BertClient.__module__ and __import__("danmaku.client").client.__version__
    with BertClient(port=token_server.port, check_token_info=False, check_length=False) as client:
        with pytest.warns(UserWarning, match="does not send tokens"):
            assert isinstance(client.encode(["草"], show_tokens=True), np.ndarray)


def test_malformed_bodies_get_400_json_and_the_server_keeps_serving():
    def encode(texts):
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return fake_encode(texts)

    server = EmbeddingServer(encode, port=0, max_texts_per_request=4, max_request_bytes=6000)
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
            (b'{"texts": ["a"], "id": ' + b"9" * 5000 + b"}", 400, "not valid UTF-8 JSON"),
            (b'{"texts": ["a"], "id": "\\ud800"}', 400, '"id" cannot be sent back'),
            (b'{"texts": ["a"], "id": NaN}', 400, '"id" cannot be sent back'),
            (b'{"texts": ["\\udc00x"]}', 400, "lone surrogate"),
            (b'{"texts": [["a"], "b"], "is_tokenized": true}', 400, "non-empty list of tokens"),
            (b'{"texts": ["a"], "is_tokenized": 1}', 400, '"is_tokenized" must be true or false'),
            (b'{"texts": ["a"], "show_tokens": "yes"}', 400, '"show_tokens" must be true or false'),
            (b"[" * 5000, 400, "nested too deeply"),
            (json.dumps({"texts": list("abcde")}).encode(), 413, "at most 4"),
            (json.dumps({"texts": ["x" * 7000]}).encode(), 413, "exceeds the limit of 6000 bytes"),
            (b'{"texts": ["boom"]}', 500, "model exploded"),
        ]
        for body, status, message in cases:
            got_status, payload = post(port, body)
            assert (got_status, message in payload["error"]) == (status, True), (body[:80], payload)
            assert post(port, b'{"texts": ["ok"], "id": 5}') == (200, {"result": [[2.0, 111.0]], "id": 5})
        assert post(port, b'{"texts": ["a"]}', path="/nowhere")[0] == 404
        response, data = request(port, "PUT", "/encode", b'{"texts": ["a"]}')
        assert response.status == 405 and "method PUT not allowed" in json.loads(data)["error"]
        # No Content-Length: 411 and the connection is closed, not left waiting for a body.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := raw.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length header" in reply
        status = BertClient(port=port).server_status
        assert status["requests_rejected"] == len(cases) - 1 and status["requests_failed"] == 1
        client = BertClient(port=port, check_length=False)
        with pytest.raises(BertClientError, match="HTTP 413.*at most 4"):
            client.encode(list("abcde"))
        with pytest.raises(BertClientError, match="HTTP 413: request body of 9[0-9]{3} bytes exceeds"):
            client.encode(["x" * 9000])  # the unread body is drained: an answer, not a reset
        np.testing.assert_array_equal(client.encode(["ok"]), fake_encode(["ok"]))  # same connection


def test_answers_over_the_memory_bound_get_413_before_encoding():
    encoded = []

    def encode(texts):
        encoded.append(texts)
        return np.zeros((len(texts), 512, 768), np.float32)

    with EmbeddingServer(encode, port=0, output_shape_fn=lambda items: (512, 768),
                         max_response_bytes=20_000_000) as server:
        status, payload = post(server.port, json.dumps({"texts": ["a"] * 10, "format": "base64"}).encode())
        assert status == 413 and "the limit is 20000000 bytes (-max_response_bytes)" in payload["error"]
        assert not encoded
        status, payload = post(server.port, json.dumps({"texts": ["a"], "format": "base64"}).encode())
        assert status == 200 and payload["shape"] == [1, 512, 768]
        status, payload = post(server.port, json.dumps({"texts": ["a"] * 2}).encode())  # JSON, written in chunks
        assert status == 200 and np.array(payload["result"]).shape == (2, 512, 768)


def test_idle_and_slow_connections_are_closed_and_cannot_crowd_out_clients():
    with EmbeddingServer(fake_encode, port=0, max_open_connections=3, idle_timeout=0.5, read_timeout=0.5) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"POST /encode HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # and never the rest
        # At the cap, the longest-idle connection makes room: a client is still served.
        assert post(server.port, b'{"texts": ["ok"]}') == (200, {"result": [[2.0, 111.0]]})
        for sock in idle + [slow]:  # each is closed by the server (recv returns b"") within its timeout
            assert sock.recv(1) == b""
            sock.close()
        status = server.status()
        assert status["connections_evicted"] >= 1 and status["connections_timed_out"] >= 1


def test_at_most_http_max_connect_requests_are_worked_on():
    encoder = GatedEncoder()
    with EmbeddingServer(encoder, port=0, http_max_connect=1) as server:
        results = {}
        thread = threading.Thread(target=lambda: results.update(first=post(server.port, b'{"texts": ["a"]}')))
        thread.start()
        wait_until(lambda: encoder.batches)
        status, payload = post(server.port, b'{"texts": ["b"]}')
        encoder.release()
        thread.join(10)
    assert status == 503 and "(-http_max_connect)" in payload["error"]
    assert results["first"][0] == 200


def test_client_timeout_is_one_request_when_the_server_never_answers():
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(BertClientTimeout, match="did not answer within 0.3 s"):
            BertClient(ip="127.0.0.1", port=silent.getsockname()[1], timeout=300)
        silent.settimeout(0.2)
        accepted = []
        try:
            while True:
                accepted.append(silent.accept()[0])
        except TimeoutError:
            pass
        assert len(accepted) == 1  # one request (GET /status), waited once
        for connection in accepted:
            connection.close()


def test_client_errors_are_clear_when_no_server_answers_or_it_is_too_slow():
    port = free_port()
    with pytest.raises(BertClientError, match=f"no embedding server answers at http://127.0.0.1:{port}"):
        BertClient(ip="127.0.0.1", port=port, timeout=2000)
    client = BertClient(port=port, ignore_all_checks=True)
    with pytest.raises(ValueError, match="texts\\[0\\] must be a non-empty string"):
        client.encode([""])
    with pytest.raises(TypeError, match="must be a list"):
        client.encode("草")

    def slow(texts):
        time.sleep(1.0)
        return fake_encode(texts)

    with EmbeddingServer(slow, port=0) as server:
        with pytest.raises(TimeoutError, match="did not answer within 0.2 s"):
            BertClient(port=server.port, timeout=200, check_length=False).encode(["草"])
        # The server is still fine for a patient client.
        np.testing.assert_array_equal(BertClient(port=server.port, timeout=5000).encode(["草"]), fake_encode(["草"]))


def test_bert_as_service_style_arguments():
    argv = ["serve", "-model_dir", "m", "-pooling_layer", "-4", "-3", "-2", "-num_worker=1", "--pooling_layer=-1",
            "-port_in", "5555", "-port_result=5556", "-device_map", "0", "1"]
    assert normalize_argv(argv) == ["serve", "-model_dir", "m", "--pooling_layer=-4,-3,-2", "-num_worker=1",
                                    "--pooling_layer=-1", "--port", "5555", "--port_out=5556", "--device_map=0,1"]


# Every flag of bert-serving-start (bert-as-service 1.10, server/helper.py get_args_parser).
BERT_SERVING_START_FLAGS = [
    "model_dir", "tuned_model_dir", "ckpt_name", "config_name", "graph_tmp_dir", "max_seq_len", "cased_tokenization",
    "pooling_layer", "pooling_strategy", "mask_cls_sep", "show_tokens_to_client", "port", "port_out", "http_port",
    "http_max_connect", "cors", "num_worker", "max_batch_size", "priority_batch_size", "cpu", "xla", "fp16",
    "gpu_memory_fraction", "device_map", "prefetch_size", "fixed_embed_length", "verbose", "version"]


def test_every_bert_serving_start_flag_is_accepted_and_ignored_ones_say_why():
    from absl import flags

    import danmaku.serve as serve

    for name in BERT_SERVING_START_FLAGS:
        assert name in flags.FLAGS, name
    argv = normalize_argv(["serve", "-model_dir=m", "-fp16", "-graph_tmp_dir", "/tmp", "-port_result", "9",
                           "-prefetch_size=3", "-gpu_memory_fraction=0.2", "-xla"])
    flags.FLAGS(argv, known_only=True)
    try:
        lines = serve.ignored_flag_lines()
    finally:
        flags.FLAGS.unparse_flags()
    assert [line.split(" ")[0] for line in lines] == ["-graph_tmp_dir", "-port_out", "-fp16", "-gpu_memory_fraction",
                                                       "-prefetch_size"]
    assert all(" is ignored: " in line for line in lines)


@pytest.mark.parametrize("sizes", [dict(num_worker=0), dict(max_batch_size=0)])
def test_zero_workers_or_batch_size_is_a_user_error_before_the_model_loads(sizes):
    with pytest.raises(UserError, match="must be at least 1"):
        build_server("no_such_model_dir", **sizes)
