r"""Do the explanations find the planted cause? Synthetic logs -> pre-train -> fine-tune -> explain.

    python bench/ovt_explain_planted.py [--num_users=1500 --num_days=5 --work_dir=/tmp/ovt_planted]

Generates logs where watching episodes of series S drives watching target T, pre-trains a small BERT
on them (masked LM), fine-tunes viewed/not_viewed, and for the correctly predicted `viewed` test users
ranks the input programmes by raw last-layer attention, rollout and attention flow from [CLS].
precision@k = share of the top k programmes that are S's slots (users with at least k S slots in
their input). Prints one JSON line: macro-F1 / accuracy / ROC-AUC on the test users, precision@k per
method, and the time of each phase.
"""

from __future__ import annotations

import os

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/ovt_planted", "Scratch folder (emptied first).")
flags.DEFINE_integer("num_users", 1500, "Synthetic users.")
flags.DEFINE_integer("num_days", 5, "Synthetic days.")
flags.DEFINE_integer("max_seq_length", 64, "Model input length.")
flags.DEFINE_integer("hidden_size", 64, "Model width.")
flags.DEFINE_integer("num_layers", 3, "Transformer layers.")
flags.DEFINE_float("pretrain_epochs", 6.0, "Pre-training passes over the users.")
flags.DEFINE_float("cls_epochs", 8.0, "Fine-tuning passes.")
flags.DEFINE_bool("freeze", False, "Freeze all but the last layer and the pooler (the paper's setting).")
flags.DEFINE_integer("k", 5, "precision@k.")
flags.DEFINE_integer("random_seed", 0, "Seed of the synthetic logs and the runs.")


def precision_at_k(importance: np.ndarray, positions: list[int], planted: list[bool], k: int) -> float:
    ranked = sorted(range(len(positions)), key=lambda i: -importance[positions[i]])[:k]
    return float(np.mean([planted[i] for i in ranked]))


def main(argv):
    del argv
    from ovt_explain.attention_visualization import explain_users
    from ovt_explain.bert_cls import CLS_KEYS, fine_tune
    from ovt_explain.bert_pretraining import PRETRAINING_KEYS, pretrain
    from ovt_explain.logs import read_logs
    from ovt_explain.make_synthetic_logs import write_synthetic_logs
    from ovt_explain.modeling import LoadedClassifier, model_input_tokens
    from ovt_explain.run_config import REQUIRED

    work = FLAGS.work_dir
    shutil.rmtree(work, ignore_errors=True)
    timings = {}
    started = time.perf_counter()
    synthetic = write_synthetic_logs(os.path.join(work, "syn"), num_users=FLAGS.num_users,
                                     num_days=FLAGS.num_days, random_seed=FLAGS.random_seed)
    paths = synthetic["paths"]
    timings["synthetic_s"] = time.perf_counter() - started

    def defaults(keys):
        return {key.name: (None if key.default is REQUIRED else key.default) for key in keys}

    pre_config = defaults(PRETRAINING_KEYS)
    pre_config.update(train_file=[paths["logs.txt"]], vocab_file=os.path.join(work, "pre", "vocab.txt"),
                      output_dir=os.path.join(work, "pre"), num_hidden_layers=FLAGS.num_layers,
                      hidden_size=FLAGS.hidden_size, num_attention_heads=2, max_seq_length=FLAGS.max_seq_length,
                      batch_size=32, epochs=FLAGS.pretrain_epochs, learning_rate=1e-3, warmup_proportion=0.05,
                      eval_percentage=5.0, eval_steps=200, logging_steps=100, save_steps=1000, dupe_factor=3,
                      random_seed=FLAGS.random_seed)
    started = time.perf_counter()
    pre = pretrain(pre_config, progress=False)
    timings["pretrain_s"] = time.perf_counter() - started

    cls_config = defaults(CLS_KEYS)
    cls_config.update(train_file=[paths["logs.txt"]], target_program=paths["planted.json"],
                      pretrained_model=pre_config["output_dir"], output_dir=os.path.join(work, "cls"),
                      max_seq_length=FLAGS.max_seq_length, batch_size=32, epochs=FLAGS.cls_epochs,
                      learning_rate=5e-4, warmup_proportion=0.1, freeze_bert_params=FLAGS.freeze,
                      eval_steps=50, logging_steps=100, save_steps=1000, load_best_model_at_end=True,
                      random_seed=FLAGS.random_seed)
    started = time.perf_counter()
    results = fine_tune(cls_config, progress=False)
    timings["finetune_s"] = time.perf_counter() - started

    started = time.perf_counter()
    classifier = LoadedClassifier(cls_config["output_dir"])
    viewed = read_logs(os.path.join(cls_config["output_dir"], "viewed.txt"))  # correctly predicted viewers
    explanations = explain_users(classifier, viewed, flow_rows=(0,))
    timings["explain_s"] = time.perf_counter() - started
    cause = set(json.load(open(paths["planted.json"]))["cause_slots"])
    scores = {"raw": [], "rollout": [], "flow": []}
    for explanation in explanations:
        tokens = model_input_tokens(viewed[explanation.user_id], classifier.vocab, classifier.max_seq_length)
        positions = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
        planted = [tokens[i] in cause for i in positions]
        if sum(planted) < FLAGS.k:
            continue
        for method in scores:
            scores[method].append(precision_at_k(explanation.importance(method), positions, planted, FLAGS.k))
    planted_share = float(np.mean([np.mean([t in cause for t in h[-(FLAGS.max_seq_length - 2):]])
                                   for h in viewed.values()])) if viewed else float("nan")
    test = results.get("test", {})
    print(json.dumps({
        "bench": "ovt_explain_planted", "users": synthetic["users"], "layers": FLAGS.num_layers,
        "hidden": FLAGS.hidden_size, "seq": FLAGS.max_seq_length, "freeze": FLAGS.freeze,
        "pretrain_steps": pre["steps"], "mlm_accuracy": (pre["eval_history"][-1].get("masked_lm_accuracy")
                                                         if pre["eval_history"] else None),
        "test_macro_f1": round(test.get("macro_f1", float("nan")), 4),
        "test_accuracy": round(test.get("accuracy", float("nan")), 4),
        "test_roc_auc": round(test.get("roc_auc", float("nan")), 4),
        "explained_users": len(scores["flow"]),
        "planted_share_of_input": round(planted_share, 3),
        **{f"p@{FLAGS.k}_{method}": round(float(np.mean(values)), 4) if values else None
           for method, values in scores.items()},
        **{name: round(value, 1) for name, value in timings.items()},
        "note": "2-core CPU shared with other jobs",
    }))


if __name__ == "__main__":
    cli.run(main)
