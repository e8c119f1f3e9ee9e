r"""Deep metric learning with BERT (triplet loss), with the original `train_dml.py` command line.

    python -m bert_dml.train_dml --batchsize 64 --epoch 100 \
        --train datasets/rt-polarity/04-train.txt --eval datasets/rt-polarity/04-test.txt \
        --init_checkpoint BERT/uncased_L-12_H-768_A-12/arrays_bert_model.ckpt.npz \
        --bert_config_file BERT/uncased_L-12_H-768_A-12/bert_config.json \
        --vocab_file BERT/uncased_L-12_H-768_A-12/vocab.txt --out results_dml-rt

Each epoch: 1,000 triplets from --train, 1,000 from --eval, one line
`[  1] T/loss=... D/loss=... T/sec=... D/sec=... lr=...`, log.json, loss.png, the final model
(the folder's newest checkpoint) and the best by eval loss (`<out>/best`).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python bert_dml/train_dml.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

from bert_dml.flags import common_kwargs, define_training_flags  # noqa: E402
from bert_dml.triplets import MINING_MODES  # noqa: E402

define_training_flags(default_out="results_dml", default_epochs=100)
flags.DEFINE_enum("mining", "random", list(MINING_MODES),
                  "random: the original's sampled negatives; semi_hard: the batch's semi-hard negative; "
                  "batch_all: the mean over all the batch's active triplets.")
flags.DEFINE_integer("triplets_per_epoch", 1000, "Triplets drawn per epoch from --train (and from --eval).")
flags.DEFINE_integer("eval_triplets_per_epoch", None, "Triplets drawn per epoch from --eval (default: as many).")
flags.DEFINE_float("margin", 0.2, "Triplet loss margin (squared Euclidean distances).")
flags.DEFINE_boolean("l2_normalize", False, "Triplet distances between unit-length embeddings (not in the "
                     "original, which uses the raw 512 numbers).")
flags.DEFINE_boolean("eval_knn", True, "Also report kNN-10 accuracy (cosine) of the --eval features each epoch.")
flags.mark_flags_as_required(["train", "eval"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from bert_dml.flags import apply_gpu_flag
    from common.distribute import strategy_from_flags
    from bert_dml.training import train_dml

    apply_gpu_flag(FLAGS.gpu)
    train_dml(FLAGS.train, FLAGS.eval, FLAGS.out, mining=FLAGS.mining,
              triplets_per_epoch=FLAGS.triplets_per_epoch,
              eval_triplets_per_epoch=FLAGS.eval_triplets_per_epoch, margin=FLAGS.margin,
              l2_normalize=FLAGS.l2_normalize, eval_knn=FLAGS.eval_knn,
              strategy=strategy_from_flags(FLAGS), **common_kwargs(FLAGS))


if __name__ == "__main__":
    cli.run(main)
