"""Benchmark: sentences/s of `python -m danmaku.serve` with 8 concurrent HTTP clients vs direct in-process calls.

A Google-layout model folder with random weights (`--hidden`, `--layers`; vocabulary of CJK characters)
is served by the real CLI in its own process on 127.0.0.1 (`-max_seq_len 25 -pooling_layer -2`,
bert-as-service's defaults); 8 client threads each send `--requests` requests of `--client_batch`
danmaku-like texts through `danmaku.client.BertClient`. The direct figure runs the same model through
`common.embeddings.SentenceEncoder.encode` in this process, one call per `--client_batch` texts.
Both are measured `--rounds` times, alternating, and the best round of each is reported. One JSON line;
`server_vs_direct` > 0.8 means the server loses less than 20%.

    python bench/danmaku_serve.py [--hidden 256] [--layers 4] [--client_batch 32] [--requests 12]
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ALPHABET = [chr(0x4E00 + 53 * index) for index in range(400)] + list("abcdefghijklmnopqrstuvwxyz0123456789")
NUM_CLIENTS = 8


def make_texts(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(2, 20))) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_clients(port: int, batches_per_client: list[list[list[str]]]) -> float:
    """Seconds for all clients to send all their requests (each client in its own thread)."""
    from danmaku.client import BertClient

    errors = []
    barrier = threading.Barrier(len(batches_per_client) + 1)

    def client(batches):
        with BertClient(port=port, timeout=120000, check_length=False) as bert_client:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--client_batch", type=int, default=32)
    parser.add_argument("--requests", type=int, default=12, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max_batch_size", type=int, default=256)
    args = parser.parse_args()

    import keras

    from common.checkpoints import save_google_checkpoint
    from common.config import BertConfig
    from common.embeddings import SentenceEncoder
    from common.encoder import BertEncoder
    from common.tokenization import SPECIAL_TOKENS, write_vocab
    from common import model_source

    rng = random.Random(0)
    keras.utils.set_random_seed(0)
    batches_per_client = [[make_texts(rng, args.client_batch) for _ in range(args.requests)]
                          for _ in range(NUM_CLIENTS)]
    sentences = NUM_CLIENTS * args.requests * args.client_batch

    with tempfile.TemporaryDirectory(prefix="danmaku_serve_bench_") as folder:
        write_vocab(list(SPECIAL_TOKENS) + ALPHABET, os.path.join(folder, "vocab.txt"))
        config = BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(ALPHABET), hidden_size=args.hidden,
                            num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                            intermediate_size=4 * args.hidden, max_position_embeddings=128)
        config.to_json_file(os.path.join(folder, "bert_config.json"))
        save_google_checkpoint(BertEncoder(config), os.path.join(folder, "bert_model.ckpt"))

        loaded = model_source.load(folder)
        direct_encoder = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling="REDUCE_MEAN", layers=(-2,),
                                         max_seq_length=25, batch_size=args.max_batch_size)
        all_batches = [batch for batches in batches_per_client for batch in batches]
        for batch in all_batches[:4]:
            direct_encoder.encode(batch)  # trace

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "danmaku.serve", "-model_dir", folder, "-num_worker=1", "-max_seq_len=25",
             f"-max_batch_size={args.max_batch_size}", "-port", str(port)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = ""
            deadline = time.time() + 300
            while "ready:" not in line and time.time() < deadline and server.poll() is None:
                line = server.stdout.readline()
            if "ready:" not in line:
                raise SystemExit(f"the server did not start (exit {server.poll()})")
            run_clients(port, [batches[:2] for batches in batches_per_client])  # warm up merged shapes

            direct_rates, server_rates = [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for batch in all_batches:
                    direct_encoder.encode(batch)
                direct_rates.append(sentences / (time.perf_counter() - started))
                server_rates.append(sentences / run_clients(port, batches_per_client))
            from danmaku.client import BertClient
            status = BertClient(port=port).server_status
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    direct, served = max(direct_rates), max(server_rates)
    print(json.dumps({
        "bench": "danmaku_serve",
        "note": "shared 2-core machine under load; server in its own process on 127.0.0.1",
        "model": {"hidden": args.hidden, "layers": args.layers, "max_seq_len": 25},
        "clients": NUM_CLIENTS, "client_batch": args.client_batch, "sentences_per_round": sentences,
        "direct_sentences_per_s": round(direct, 1), "server_sentences_per_s": round(served, 1),
        "server_vs_direct": round(served / direct, 3),
        "server_mean_batch_size": round(status["mean_batch_size"], 1),
        "rounds": {"direct": [round(rate, 1) for rate in direct_rates],
                   "server": [round(rate, 1) for rate in server_rates]},
    }))


if __name__ == "__main__":
    main()
