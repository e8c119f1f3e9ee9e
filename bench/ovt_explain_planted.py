r"""Do the explanations find the planted cause, and do they beat simple baselines? The original's pipeline
on synthetic files: viewing CSV -> sentence.txt, metadata -> vocab.txt, labelled files -> pre-train ->
fine-tune (frozen as the paper, and fully trained) -> explain.

    python bench/ovt_explain_planted.py [--seeds=0,1,2 --num_users=1500 --num_days=5 --work_dir=/tmp/ovt_planted]

Watching episodes of series S drives watching the target T. For the correctly predicted `viewed` test
users, the input programmes are ranked by each method's importance to [CLS] (raw last-layer attention,
rollout, attention flow) and by baselines: a random ranking (seeded), the 5 most recent programmes,
and global popularity (how often each programme appears in sentence.txt); precision@k = share of the
top k that are S's slots (users with at least k S slots in their input); chance = the S share of
those users' inputs. Controls: `rollout_blind` and `flow_blind` are rollout and flow with the last
layer's attention replaced by uniform attention (what the layers below say on their own; an
explanation close to its blind control is not explaining the fine-tuned layer); `rollout_via_tokens`
is rollout without the path through [CLS]'s own lower-layer attention; `rollout_ideal` and `flow_ideal`
put an ideal last layer (its [CLS] attention spread evenly over S's slots) on the model's layers below:
what a last layer that finds S alone would show, i.e. how far the layers below (frozen ones included)
let each method see the last layer. Every figure is
given for the test split (`p@k_*`) and the validation split (`val_p@k_*`): choose settings on the
latter. Per seed the data, pre-training and fine-tuning seeds change; each seed pre-trains once and
fine-tunes twice (frozen: all but the last layer and the pooler; full). Prints one JSON line per
run, then one summary line with mean and sd over the seeds per setting.
"""

from __future__ import annotations

import os

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import collections  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/ovt_planted", "Scratch folder (emptied first).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each one new data, pre-training and fine-tuning.")
flags.DEFINE_list("settings", ["frozen", "full"], "Fine-tuning settings: frozen (the paper) and/or full.")
flags.DEFINE_integer("num_users", 1500, "Synthetic users.")
flags.DEFINE_integer("num_days", 5, "Synthetic days.")
flags.DEFINE_integer("max_seq_length", 64, "Model input length.")
flags.DEFINE_integer("hidden_size", 64, "Model width.")
flags.DEFINE_integer("num_layers", 3, "Transformer layers.")
flags.DEFINE_integer("num_heads", 2, "Attention heads.")
flags.DEFINE_enum("masking", "tokens", ["tokens", "runs"], "Pre-training masks: tokens (the original) or runs.")
flags.DEFINE_float("pretrain_epochs", 12.0, "Pre-training passes over the lines.")
flags.DEFINE_float("cls_epochs", 8.0, "Fine-tuning passes.")
flags.DEFINE_float("frozen_learning_rate", 2e-3, "Fine-tuning learning rate, frozen encoder.")
flags.DEFINE_float("full_learning_rate", 5e-4, "Fine-tuning learning rate, whole encoder.")
flags.DEFINE_integer("k", 5, "precision@k.")
flags.DEFINE_bool("rescore", False, "Train nothing: score the models an earlier run left in --work_dir (the "
                  "other flags must be that run's).")

METHODS = ("raw", "rollout", "flow")
BASELINES = ("random", "recent", "popularity")
# Controls (`ovt_explain.attention.last_layer_controls`): blind, via tokens, and the ideal last layer.
CONTROLS = ("rollout_blind", "flow_blind", "rollout_via_tokens", "rollout_ideal", "flow_ideal")


def prepared(work: str) -> dict:
    """What scoring needs from a prepared `work` folder: the planted cause, popularity, labelled files."""
    sentences = os.path.join(work, "sentence.txt")
    cause = set(json.load(open(os.path.join(work, "syn", "planted.json")))["cause_slots"])
    popularity = collections.Counter(slot for line in open(sentences) for slot in line.split())
    return {"sentences": sentences, "vocab_file": os.path.join(work, "vocab.txt"), "cause": cause,
            "popularity": popularity, "classify_dir": os.path.join(work, "classify")}


def prepare(seed: int, work: str) -> dict:
    """Synthetic files through the original's data steps; returns paths and the planted cause."""
    from ovt_explain.make_synthetic_logs import write_synthetic_logs
    from ovt_explain.original_data import classify_sentences, convert_to_sentences, save_vocab, target_sort_ids

    paths = write_synthetic_logs(os.path.join(work, "syn"), num_users=FLAGS.num_users, num_days=FLAGS.num_days,
                                 random_seed=seed)["paths"]
    sentences = os.path.join(work, "sentence.txt")
    convert_to_sentences(paths["viewing.csv"], sentences)
    vocab_file = save_vocab(paths["tv_meta_data.csv"], work)
    target = target_sort_ids(paths["tv_meta_data.csv"], "Special T", "")
    classify_sentences(sentences, target, os.path.join(work, "classify"))
    return {**prepared(work), "paths": paths, "vocab_file": vocab_file}


def defaults(keys):
    from ovt_explain.run_config import REQUIRED

    return {key.name: (None if key.default is REQUIRED else key.default) for key in keys}


def correct_viewers(cls_dir: str, classify_dir: str, split: str) -> dict[str, list[str]]:
    """The `viewed` users of `split` the classifier predicted right: user id -> input history, read back
    from `predictions.jsonl` (ids `file:L<line>`) and the labelled files of `classify_dir`."""
    lines_of: dict[str, list[str]] = {}
    viewers = {}
    with open(os.path.join(cls_dir, "predictions.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] != split or row["label"] != "viewed" or row["predicted"] != "viewed":
                continue
            name, number = row["user_id"].rsplit(":L", 1)
            if name not in lines_of:
                with open(os.path.join(classify_dir, name), encoding="utf-8") as labelled:
                    lines_of[name] = labelled.read().split("\n")
            viewers[row["user_id"]] = lines_of[name][int(number) - 1].split()
    return viewers


def score(cls_dir: str, data: dict, seed: int, split: str = "test") -> tuple[dict, dict]:
    """precision@k of each method and baseline over the correctly predicted viewers of `split` with >= k
    S slots in their input."""
    from common.metrics import precision_at_k
    from ovt_explain.attention import last_layer_controls
    from ovt_explain.attention_visualization import explain_users
    from ovt_explain.modeling import LoadedClassifier

    classifier = LoadedClassifier(cls_dir)
    viewed = {user: history for user, history in correct_viewers(cls_dir, data["classify_dir"], split).items()
              if history}
    explanations = explain_users(classifier, viewed, flow_rows=(0,)) if viewed else []
    rng = np.random.default_rng(seed)
    scores = {name: [] for name in METHODS + CONTROLS + BASELINES + ("chance",)}
    k = FLAGS.k
    for explanation in explanations:
        tokens = explanation.tokens
        positions = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
        programmes = [viewed[explanation.user_id][i - 1] for i in positions]  # the ids, [UNK] or not
        planted = [p in data["cause"] for p in programmes]
        if sum(planted) < k:
            continue
        for method in METHODS:
            importance = explanation.importance(method)
            scores[method].append(precision_at_k(np.asarray([importance[i] for i in positions]), planted, k))
        cause_positions = [i for i, is_cause in zip(positions, planted) if is_cause]
        for name, importance in last_layer_controls(explanation.layers["raw"], cause_positions).items():
            scores[name].append(precision_at_k(importance[positions], planted, k))
        scores["random"].append(precision_at_k(rng.random(len(positions)), planted, k))
        scores["recent"].append(precision_at_k(np.arange(len(positions), dtype=float), planted, k))
        scores["popularity"].append(precision_at_k(
            np.asarray([data["popularity"][p] for p in programmes], float), planted, k))
        scores["chance"].append(float(np.mean(planted)))
    return {name: (float(np.mean(values)) if values else None) for name, values in scores.items()}, {
        "scored_users": len(scores["flow"]), "viewed_users": len(viewed)}


def main(argv):
    del argv
    from ovt_explain.bert_cls import CLS_KEYS, fine_tune
    from ovt_explain.bert_pretraining import PRETRAINING_KEYS, pretrain

    if not FLAGS.rescore:
        shutil.rmtree(FLAGS.work_dir, ignore_errors=True)
    runs = []
    for seed in (int(s) for s in FLAGS.seeds):
        work = os.path.join(FLAGS.work_dir, f"seed{seed}")
        started = time.perf_counter()
        pre_dir = os.path.join(work, "pre")
        if FLAGS.rescore:
            data = prepared(work)
            pre = {"eval_history": json.load(open(os.path.join(pre_dir, "eval_history.json")))}
        else:
            data = prepare(seed, work)
            pre_config = defaults(PRETRAINING_KEYS)
            pre_config.update(train_file=[data["sentences"]], vocab_file=data["vocab_file"], output_dir=pre_dir,
                              num_hidden_layers=FLAGS.num_layers, hidden_size=FLAGS.hidden_size,
                              num_attention_heads=FLAGS.num_heads, intermediate_size=4 * FLAGS.hidden_size,
                              max_seq_length=FLAGS.max_seq_length, per_device_train_batch_size=32,
                              epochs=FLAGS.pretrain_epochs, learning_rate=2e-3, warmup_proportion=0.05,
                              eval_steps=10 ** 6, logging_steps=10 ** 6, save_steps=10 ** 6, random_seed=seed,
                              masking=FLAGS.masking)
            pre = pretrain(pre_config, progress=False)
        pretrain_seconds = time.perf_counter() - started
        for setting in FLAGS.settings:
            started = time.perf_counter()
            frozen = setting == "frozen"
            cls_dir = os.path.join(work, f"cls_{setting}")
            if FLAGS.rescore:
                results = json.load(open(os.path.join(cls_dir, "test_results.json")))
            else:
                cls_config = defaults(CLS_KEYS)
                cls_config.update(train_dir=data["classify_dir"], pretrained_model=pre_dir, output_dir=cls_dir,
                                  max_seq_length=FLAGS.max_seq_length, line_sampling="all",
                                  per_device_train_batch_size=32, epochs=FLAGS.cls_epochs,
                                  learning_rate=FLAGS.frozen_learning_rate if frozen else FLAGS.full_learning_rate,
                                  warmup_proportion=0.1, freeze_bert_params=frozen, eval_steps=50,
                                  logging_steps=10 ** 6, save_steps=10 ** 6, load_best_model_at_end=True,
                                  random_seed=seed)
                results = fine_tune(cls_config, progress=False)
            finetune_seconds = time.perf_counter() - started
            started = time.perf_counter()
            val_precision, val_counts = score(cls_dir, data, seed, "validation")
            precision, counts = score(cls_dir, data, seed, "test")
            test = results.get("test", {})
            run = {"bench": "ovt_explain_planted_run", "seed": seed, "setting": setting,
                   "mlm_accuracy": (round(pre["eval_history"][-1]["metrics"]["masked_lm_accuracy"], 4)
                                    if pre["eval_history"] else None),
                   "test_macro_f1": round(test.get("macro_f1", float("nan")), 4),
                   "test_roc_auc": round(test.get("roc_auc", float("nan")), 4),
                   **{f"p@{FLAGS.k}_{name}": round(value, 4) if value is not None else None
                      for name, value in precision.items()}, **counts,
                   **{f"val_p@{FLAGS.k}_{name}": round(value, 4) if value is not None else None
                      for name, value in val_precision.items()},
                   "val_scored_users": val_counts["scored_users"],
                   **({"rescored": True} if FLAGS.rescore else
                      {"pretrain_s": round(pretrain_seconds, 1), "finetune_s": round(finetune_seconds, 1)}),
                   "explain_s": round(time.perf_counter() - started, 1),
                   "load_average_1min": round(os.getloadavg()[0], 2)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    summary = {"bench": "ovt_explain_planted", "seeds": FLAGS.seeds, "users": FLAGS.num_users,
               "layers": FLAGS.num_layers, "heads": FLAGS.num_heads, "hidden": FLAGS.hidden_size, "seq": FLAGS.max_seq_length,
               "masking": FLAGS.masking, "pretrain_epochs": FLAGS.pretrain_epochs, "cls_epochs": FLAGS.cls_epochs}
    for setting in FLAGS.settings:
        chosen = [run for run in runs if run["setting"] == setting]
        for name in ("test_macro_f1",) + tuple(f"{prefix}p@{FLAGS.k}_{n}" for prefix in ("", "val_")
                                                for n in METHODS + CONTROLS + BASELINES + ("chance",)):
            values = [run[name] for run in chosen if run[name] is not None]
            summary[f"{setting}_{name}"] = (f"{np.mean(values):.3f}±{np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"
                                            if values else None)

        def mean_of(name):
            values = [run[f"p@{FLAGS.k}_{name}"] for run in chosen if run[f"p@{FLAGS.k}_{name}"] is not None]
            return float(np.mean(values)) if values else float("-inf")
        best_baseline = max(mean_of(b) for b in BASELINES)
        summary[f"{setting}_best_baseline"] = round(best_baseline, 3) if np.isfinite(best_baseline) else None
        for method in ("rollout", "flow"):
            mean = mean_of(method)
            summary[f"{setting}_{method}_target_met"] = bool(mean >= 0.9 and mean - best_baseline >= 0.3)
    summary.update(load_average_1min=round(os.getloadavg()[0], 2), cpu_count=os.cpu_count(),
                   note="2-core CPU shared with other jobs")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main)
