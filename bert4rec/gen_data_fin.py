"""BERT4Rec data generation (the original `gen_data_fin.py`, same flags and semantics, deterministic and streaming).

    python bert4rec/gen_data_fin.py --dataset_name=ml-1m --max_seq_length=200 --max_predictions_per_seq=40 \
        --masked_lm_prob=0.2 --mask_prob=1.0 --dupe_factor=10 --prop_sliding_window=0.5 --signature=-fin

Reads `<data_dir>/<dataset_name>.txt` (converting MovieLens first when needed) and writes into `output_dir`:
`<dataset><signature>.train.tfrecord`, `.test.tfrecord`, `.vocab` and `.his` (JSON), and `.summary.json`.
Leave-one-out: each user's last item is the test target, the items before it are the training side.
Training file: `dupe_factor` passes over all users (fresh random masks each pass) and one pass with only the
last item of every window masked, all in one seeded random order, as the original shuffles all instances before
writing; test file: one instance per user, users in order, the whole history with its last item masked.
Same `--random_seed` gives byte-identical files whatever `--pool_size`; nothing is left behind on error.

Differences from the original, all deliberate: the shuffle is an external sort by a per-instance random key (memory
stays bounded: instances go to key-range buckets on disk, each bucket is sorted in memory); randomness is per
(seed, user, pass, window) instead of one sequential stream; users with exactly 2 items get leave-one-out like
everyone else (the original put both items in training and gave them no test instance); outputs are JSON instead
of pickles; masks for `mask_prob < 1` use the same [MASK] / keep / random split, drawn independently per position.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a file, `python bert4rec/gen_data_fin.py`
    import _run_as_file  # noqa: F401

import numpy as np  # noqa: E402

from bert4rec import masking  # noqa: E402
from bert4rec.data import build_vocab, prepare_dataset, read_user_item_file, save_histories, save_vocab  # noqa: E402
from common.io_utils import atomic_output, atomic_path  # noqa: E402
from common.parallel import OrderedPool  # noqa: E402
from common.tfrecords import TFRecordFileWriter  # noqa: E402

CELLS_PER_TASK = 1 << 20  # window positions (instances x max_seq_length) per work unit: vectorises well, bounded memory
BUCKET_BYTES = 1 << 28  # training records sorted in memory at once (an estimate): more go to key-range buckets on disk
WRITE_RECORDS = 1 << 16  # records joined per write when writing a sorted bucket


class KeyOrderWriter:
    """Writes framed records in ascending key order (ties in arrival order): an external sort.

    Runs arrive grouped by key range (the top `bucket_bits` bits); with more than one range, each range is appended
    to its own temporary file in `temp_dir`, and `finish` sorts one range at a time in memory.
    """

    def __init__(self, writer, bucket_bits: int, temp_dir: str | None = None):
        self.writer, self.bucket_bits = writer, bucket_bits
        self.num_buckets = 1 << bucket_bits
        self.runs: list = []  # in memory (one bucket): (framed, keys, frame lengths)
        self.temp_dir = temp_dir
        if self.num_buckets > 1 and temp_dir is None:
            raise ValueError("more than one bucket needs a temp_dir")

    def _bucket_path(self, bucket: int, kind: str) -> str:
        return os.path.join(self.temp_dir, f"bucket{bucket:05d}.{kind}")

    def add(self, framed: bytes, keys: np.ndarray, frame_lengths: np.ndarray) -> None:
        if self.num_buckets == 1:
            self.runs.append((framed, keys, frame_lengths))
            return
        buckets = (keys >> np.uint64(64 - self.bucket_bits)).astype(np.int64)
        edges = np.searchsorted(buckets, np.arange(self.num_buckets + 1))
        byte_edges = np.concatenate([[0], np.cumsum(frame_lengths)])[edges]
        view = memoryview(framed)
        for bucket in np.flatnonzero(np.diff(edges)).tolist():
            begin, end = int(edges[bucket]), int(edges[bucket + 1])
            with open(self._bucket_path(bucket, "records"), "ab") as handle:
                handle.write(view[int(byte_edges[bucket]):int(byte_edges[bucket + 1])])
            with open(self._bucket_path(bucket, "index"), "ab") as handle:
                handle.write(np.stack([keys[begin:end], frame_lengths[begin:end].astype(np.uint64)], 1).tobytes())

    def _write_sorted(self, runs: list) -> None:
        """Writes the records of `runs` ((framed, keys, frame lengths) each) in ascending key order."""
        keys = np.concatenate([run[1] for run in runs])
        lengths = np.concatenate([run[2] for run in runs]).astype(np.int64)
        run_of = np.repeat(np.arange(len(runs)), [len(run[1]) for run in runs])
        run_first = np.cumsum([0] + [len(run[1]) for run in runs])[:-1]
        starts = np.cumsum(lengths) - lengths
        starts -= np.repeat(starts[run_first], [len(run[1]) for run in runs])  # offsets within each run
        order = np.argsort(keys, kind="stable")
        views = [memoryview(run[0]) for run in runs]  # no joined copy of the bucket
        for begin in range(0, len(order), WRITE_RECORDS):
            piece = order[begin:begin + WRITE_RECORDS]
            self.writer.write_framed(b"".join([views[run][start:start + length] for run, start, length in zip(
                run_of[piece].tolist(), starts[piece].tolist(), lengths[piece].tolist())]), len(piece))

    def finish(self) -> None:
        if self.num_buckets == 1:
            if self.runs:
                self._write_sorted(self.runs)
            self.runs = []
            return
        for bucket in range(self.num_buckets):
            index_path = self._bucket_path(bucket, "index")
            if not os.path.exists(index_path):
                continue
            index = np.fromfile(index_path, dtype=np.uint64).reshape(-1, 2)
            with open(self._bucket_path(bucket, "records"), "rb") as handle:
                framed = handle.read()
            self._write_sorted([(framed, index[:, 0], index[:, 1].astype(np.int64))])
            os.remove(index_path)
            os.remove(self._bucket_path(bucket, "records"))


def bucket_bits_for(num_instances: int, max_seq_length: int, max_predictions_per_seq: int,
                    bucket_bytes: int | None = None) -> int:
    """How many key bits split the training records into buckets of about `bucket_bytes` (an upper estimate)."""
    bytes_per_record = 2 * max_seq_length + 9 * max_predictions_per_seq + 96  # varints, weights, framing
    buckets = -(-num_instances * bytes_per_record // (bucket_bytes or BUCKET_BYTES))
    return max(0, int(buckets - 1).bit_length())


def plan_tasks(window_cells_per_user: np.ndarray, dupe_factor: int, cells_per_task: int = CELLS_PER_TASK,
               last_item_passes: int = 1):
    """Work units (kind, pass_start, pass_stop, user_begin, user_end) whose outputs, in order, are the files' order.

    Training: passes one after the other, users in order within a pass, then the last-item passes; test: users in order.
    Large data: one pass over a range of users per unit. Small data: all users, several passes per unit.
    """
    num_users = len(window_cells_per_user)
    cumulative = np.concatenate([[0], np.cumsum(window_cells_per_user)])
    cuts = np.searchsorted(cumulative, np.arange(cells_per_task, int(cumulative[-1]), cells_per_task), side="right") - 1
    edges = sorted({0, num_users, *[int(cut) for cut in cuts if 0 < cut < num_users]})
    chunks = list(zip(edges[:-1], edges[1:]))
    passes_per_task = max(1, cells_per_task // max(1, int(cumulative[-1]))) if len(chunks) == 1 else 1
    tasks = [("train", start, min(start + passes_per_task, dupe_factor), begin, end)
             for start in range(0, dupe_factor, passes_per_task) for begin, end in chunks]
    if last_item_passes:
        tasks += [("train_last", dupe_factor, dupe_factor + last_item_passes, begin, end) for begin, end in chunks]
    tasks += [("test", 0, 1, begin, end) for begin, end in chunks]
    return tasks


def _run_tasks(tasks, pool_size: int, init_args):
    """Results of `masking.run_task` for every task, in task order."""
    with OrderedPool(pool_size, masking.init_worker, init_args, finalizer=masking.clear_worker) as pool:
        yield from pool.map(masking.run_task, tasks)


def _progress_bar(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():  # like tqdm's disable=None, and skips importing it for pipes
        return contextlib.nullcontext(None)
    from tqdm import tqdm
    return tqdm(total=total, unit="user", desc="users x passes", file=sys.stderr)


def output_paths(output_dir: str, dataset_name: str, signature: str) -> dict[str, str]:
    prefix = os.path.join(output_dir, f"{dataset_name}{signature}")
    return {"train": f"{prefix}.train.tfrecord", "test": f"{prefix}.test.tfrecord", "vocab": f"{prefix}.vocab",
            "his": f"{prefix}.his", "summary": f"{prefix}.summary.json"}


def _validate(max_seq_length, max_predictions_per_seq, masked_lm_prob, mask_prob, dupe_factor, pool_size,
              last_item_passes=1):
    problems = []
    if last_item_passes < 0:
        problems.append(f"last_item_passes must be >= 0, got {last_item_passes}")
    if max_seq_length < 1:
        problems.append(f"max_seq_length must be >= 1, got {max_seq_length}")
    if max_predictions_per_seq < 1:
        problems.append(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    if not 0.0 <= masked_lm_prob:
        problems.append(f"masked_lm_prob must be >= 0, got {masked_lm_prob}")
    if not 0.0 <= mask_prob <= 1.0:
        problems.append(f"mask_prob must be in [0, 1], got {mask_prob}")
    if dupe_factor < 0:
        problems.append(f"dupe_factor must be >= 0, got {dupe_factor}")
    if pool_size < 1:
        problems.append(f"pool_size must be >= 1, got {pool_size}")
    if problems:
        raise ValueError("; ".join(problems))


def generate(dataset_name: str, *, data_dir: str = "./data", output_dir: str = "./data", max_seq_length: int = 200,
             max_predictions_per_seq: int = 20, masked_lm_prob: float = 0.15, mask_prob: float = 1.0,
             dupe_factor: int = 10, prop_sliding_window: float = 0.1, signature: str = "default", pool_size: int = 10,
             random_seed: int = 12345, cache_dir: str | None = None, show_progress: bool = True,
             last_item_passes: int = 1) -> dict:
    """Writes the BERT4Rec train/test TFRecords, vocabulary, histories and summary; returns the summary.

    `pool_size` worker processes (capped at the CPU count) share the work; it never changes the output.
    `last_item_passes`: copies of the last-item instances (the original: 1, i.e. 1 in dupe_factor + 1 instances).
    """
    _validate(max_seq_length, max_predictions_per_seq, masked_lm_prob, mask_prob, dupe_factor, pool_size,
              last_item_passes)
    step = masking.sliding_step(max_seq_length, prop_sliding_window)
    data_path = prepare_dataset(dataset_name, data_dir, cache_dir)
    sequences = read_user_item_file(data_path)
    vocab = build_vocab(sequences)
    model_items = vocab.to_model_ids(sequences.items)
    num_users = len(sequences)

    # Leave-one-out: the training side of a user is everything but the last item.
    is_test_item = np.zeros(len(model_items), dtype=bool)
    is_test_item[sequences.offsets[1:] - 1] = True
    train_items = model_items[~is_test_item]
    train_offsets = sequences.offsets - np.arange(num_users + 1)

    windows_per_user = masking.window_counts(np.diff(train_offsets), max_seq_length, step)
    num_train_instances = int(windows_per_user.sum()) * (dupe_factor + last_item_passes)
    bucket_bits = bucket_bits_for(num_train_instances, max_seq_length, max_predictions_per_seq)
    config = masking.MaskingConfig(
        max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq, masked_lm_prob=masked_lm_prob,
        mask_prob=mask_prob, sliding_step=step, seed=random_seed, num_items=vocab.num_items, mask_id=vocab.mask_id,
        bucket_bits=bucket_bits)
    tasks = plan_tasks(windows_per_user * max_seq_length, dupe_factor, CELLS_PER_TASK, last_item_passes)
    workers = max(1, min(pool_size, os.cpu_count() or 1, len(tasks)))
    init_args = (config, sequences.users, train_offsets, train_items, sequences.offsets, model_items)

    counts = {kind: {"instances": 0, "masked_positions": 0} for kind in ("train", "train_last", "test")}
    paths = output_paths(output_dir, dataset_name, signature)
    os.makedirs(output_dir, exist_ok=True)
    with contextlib.ExitStack() as outputs:  # every file goes to a temp name, renamed only when all succeeded
        temp_paths = {kind: outputs.enter_context(atomic_path(path)) for kind, path in paths.items()}
        bucket_dir = (outputs.enter_context(tempfile.TemporaryDirectory(prefix=".buckets-", dir=output_dir))
                      if bucket_bits else None)
        with open(temp_paths["train"], "wb") as train_handle, open(temp_paths["test"], "wb") as test_handle, \
                _progress_bar(num_users * (dupe_factor + last_item_passes + 1), show_progress) as progress:
            train_writer = KeyOrderWriter(TFRecordFileWriter(train_handle), bucket_bits, bucket_dir)
            test_writer = TFRecordFileWriter(test_handle)
            for task, result in zip(tasks, _run_tasks(tasks, workers, init_args)):
                kind, pass_start, pass_stop, begin, end = task
                if kind == "test":
                    framed, instances, masked = result
                    test_writer.write_framed(framed, instances)
                else:
                    train_writer.add(result.framed, result.keys, result.frame_lengths)
                    instances, masked = result.instances, result.masked
                counts[kind]["instances"] += instances
                counts[kind]["masked_positions"] += masked
                if progress is not None:
                    progress.update((end - begin) * (pass_stop - pass_start))
            train_writer.finish()
            train_writer.writer.flush()
            test_writer.flush()
        save_vocab(temp_paths["vocab"], vocab)
        save_histories(temp_paths["his"], sequences.users, sequences.offsets, model_items)
        summary = {
            "dataset": dataset_name,
            "signature": signature,
            "users": num_users,
            "items": vocab.num_items,
            "interactions": int(len(model_items)),
            "vocab_size": vocab.vocab_size,
            "mask_id": vocab.mask_id,
            "train": {
                "instances": counts["train"]["instances"] + counts["train_last"]["instances"],
                "masked_positions": counts["train"]["masked_positions"] + counts["train_last"]["masked_positions"],
                "windows_per_pass": int(windows_per_user.sum()),
                "random_mask_instances": counts["train"]["instances"],
                "last_item_instances": counts["train_last"]["instances"],
            },
            "test": counts["test"],
            "random_seed": random_seed,
            "flags": {"max_seq_length": max_seq_length, "max_predictions_per_seq": max_predictions_per_seq,
                      "masked_lm_prob": masked_lm_prob, "mask_prob": mask_prob, "dupe_factor": dupe_factor,
                      "prop_sliding_window": prop_sliding_window, "sliding_step": step,
                      "last_item_passes": last_item_passes},
            "files": {kind: os.path.basename(path) for kind, path in paths.items()},
        }
        with atomic_output(temp_paths["summary"]) as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
    return summary


def summary_line(summary: dict, seconds: float) -> str:
    train, test = summary["train"], summary["test"]
    return (f"{summary['dataset']}{summary['signature']}: {summary['users']:,} users, {summary['items']:,} items, "
            f"vocab_size {summary['vocab_size']:,}; train {train['instances']:,} instances "
            f"({train['random_mask_instances']:,} random-masked + {train['last_item_instances']:,} last-item), "
            f"{train['masked_positions']:,} masked positions; test {test['instances']:,} instances; {seconds:.1f} s")


def _define_flags():
    from absl import flags

    flags.DEFINE_string("signature", "default", "Signature appended to the dataset name in output file names.")
    flags.DEFINE_integer("pool_size", 10, "Worker processes (capped at the CPU count); never changes the output.")
    flags.DEFINE_integer("max_seq_length", 200, "Maximum sequence length (window size).")
    flags.DEFINE_integer("max_predictions_per_seq", 20, "Maximum masked positions per training instance.")
    flags.DEFINE_float("masked_lm_prob", 0.15, "Fraction of a window's items to mask.")
    flags.DEFINE_float("mask_prob", 1.0, "Probability that a chosen position becomes [MASK] (else kept/random).")
    flags.DEFINE_integer("dupe_factor", 10, "Passes over the data with fresh masks.")
    flags.DEFINE_float("prop_sliding_window", 0.1, "Sliding window step as a fraction of max_seq_length (-1: no overlap).")
    flags.DEFINE_string("data_dir", "./data", "Directory with <dataset_name>.txt (or the raw MovieLens archives).")
    flags.DEFINE_string("output_dir", "./data", "Directory for the generated files.")
    flags.DEFINE_string("dataset_name", "ml-1m", "Dataset name: ml-100k, ml-1m, ml-20m or any <name>.txt in data_dir.")
    flags.DEFINE_integer("random_seed", 12345, "Random seed; same seed, same bytes.")
    flags.DEFINE_integer("last_item_passes", 1, "Ours: passes with only each window's last item masked (the "
                         "original's 1); more raise the share of next-item instances.")
    return flags.FLAGS


def main(argv):
    del argv
    from absl import flags
    FLAGS = flags.FLAGS
    started = time.perf_counter()
    summary = generate(
        FLAGS.dataset_name, data_dir=FLAGS.data_dir, output_dir=FLAGS.output_dir,
        max_seq_length=FLAGS.max_seq_length, max_predictions_per_seq=FLAGS.max_predictions_per_seq,
        masked_lm_prob=FLAGS.masked_lm_prob, mask_prob=FLAGS.mask_prob, dupe_factor=FLAGS.dupe_factor,
        prop_sliding_window=FLAGS.prop_sliding_window, signature=FLAGS.signature, pool_size=FLAGS.pool_size,
        random_seed=FLAGS.random_seed, last_item_passes=FLAGS.last_item_passes)
    print(summary_line(summary, time.perf_counter() - started), flush=True)


if __name__ == "__main__":
    from common import cli

    cli.quiet_tensorflow()
    _define_flags()
    # ValueError covers DataError and flag validation: one clear line naming the file and line, no traceback.
    cli.run(main, user_errors=(cli.UserError, FileNotFoundError, ValueError))
