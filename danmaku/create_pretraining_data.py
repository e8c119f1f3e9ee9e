r"""Masked-LM + next-sentence pre-training TFRecords from danmaku, with Google BERT's command line.

    python -m danmaku.create_pretraining_data --input_file='comments/*.txt' \
        --output_file=data/danmaku.tfrecord --vocab_file=chinese_L-12_H-768_A-12/vocab.txt \
        --do_lower_case --max_seq_length=128 --max_predictions_per_seq=20 --masked_lm_prob=0.15 \
        --dupe_factor=10 --short_seq_prob=0.1 --random_seed=12345 [--num_shards=8] [--drop_oov_comments]

A document is one video or live stream (blank-line separated in text files, one CSV file each with
`--input_format=csv`); its comments are the "sentences" of Google's algorithm
(`common.pretraining_data`). Output: `--output_file` as Google writes it (one file, or a comma-separated list the
instances are dealt to in turn), or with `--num_shards=N` `<output_file without .tfrecord>-0000i-of-0000N.tfrecord`.
Paths may be gs:// (or any `tf.io.gfile` filesystem).
Without a vocabulary, `--build_vocab=N` computes an N-token character (or WordPiece) vocabulary from
the corpus and writes it to `--vocab_file` (default: `vocab.txt` beside the output).
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python danmaku/create_pretraining_data.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import json  # noqa: E402

from absl import flags  # noqa: E402

from common.cli import UserError  # noqa: E402
from danmaku.corpus import INPUT_FORMATS  # noqa: E402
from danmaku.data import create_pretraining_data  # noqa: E402

FLAGS = flags.FLAGS

# Google's flags, same names, meanings and defaults.
flags.DEFINE_string("input_file", None, "Input danmaku file(s): comma-separated files or globs.")
flags.DEFINE_string("output_file", None, "Output TFRecord file(s), comma-separated (with --num_shards=N: shards "
                    "named <stem>-0000i-of-0000N.tfrecord).")
flags.DEFINE_string("vocab_file", None, "The vocabulary the BERT model was trained on (or where --build_vocab writes).")
flags.DEFINE_bool("do_lower_case", True, "Lower-case the input text (Google's Chinese model: True).")
flags.DEFINE_bool("do_whole_word_mask", False, "Mask whole words (all ## pieces of a word together).")
flags.DEFINE_integer("max_seq_length", 128, "Maximum sequence length.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Maximum number of masked LM predictions per sequence.")
flags.DEFINE_integer("random_seed", 12345, "Random seed for data generation.")
flags.DEFINE_integer("dupe_factor", 10, "Number of times to duplicate the input data (with different masks).")
flags.DEFINE_float("masked_lm_prob", 0.15, "Masked LM probability.")
flags.DEFINE_float("short_seq_prob", 0.1, "Probability of creating sequences shorter than the maximum length.")
# Ours.
flags.DEFINE_integer("num_shards", 1, "Number of output TFRecord shards for a single --output_file name.")
flags.DEFINE_integer("num_workers", None, "Worker processes writing shards (default: all cores).")
flags.DEFINE_enum("input_format", "txt", list(INPUT_FORMATS),
                  "txt: one comment a line, blank lines between documents; "
                  "csv: text,video_seconds,YYYY-MM-DD HH:MM:SS lines, one document a file.")
flags.DEFINE_bool("drop_oov_comments", False,
                  "Drop comments holding characters the vocabulary lacks (e.g. emoji) instead of "
                  "keeping them as [UNK].")
flags.DEFINE_integer("build_vocab", 0, "Build an N-token vocabulary from the corpus (0: use --vocab_file).")
flags.DEFINE_enum("vocab_type", "char", ["char", "wordpiece"],
                  "Vocabulary --build_vocab computes: one token per character/word, or WordPiece.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    del argv
    for name in ("input_file", "output_file"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    stats = create_pretraining_data(
        FLAGS.input_file, FLAGS.output_file, FLAGS.vocab_file, do_lower_case=FLAGS.do_lower_case,
        input_format=FLAGS.input_format, drop_oov_comments=FLAGS.drop_oov_comments,
        build_vocab=FLAGS.build_vocab, vocab_type=FLAGS.vocab_type, num_shards=FLAGS.num_shards,
        num_workers=FLAGS.num_workers, progress=FLAGS.progress, max_seq_length=FLAGS.max_seq_length,
        max_predictions_per_seq=FLAGS.max_predictions_per_seq, masked_lm_prob=FLAGS.masked_lm_prob,
        dupe_factor=FLAGS.dupe_factor, short_seq_prob=FLAGS.short_seq_prob, random_seed=FLAGS.random_seed,
        do_whole_word_mask=FLAGS.do_whole_word_mask)
    dropped = (f", dropped {stats['dropped_oov_comments']} out-of-vocabulary comments"
               if FLAGS.drop_oov_comments else f", kept {stats['oov_comments_kept']} comments with [UNK]")
    print(f"documents {stats['documents']}, comments {stats['comments']}{dropped}, "
          f"instances {stats['instances']}, masked tokens {stats['masked_tokens']}, "
          f"masked [UNK] share {stats['masked_unk_share']:.4%}")
    for path in stats.get("files", []):
        print(f"wrote {path}")
    print(json.dumps({key: value for key, value in stats.items() if key != "files"}, ensure_ascii=False))


if __name__ == "__main__":
    cli.run(main)
