r"""The classification fine-tuning baseline of BERT-DML: softmax over the labels, the best models by UAR and loss.

    python -m bert_dml.train_cls --train 04-train.txt --eval 04-test.txt --preset <bert folder> --out results_cls

Same data and flags as `bert_dml.train_dml`. As the original's train_bert.py: 50 epochs, each
evaluated; the model with the best unweighted average recall (UAR: mean recall over the labels in
--eval) is kept in `<out>/best` (`--kind classified` features come from it), the one with the best
eval loss in `<out>/best_loss`. `--patience` turns early stopping on.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python bert_dml/train_cls.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

from bert_dml.flags import common_kwargs, define_training_flags  # noqa: E402

define_training_flags(default_out="results_cls", default_epochs=50)
flags.DEFINE_integer("patience", 0, "Stop after this many epochs without a better eval UAR (0: never, the "
                     "original).")
flags.DEFINE_integer("max_train_examples", None, "Use at most this many training lines per epoch.")
flags.mark_flags_as_required(["train", "eval"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from bert_dml.flags import apply_gpu_flag
    from common.distribute import strategy_from_flags
    from bert_dml.training import train_classifier

    apply_gpu_flag(FLAGS.gpu)
    train_classifier(FLAGS.train, FLAGS.eval, FLAGS.out, patience=FLAGS.patience or None,
                     max_train_examples=FLAGS.max_train_examples, strategy=strategy_from_flags(FLAGS),
                     **common_kwargs(FLAGS))


if __name__ == "__main__":
    cli.run(main)
