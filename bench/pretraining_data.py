"""Pre-training data at scale: `danmaku.create_pretraining_data` (common.pretraining_data's two-pass, memory-mapped
path) on synthetic danmaku of growing size, beside Google BERT's create_pretraining_data.py on a sample it can hold.

The corpus imitates bullet comments: videos of 50-3,000 comments of 1-30 characters, characters Zipf-distributed over
~3,500 CJK characters plus "233", "awsl" and emoji (out of vocabulary), written as blank-line separated documents
over several text files. Every size runs in a fresh process, so its peak resident memory (this process; the largest
worker) is its own, and its process tree's anonymous memory is sampled from outside (`peak_anonymous_mb_*`); `num_shards` grows with the size so that one shard (shuffled in memory at the end) stays the same
size. Google's script comes from the PyPI wheel `bert-tensorflow==1.0.4`, downloaded with pip into a temporary folder
(never installed) and run on the same sample as ours with the same settings and the same tokenization; if pip
cannot get it the JSON says so. Prints one JSON line.

    python bench/pretraining_data.py [--sizes_mb 8,32,128] [--google_mb 4] [--workers 2] [--dupe_factor 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

SETTINGS = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1,
                random_seed=12345)
SHARD_MB_OF_TEXT = 16  # text megabytes per output shard: bounds the in-memory shuffle of one shard
FILE_MB = 32  # text megabytes per corpus file


def _characters() -> list[str]:
    common = [chr(code) for code in range(0x4E00, 0x4E00 + 3500)]  # the first CJK block stands in for common hanzi
    return common + list("，。！？～…") + ["233", "awsl", "2333333", "hhh", "yyds", "😂", "🐱"]


def write_vocab(path: str) -> None:
    # Emoji stay out of the vocabulary: they become [UNK], as in real danmaku with a Chinese BERT vocabulary.
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in _characters() if c not in ("😂", "🐱")]
    vocab = [token for token in vocab if len(token) == 1 or token.isascii()]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(dict.fromkeys(vocab)) + "\n")


def make_corpus(directory: str, megabytes: float, seed: int = 0) -> list[str]:
    """Blank-line separated videos of comments, about `megabytes` of UTF-8 over files of FILE_MB."""
    rng = np.random.default_rng(seed)
    characters = np.array(_characters(), dtype=object)
    weights = 1.0 / np.arange(1, len(characters) + 1) ** 1.05
    weights /= weights.sum()
    target, written, paths = int(megabytes * 1e6), 0, []
    handle = None
    while written < target:
        if handle is None or handle.tell() >= FILE_MB * 1e6:
            if handle is not None:
                handle.close()
            paths.append(os.path.join(directory, f"danmaku-{len(paths):03d}.txt"))
            handle = open(paths[-1], "wb")
        num_comments = int(rng.integers(50, 3000))
        lengths = np.minimum(rng.geometric(0.12, num_comments), 30)
        picks = characters[rng.choice(len(characters), size=int(lengths.sum()), p=weights)]
        ends = np.cumsum(lengths)
        comments = ["".join(picks[end - length:end]) for end, length in zip(ends.tolist(), lengths.tolist())]
        data = ("\n".join(comments) + "\n\n").encode("utf-8")
        handle.write(data)
        written += len(data)
    handle.close()
    return paths


def _peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(children, 1)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours_here(input_glob: str, vocab_path: str, output_dir: str, workers: int, dupe_factor: int,
                  num_shards: int) -> dict:
    """One size, in this (fresh) process: wall/CPU seconds, throughput and peak memory."""
    from danmaku.data import create_pretraining_data

    text_bytes = sum(os.path.getsize(path) for path in glob.glob(input_glob))
    wall, cpu = time.perf_counter(), _cpu_seconds()
    stats = create_pretraining_data(input_glob, os.path.join(output_dir, "ours.tfrecord"), vocab_path,
                                    num_shards=num_shards, num_workers=workers, progress=False,
                                    dupe_factor=dupe_factor, **SETTINGS)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    main_mb, worker_mb = _peak_rss_mb()
    output_bytes = sum(os.path.getsize(path) for path in stats["files"])
    return {"text_mb": round(text_bytes / 1e6, 1), "documents": stats["documents"], "comments": stats["comments"],
            "instances": stats["instances"], "num_shards": num_shards, "store_tokens": stats["store_tokens"],
            "output_mb": round(output_bytes / 1e6, 1), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "text_mb_per_s": round(text_bytes / 1e6 / wall, 3), "instances_per_s": round(stats["instances"] / wall, 1),
            "instances_per_cpu_s": round(stats["instances"] / cpu, 1),
            "random_next_share": round(stats["random_next_share"], 4), "mean_tokens": round(stats["mean_tokens"], 2),
            "peak_rss_mb_main": main_mb, "peak_rss_mb_largest_worker": worker_mb,
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


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


def run_google_here(google_dir: str, input_glob: str, vocab_path: str, output_dir: str, dupe_factor: int) -> dict:
    """Google's create_training_instances + write_instance_to_example_files on the sample, in this process."""
    sys.path.insert(0, google_dir)
    from common import cli

    cli.quiet_tensorflow()
    from absl import flags
    import tensorflow.compat.v1 as tf1
    from bert import create_pretraining_data as google
    from bert import tokenization as google_tokenization

    flags.FLAGS.mark_as_parsed()  # the modules read flag defaults
    tf1.logging.set_verbosity(tf1.logging.WARN)
    files = sorted(glob.glob(input_glob))
    text_bytes = sum(os.path.getsize(path) for path in files)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    tokenizer = google_tokenization.FullTokenizer(vocab_file=vocab_path, do_lower_case=True)
    instances = google.create_training_instances(
        files, tokenizer, SETTINGS["max_seq_length"], dupe_factor, SETTINGS["short_seq_prob"],
        SETTINGS["masked_lm_prob"], SETTINGS["max_predictions_per_seq"], random.Random(SETTINGS["random_seed"]))
    google.write_instance_to_example_files(instances, tokenizer, SETTINGS["max_seq_length"],
                                           SETTINGS["max_predictions_per_seq"],
                                           [os.path.join(output_dir, "google.tfrecord")])
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    count = len(instances)
    return {"text_mb": round(text_bytes / 1e6, 1), "instances": count, "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1), "instances_per_s": round(count / wall, 1),
            "instances_per_cpu_s": round(count / cpu, 1),
            "random_next_share": round(sum(i.is_random_next for i in instances) / count, 4),
            "mean_tokens": round(sum(len(i.tokens) for i in instances) / count, 2),
            "peak_rss_mb_main": _peak_rss_mb()[0], "load_average_1min_after": round(os.getloadavg()[0], 2)}


def _in_fresh_process(arguments: list[str]) -> dict:
    """Runs one measurement in a child process and samples its process tree's memory every 0.2 s from here (a
    thread in the child would stop it from forking its workers): peak anonymous memory (RSS minus file-backed
    and shared pages: the memory-mapped token store's pages are file-backed and reclaimable) of the main process,
    of the largest worker, and of all together."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *arguments], stdout=out, stderr=err,
                                 text=True)
        process = psutil.Process(child.pid)
        peaks = {"main": 0, "worker": 0, "total": 0}
        while child.poll() is None:
            try:
                anonymous = {}
                for member in [process, *process.children(recursive=True)]:
                    info = member.memory_info()
                    anonymous[member.pid] = info.rss - info.shared
            except psutil.Error:
                pass  # a process ended between listing and reading
            else:
                peaks["total"] = max(peaks["total"], sum(anonymous.values()))
                peaks["main"] = max(peaks["main"], anonymous.pop(child.pid, 0))
                peaks["worker"] = max([peaks["worker"], *anonymous.values()])
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        return {"failed": stderr.strip().splitlines()[-1:] or ["no output"]}
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update({f"peak_anonymous_mb_{name}": round(value / 2**20, 1) for name, value in peaks.items()})
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes_mb", default="8,32,128", help="corpus sizes for ours, in MB of text")
    parser.add_argument("--google_mb", type=float, default=4.0, help="sample both run on (0: skip Google's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dupe_factor", type=int, default=10)
    parser.add_argument("--work_dir", default=None, help="where corpora and outputs go (default: a temp folder)")
    parser.add_argument("--one", nargs=5, metavar=("WHO", "INPUT_GLOB", "VOCAB", "OUTPUT_DIR", "SHARDS_OR_GOOGLE"),
                        help=argparse.SUPPRESS)  # internal: one run in a fresh process
    args = parser.parse_args(argv)
    if args.one:
        who, input_glob, vocab_path, output_dir, extra = args.one
        if who == "ours":
            result = run_ours_here(input_glob, vocab_path, output_dir, args.workers, args.dupe_factor, int(extra))
        else:
            result = run_google_here(extra, input_glob, vocab_path, output_dir, args.dupe_factor)
        print(json.dumps(result))
        return result

    sizes = [float(size) for size in args.sizes_mb.split(",") if size]
    report = {"bench": "pretraining_data", "cpu_count": os.cpu_count(), "workers": args.workers,
              "dupe_factor": args.dupe_factor, "settings": SETTINGS, "load_average_1min": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as directory:
        vocab_path = os.path.join(directory, "vocab.txt")
        write_vocab(vocab_path)

        def corpus(megabytes: float) -> str:
            folder = os.path.join(directory, f"corpus-{megabytes:g}mb")
            os.makedirs(folder)
            make_corpus(folder, megabytes)
            return os.path.join(folder, "*.txt")

        if args.google_mb > 0:
            sample = corpus(args.google_mb)
            output = os.path.join(directory, "out-sample")
            os.makedirs(output)
            google_dir = os.path.join(directory, "google")
            error = fetch_google(google_dir)
            report["sample_ours"] = _in_fresh_process(
                ["--workers", str(args.workers), "--dupe_factor", str(args.dupe_factor),
                 "--one", "ours", sample, vocab_path, output, "1"])
            if error:
                report["sample_google"] = {"unavailable": f"pip download bert-tensorflow==1.0.4 failed: {error}"}
            else:
                report["sample_google"] = _in_fresh_process(
                    ["--dupe_factor", str(args.dupe_factor), "--one", "google", sample, vocab_path, output, google_dir])
                ours, google = report["sample_ours"], report["sample_google"]
                if "instances_per_s" in ours and "instances_per_s" in google:
                    report["sample_ratio_instances_per_s"] = round(ours["instances_per_s"] / google["instances_per_s"], 2)
                    report["sample_ratio_peak_rss"] = round(google["peak_rss_mb_main"] / (
                        ours["peak_rss_mb_main"] + args.workers * ours["peak_rss_mb_largest_worker"]), 2)
            for path in glob.glob(os.path.join(output, "*")):
                os.remove(path)
        report["sizes"] = []
        for megabytes in sizes:
            input_glob = corpus(megabytes)
            output = os.path.join(directory, f"out-{megabytes:g}mb")
            os.makedirs(output)
            shards = max(1, round(megabytes / SHARD_MB_OF_TEXT))
            report["sizes"].append(_in_fresh_process(
                ["--workers", str(args.workers), "--dupe_factor", str(args.dupe_factor),
                 "--one", "ours", input_glob, vocab_path, output, str(shards)]))
            for path in glob.glob(os.path.join(output, "*")) + glob.glob(input_glob):
                os.remove(path)  # disk: one size at a time
    report["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, sort_keys=True))
    return report


if __name__ == "__main__":
    main()
