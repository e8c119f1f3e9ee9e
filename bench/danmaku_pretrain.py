"""Benchmark: does continued MLM + NSP pre-training learn danmaku-like structure in a few CPU minutes?

A synthetic comment corpus with learnable structure: every video (document) has a topic; its comments
are mostly that topic's catch-phrases (fixed character strings, repeated as real danmaku repeat
"前方高能", "awsl"), some are phrases every topic shares, and a few are random characters. So a masked
character of a phrase is predictable from the rest of it, and a random next segment (another video,
usually another topic) looks different from the true continuation.

The whole user path runs: text files -> `danmaku.data.create_pretraining_data` -> TFRecords ->
`danmaku.pretraining.run_pretraining` from scratch (a small BERT) -> the four numbers on held-out videos.
Prints one JSON line with masked_lm_accuracy / next_sentence_accuracy (and losses) before and after.

    python bench/danmaku_pretrain.py [--steps 400] [--hidden 64] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Characters of the synthetic language: CJK ideographs, so the Chinese tokenizer path is the real one.
ALPHABET = [chr(0x4E00 + 37 * index) for index in range(240)]


def make_phrases(rng: random.Random, count: int, characters: list[str]) -> list[str]:
    return ["".join(rng.choice(characters) for _ in range(rng.randint(3, 6))) for _ in range(count)]


def write_corpus(path: str, topics: list[list[str]], shared: list[str], num_documents: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_documents):
        phrases = rng.choice(topics)
        for _ in range(rng.randint(12, 30)):
            draw = rng.random()
            if draw < 0.75:
                lines.append(rng.choice(phrases))
            elif draw < 0.9:
                lines.append(rng.choice(shared))
            else:  # noise: random characters
                lines.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(2, 6))))
        lines.append("")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=8)
    parser.add_argument("--phrases_per_topic", type=int, default=6)
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--eval_documents", type=int, default=60)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from common.config import BertConfig
    from common.tokenization import SPECIAL_TOKENS, write_vocab
    from danmaku.data import create_pretraining_data
    from danmaku.pretraining import PretrainingSettings, run_pretraining

    rng = random.Random(args.seed)
    # Each topic draws its phrases from its own slice of the alphabet; shared phrases from all of it.
    slice_size = len(ALPHABET) // args.topics
    topics = [make_phrases(rng, args.phrases_per_topic, ALPHABET[index * slice_size:(index + 1) * slice_size])
              for index in range(args.topics)]
    shared = make_phrases(rng, 10, ALPHABET)
    keras.utils.set_random_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="danmaku_pretrain_bench_") as work:
        vocab_file = os.path.join(work, "vocab.txt")
        write_vocab(list(SPECIAL_TOKENS) + ALPHABET, vocab_file)
        config = BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(ALPHABET), hidden_size=args.hidden,
                            num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                            intermediate_size=4 * args.hidden, max_position_embeddings=args.max_seq_length)
        config_file = os.path.join(work, "bert_config.json")
        config.to_json_file(config_file)
        data, stats = {}, {}
        started = time.perf_counter()
        for name, documents, seed in (("train", args.documents, args.seed),
                                      ("eval", args.eval_documents, args.seed + 1)):
            corpus = os.path.join(work, f"{name}.txt")
            write_corpus(corpus, topics, shared, documents, seed)
            data[name] = os.path.join(work, f"{name}.tfrecord")
            stats[name] = create_pretraining_data(corpus, data[name], vocab_file, num_workers=1, progress=False,
                                                  max_seq_length=args.max_seq_length, max_predictions_per_seq=10,
                                                  dupe_factor=5 if name == "train" else 1, random_seed=seed)
        data_seconds = time.perf_counter() - started
        settings = PretrainingSettings(
            input_file=data["train"], eval_input_file=data["eval"], output_dir=os.path.join(work, "model"),
            bert_config_file=config_file, vocab_file=vocab_file, train_batch_size=args.batch, eval_batch_size=64,
            max_seq_length=args.max_seq_length, max_predictions_per_seq=10, num_train_steps=args.steps,
            num_warmup_steps=args.steps // 10, learning_rate=args.learning_rate, save_checkpoints_steps=args.steps,
            iterations_per_loop=50, max_eval_steps=20, progress=False, random_seed=args.seed)
        started = time.perf_counter()
        result = run_pretraining(tf.distribute.get_strategy(), settings)
        seconds = time.perf_counter() - started

    keys = ("masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy", "next_sentence_loss")
    rows = result["rows"]
    print(json.dumps({
        "bench": "danmaku_pretrain",
        "note": "held-out videos of a synthetic topic/catch-phrase corpus (see load_average_1min for how busy the machine was)",
        "model": {"hidden": args.hidden, "layers": args.layers, "max_seq_length": args.max_seq_length},
        "train_instances": stats["train"]["instances"], "eval_instances": stats["eval"]["instances"],
        "steps": args.steps, "batch": args.batch,
        "before": {key: round(rows["before_training"][key], 4) for key in keys},
        "after": {key: round(rows["eval"][key], 4) for key in keys},
        "after_on_training_data": {key: round(rows["train"][key], 4) for key in keys},
        "data_seconds": round(data_seconds, 1), "train_and_eval_seconds": round(seconds, 1),
        "steps_per_second": round(result["steps_per_second"] or 0.0, 2),
        "eval_batches": settings.max_eval_steps, "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
