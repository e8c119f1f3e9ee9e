"""Benchmark: BERT4Rec evaluation (pop100 + uni100 + full) at Beauty's size, against the previous implementation.

Prints one JSON line. Data: the Beauty-shaped synthetic set (`bert4rec.synthetic`: 40,226 users, 54,542 items,
vocabulary 54,546) through gen_data_fin with run_beauty.sh's flags; model: bert_config_beauty_64 (untrained:
the cost of ranking does not depend on the weights). "seconds_first" is `experiment.run_evaluation` on every
test user with all three protocols in a fresh process state (tracing included); "seconds_second" the same
again. The reference is the implementation before this one (`bert4rec/evaluation.py` at `--reference_rev`,
loaded from git): per user, vocab_size exponentials and a [chunk, vocab] partition per protocol, on the
logits of the same model and batches (model + ranking timed, as `run_evaluation` ran them); it runs on the first
`--reference_users` users only (its cost is linear in users) and `reference_seconds_all_users` scales it to all. Its full-ranking ranks (no sampling) must equal
ours on those users exactly: "full_ranks_equal".

    python bench/bert4rec_eval.py [--reference_users 2048] [--reference_rev 40e168c]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4rec import data as bert4rec_data  # noqa: E402
from bert4rec import experiment  # noqa: E402
from bert4rec.evaluation import CandidateSampler, RankingEvaluator  # noqa: E402
from bert4rec.gen_data_fin import generate  # noqa: E402
from bert4rec.synthetic import beauty_like, write_user_item_file  # noqa: E402
from common.config import BertConfig  # noqa: E402
from common.tfrecords import make_dataset  # noqa: E402

CONFIG = os.path.join(REPO, "bert4rec", "bert_train", "bert_config_beauty_64.json")
PROTOCOLS = ("pop100", "uni100", "full")


def load_reference(rev: str):
    """The evaluation module as it was at `rev` (None when git or the revision is unavailable)."""
    try:
        source = subprocess.run(["git", "-C", REPO, "show", f"{rev}:bert4rec/evaluation.py"], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="bert4rec_eval_ref_"), "reference_evaluation.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("reference_evaluation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_beauty_evaluation(work: str, batch_size: int = 256):
    """Writes the Beauty-shaped test set into `work` and times `run_evaluation` (all protocols) twice.

    Returns (gen_data summary, RunSettings, file prefix, the untrained model, [first, second] seconds,
    the second run's metrics by protocol)."""
    write_user_item_file(os.path.join(work, "beauty.txt"), *beauty_like(seed=0))
    summary = generate("beauty", data_dir=work, output_dir=work, max_seq_length=50, max_predictions_per_seq=30,
                       masked_lm_prob=0.6, mask_prob=1.0, dupe_factor=1, prop_sliding_window=0.1, signature="",
                       pool_size=1, show_progress=False)
    prefix = os.path.join(work, "beauty")
    settings = experiment.RunSettings(bert_config_file=CONFIG, vocab_filename=prefix + ".vocab",
                                      user_history_filename=prefix + ".his", max_seq_length=50,
                                      max_predictions_per_seq=30)
    model = experiment.build_model(BertConfig.from_json_file(CONFIG))
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        results = experiment.run_evaluation(model, settings, prefix + ".test.tfrecord", batch_size=batch_size,
                                            protocols=PROTOCOLS, progress=False)
        timings.append(time.perf_counter() - started)
    return summary, settings, prefix, model, timings, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_users", type=int, default=2048, help="0 skips the reference")
    parser.add_argument("--reference_rev", default="40e168c")
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bert4rec_eval_")
    try:
        summary, settings, prefix, model, timings, results = time_beauty_evaluation(work, args.batch_size)

        # The same users' full ranks from our evaluator's numpy path, and the reference on the first users.
        reference = load_reference(args.reference_rev) if args.reference_users > 0 else None  # 0: ours only
        vocab = bert4rec_data.load_vocab(settings.vocab_filename)
        histories = bert4rec_data.load_histories(settings.user_history_filename)
        window = experiment.excluded_history_window(True, settings.max_seq_length)
        ours = RankingEvaluator(CandidateSampler(vocab.item_counts, seed=12345, num_items=vocab.num_items),
                                ("full",), histories, window)
        report_reference = {}
        if reference is not None:
            theirs = reference.RankingEvaluator(
                reference.CandidateSampler(vocab.item_counts, num_negatives=100, seed=12345, num_items=vocab.num_items),
                PROTOCOLS, histories, history_window=window)
            spec = bert4rec_data.bert4rec_feature_spec(50, 30)
            batches = make_dataset(prefix + ".test.tfrecord", spec, args.batch_size, is_training=False)
            next_item_logits = tf.function(model.next_item_logits, reduce_retracing=True)  # as it was run
            users_done, seconds = 0, 0.0
            for features in batches:
                if users_done >= args.reference_users:
                    break
                started = time.perf_counter()
                logits = next_item_logits(features).numpy()
                users = features["info"].numpy()[:, 0]
                targets = features["masked_lm_ids"].numpy()[:, 0]
                theirs.update(users, targets, logits)
                seconds += time.perf_counter() - started
                ours.update(users, targets, logits)
                users_done += len(users)
            report_reference = {
                "reference_rev": args.reference_rev, "reference_users": users_done,
                "reference_seconds": round(seconds, 2),
                "reference_seconds_all_users": round(seconds * summary["users"] / users_done, 1),
                "full_ranks_equal": bool(np.array_equal(theirs.ranks("full"), ours.ranks("full"))),
            }
            report_reference["speedup_first"] = round(report_reference["reference_seconds_all_users"] / timings[0], 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "bench": "bert4rec_eval", "users": summary["users"], "items": summary["items"],
        "vocab_size": summary["vocab_size"], "protocols": list(PROTOCOLS),
        "seconds_first": round(timings[0], 1), "seconds_second": round(timings[1], 1),
        **report_reference,
        "hit@10": {protocol: round(results[protocol]["hit@10"], 4) for protocol in PROTOCOLS},
        "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
