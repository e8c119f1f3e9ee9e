"""Pre-training data throughput: ours (common.pretraining_data) against Google BERT's create_pretraining_data.py.

Both turn the same synthetic corpus file (one sentence a line, blank lines between documents) into MLM + NSP
TFRecords with the same settings and the same WordPiece tokenization (ours is Google-exact); the corpus's words
follow Zipf's law, as natural text does. Google's script comes
from the PyPI wheel `bert-tensorflow==1.0.4`, downloaded with pip into a temporary folder (never installed); if that
fails the JSON says so. Prints one JSON line: instances/s of each (wall clock, and an idle-machine estimate from CPU
time: CPU seconds / workers), the ratios and the 10x target.

    python bench/pretraining_data.py [--documents 2000] [--workers 2] [--dupe_factor 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

from common import cli  # noqa: E402

cli.quiet_tensorflow()  # Google's script imports TensorFlow

from common import pretraining_data  # noqa: E402
from common.tokenization import BertTokenizer, write_vocab  # noqa: E402

SETTINGS = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1,
                random_seed=12345)
SUFFIXES = ["##s", "##ing", "##ed", "##er", "##ly"]


def make_corpus(directory: str, num_documents: int, seed: int = 0) -> tuple[str, str]:
    """A vocabulary of made-up words and WordPiece suffixes, and a corpus file in Google's input format."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po", "qua", "dri"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)})
    rng.shuffle(words)
    zipf_weights = [1.0 / rank for rank in range(1, len(words) + 1)]  # word frequencies of natural text
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + words + SUFFIXES
    vocab_path = os.path.join(directory, "vocab.txt")
    write_vocab(vocab, vocab_path)
    corpus_path = os.path.join(directory, "corpus.txt")
    with open(corpus_path, "w", encoding="utf-8") as handle:
        for _ in range(num_documents):
            for _ in range(rng.randint(5, 30)):
                sentence = []
                for _ in range(rng.randint(6, 24)):
                    word = rng.choices(words, zipf_weights)[0]
                    if rng.random() < 0.15:
                        word += rng.choice(SUFFIXES)[2:]  # split again by WordPiece
                    sentence.append(word.capitalize() if not sentence else word)
                handle.write(" ".join(sentence) + ".\n")
            handle.write("\n")
    return vocab_path, corpus_path


def read_documents(corpus_path: str):
    """Documents of Google's input format: sentences one a line, a blank line ends a document."""
    document = []
    with open(corpus_path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                document.append(line)
            elif document:
                yield document
                document = []
    if document:
        yield document


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(function, workers: int, repeats: int) -> dict:
    """Runs `function` (returning instance statistics) `repeats` times: best and median wall seconds, CPU seconds.

    The machine is shared, so the best run is the least disturbed one; CPU seconds / workers estimates the wall
    time on idle cores.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        stats = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    instances, best_wall, best_cpu = stats["instances"], min(walls), min(cpus)
    return {**stats, "wall_seconds_best": round(best_wall, 2),
            "wall_seconds_median": round(statistics.median(walls), 2),
            "cpu_seconds_best": round(best_cpu, 2), "instances_per_s": round(instances / best_wall, 1),
            "instances_per_s_idle_estimate": round(instances / max(best_cpu / workers, best_wall / 50), 1)}


def _summary(instances: int, random_next: int, tokens: int, masked: int) -> dict:
    """What both implementations should agree on (Google's algorithm, other random numbers)."""
    return {"instances": instances, "random_next_share": round(random_next / instances, 4),
            "mean_tokens": round(tokens / instances, 2), "masked_per_instance": round(masked / instances, 3)}


def run_ours(vocab_path, corpus_path, output_dir, workers, dupe_factor, repeats) -> dict:
    tokenizer = BertTokenizer.from_vocab_file(vocab_path, lowercase=True)

    def write():
        stats = pretraining_data.write_pretraining_data(
            lambda: read_documents(corpus_path), os.path.join(output_dir, "ours"), vocab_path,
            tokenize=tokenizer.tokenize, num_shards=workers, num_workers=workers, progress=False,
            dupe_factor=dupe_factor, **SETTINGS)
        instances = stats["instances"]
        return _summary(instances, round(stats["random_next_share"] * instances),
                        round(stats["mean_tokens"] * instances), stats["masked_tokens"])

    return _timed(write, workers, repeats)


def fetch_google(directory: str) -> str | None:
    """Unpacks the bert-tensorflow wheel into `directory`; returns the error text when pip cannot get it."""
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "bert-tensorflow==1.0.4",
                             "-d", directory], capture_output=True, text=True)
    wheels = glob.glob(os.path.join(directory, "bert_tensorflow-*.whl"))
    if result.returncode != 0 or not wheels:
        return (result.stderr.strip().splitlines() or ["pip download failed"])[-1]
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(directory)
    return None


def run_google(google_dir, vocab_path, corpus_path, output_dir, dupe_factor, repeats) -> dict:
    sys.path.insert(0, google_dir)
    from absl import flags
    import tensorflow.compat.v1 as tf1
    from bert import create_pretraining_data as google
    from bert import tokenization as google_tokenization

    flags.FLAGS.mark_as_parsed()  # the modules read flag defaults (e.g. preserve_unused_tokens)
    tf1.logging.set_verbosity(tf1.logging.WARN)
    tokenizer = google_tokenization.FullTokenizer(vocab_file=vocab_path, do_lower_case=True)

    def write():  # its main() without the flag parsing: read + tokenize, create instances, write
        rng = random.Random(SETTINGS["random_seed"])
        instances = google.create_training_instances(
            [corpus_path], tokenizer, SETTINGS["max_seq_length"], dupe_factor, SETTINGS["short_seq_prob"],
            SETTINGS["masked_lm_prob"], SETTINGS["max_predictions_per_seq"], rng)
        google.write_instance_to_example_files(instances, tokenizer, SETTINGS["max_seq_length"],
                                               SETTINGS["max_predictions_per_seq"],
                                               [os.path.join(output_dir, "google.tfrecord")])
        return _summary(len(instances), sum(instance.is_random_next for instance in instances),
                        sum(len(instance.tokens) for instance in instances),
                        sum(len(instance.masked_lm_positions) for instance in instances))

    return _timed(write, 1, repeats)  # single-threaded by design


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts")
    args = parser.parse_args(argv)
    report = {"bench": "pretraining_data", "documents": args.documents, "dupe_factor": args.dupe_factor,
              "workers": args.workers, "cpu_count": os.cpu_count(), "target_ratio": 10.0,
              "settings": SETTINGS, "repeats": args.repeats, "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as directory:
        vocab_path, corpus_path = make_corpus(directory, args.documents)
        report["ours"] = run_ours(vocab_path, corpus_path, directory, args.workers, args.dupe_factor, args.repeats)
        google_dir = os.path.join(directory, "google")
        error = fetch_google(google_dir)
        if error:
            report["google"] = {"unavailable": f"pip download bert-tensorflow==1.0.4 failed: {error}"}
        else:
            report["google"] = run_google(google_dir, vocab_path, corpus_path, directory, args.dupe_factor,
                                          args.repeats)
            report["ratio"] = round(report["ours"]["instances_per_s"] / report["google"]["instances_per_s"], 2)
            report["ratio_idle_estimate"] = round(report["ours"]["instances_per_s_idle_estimate"]
                                                  / report["google"]["instances_per_s_idle_estimate"], 2)
            report["meets_target"] = report["ratio"] >= report["target_ratio"]
    report["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(report, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
