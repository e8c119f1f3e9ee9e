r"""Extract features, one `label<TAB>f1<TAB>f2...` line (six decimals) per input line, to stdout.

    python -m bert_dml.extract_features --kind dml --input 04-test.txt --model results_dml-rt > rt-dml-04-test.txt
    python -m bert_dml.extract_features --kind classified --input 04-test.txt --model results_cls-rt/best
    python -m bert_dml.extract_features --kind embed --input 04-test.txt --preset <bert folder> [--pooling REDUCE_MEAN]

`--model` is a training folder (its final model) or its `best/` folder. The original scripts'
names work too: `bert_dml/extruct_bert_metrics.py` (dml), `extruct_bert_classified.py`,
`extruct_bert_embed.py`, with their flags (`--model --label --input --max_length -b/--batchsize
-g/--gpu --init_checkpoint --bert_config_file --vocab_file`). As the original, each text is fed as
`[CLS] text` (no `[SEP]`), truncated at the model's 512 positions (`--max_seq_length` to cut sooner).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file, `python bert_dml/extract_features.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

from bert_dml.flags import apply_gpu_flag, define_gpu_flag  # noqa: E402

flags.DEFINE_enum("kind", None, ["dml", "classified", "embed"], "Which features.")
flags.DEFINE_string("input", None, "label<TAB>text lines (a line without a tab is an unlabeled text).")
flags.DEFINE_string("model", None, "dml/classified: the folder train_dml/train_cls wrote, or its best/ folder.")
flags.DEFINE_string("label", None, "The training run's labels: our labels.json or the original's labels.bin; "
                    "its label ids come first, as the original (printed with the input's count).")
flags.DEFINE_integer("batchsize", 64, "Sentences per batch.", short_name="b")
define_gpu_flag()
flags.DEFINE_string("preset", None, "embed: a keras-hub / Hugging Face / Google BERT folder.")
flags.DEFINE_string("init_checkpoint", None, "Google checkpoint or bert-chainer npz: embed's weights; with "
                    "--model loaded first, the trained weights over it (as the original).")
flags.DEFINE_string("bert_config_file", None, "bert_config.json (with --model: replaces the folder's).")
flags.DEFINE_string("vocab_file", None, "vocab.txt (with --model: replaces the folder's).")
flags.DEFINE_string("pooling", "POOLED", "embed/classified: POOLED ([CLS] dense+tanh, the original) or a "
                    "common.embeddings pooling (REDUCE_MEAN, REDUCE_MAX, REDUCE_MEAN_MAX, CLS_TOKEN, SEP_TOKEN).")
flags.DEFINE_boolean("do_lower_case", True, "embed with --init_checkpoint: lower-case the text.")
flags.DEFINE_integer("max_length", None, "The original's flag: read only the first N lines of --input.")
flags.DEFINE_integer("max_seq_length", None, "Truncate inputs at this many tokens ([CLS] included; "
                     "default: the model's max_position_embeddings, as the original).")
flags.DEFINE_boolean("tokenize_chinese_chars", None, "Split CJK ideographs (Google); default: as the model "
                     "was trained (dml/classified), off for embed (the original's tokenizer).")
flags.DEFINE_string("encoding", "utf-8", "Encoding of --input.")
flags.DEFINE_string("output", None, "Write here (atomically) instead of standard output.", short_name="o")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from bert_dml.data import read_label_file
    from bert_dml.features import extract_features, write_features
    from common.io_utils import atomic_output

    if FLAGS.kind is None:
        raise cli.UserError("--kind is required: dml, classified or embed")
    if not FLAGS.input:
        raise cli.UserError("--input is required")
    apply_gpu_flag(FLAGS.gpu)
    known = read_label_file(FLAGS.label) if FLAGS.label else []
    labels, features = extract_features(
        FLAGS.kind, FLAGS.input, batchsize=FLAGS.batchsize, encoding=FLAGS.encoding,
        max_seq_length=FLAGS.max_seq_length, max_lines=FLAGS.max_length, model=FLAGS.model, preset=FLAGS.preset,
        init_checkpoint=FLAGS.init_checkpoint, bert_config_file=FLAGS.bert_config_file,
        vocab_file=FLAGS.vocab_file, pooling=FLAGS.pooling, lowercase=FLAGS.do_lower_case,
        tokenize_chinese_chars=FLAGS.tokenize_chinese_chars)
    # The original's log line: --label's ids first, the input's new labels after them.
    label2id = {label: index for index, label in enumerate(dict.fromkeys(known + [x for x in labels if x]))}
    print(f"# source: {len(labels)}, class: {len(label2id)}, {label2id}", file=sys.stderr)
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
