r"""Extract features, one `label<TAB>f1<TAB>f2...` line (six decimals) per input line, to stdout.

    python -m bert_dml.extract_features --kind dml --input 04-test.txt --model results_dml-rt > rt-dml-04-test.txt
    python -m bert_dml.extract_features --kind classified --input 04-test.txt --model results_cls-rt/best
    python -m bert_dml.extract_features --kind embed --input 04-test.txt --preset <bert folder> [--pooling REDUCE_MEAN]

`--model` is a training folder (its final model) or its `best/` folder. The original scripts'
names work too: `bert_dml/extruct_bert_metrics.py` (dml), `extruct_bert_classified.py`,
`extruct_bert_embed.py`, with their flags `--model --label --batchsize --gpu`.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file, `python bert_dml/extract_features.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

flags.DEFINE_enum("kind", None, ["dml", "classified", "embed"], "Which features.")
flags.DEFINE_string("input", None, "label<TAB>text lines (a line without a tab is an unlabeled text).")
flags.DEFINE_string("model", None, "dml/classified: the folder train_dml/train_cls wrote, or its best/ folder.")
flags.DEFINE_string("label", None, "The original's labels.bin; accepted and ignored (labels come from --input).")
flags.DEFINE_integer("batchsize", 64, "Sentences per batch.")
flags.DEFINE_integer("gpu", -1, "-1: CPU only (as the original); otherwise the visible devices are used.")
flags.DEFINE_string("preset", None, "embed: a keras-hub / Hugging Face / Google BERT folder.")
flags.DEFINE_string("init_checkpoint", None, "embed: Google checkpoint or bert-chainer npz.")
flags.DEFINE_string("bert_config_file", None, "embed: with --init_checkpoint.")
flags.DEFINE_string("vocab_file", None, "embed: with --init_checkpoint.")
flags.DEFINE_string("pooling", "POOLED", "embed/classified: POOLED ([CLS] dense+tanh, the original) or a "
                    "common.embeddings pooling (REDUCE_MEAN, REDUCE_MAX, REDUCE_MEAN_MAX, CLS_TOKEN, SEP_TOKEN).")
flags.DEFINE_boolean("do_lower_case", True, "embed with --init_checkpoint: lower-case the text.")
flags.DEFINE_integer("max_seq_length", None, "Longest input (default: the training run's, or 128).")
flags.DEFINE_string("encoding", "utf-8", "Encoding of --input.")
flags.DEFINE_string("output", None, "Write here (atomically) instead of standard output.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from bert_dml.features import extract_features, write_features
    from common.io_utils import atomic_output

    if FLAGS.kind is None:
        raise cli.UserError("--kind is required: dml, classified or embed")
    if not FLAGS.input:
        raise cli.UserError("--input is required")
    if FLAGS.gpu < 0:
        tf.config.set_visible_devices([], "GPU")
    if FLAGS.label and not os.path.exists(FLAGS.label):
        raise cli.UserError(f"--label {FLAGS.label}: no such file")
    labels, features = extract_features(
        FLAGS.kind, FLAGS.input, batchsize=FLAGS.batchsize, encoding=FLAGS.encoding,
        max_seq_length=FLAGS.max_seq_length, model=FLAGS.model, preset=FLAGS.preset,
        init_checkpoint=FLAGS.init_checkpoint, bert_config_file=FLAGS.bert_config_file,
        vocab_file=FLAGS.vocab_file, pooling=FLAGS.pooling, lowercase=FLAGS.do_lower_case)
    if FLAGS.output:
        with atomic_output(FLAGS.output) as handle:
            write_features(handle, labels, features)
    else:
        write_features(sys.stdout, labels, features)
        sys.stdout.flush()


def run_as(kind: str) -> None:
    """Entry of the original script names: `--kind` defaults to theirs."""
    FLAGS.set_default("kind", kind)
    cli.run(main)


if __name__ == "__main__":
    cli.run(main)
