r"""`sentence.txt` -> labelled plain-text files, as the original's `classify_training_data.py`.

    python -m ovt_explain.classify_training_data --sentences_data_file data/sentence.txt \
        --tv_meta_data_file data/tv_meta_data.csv --training_data_dir data/training_data \
        [--tv_program_name ... --tv_program_subtitle ... --categories viewed_v2,not_viewed_v2]

A user is `viewed` when they watched at least max(1, int(n * 0.333)) of the target's n slots; each
file line is the user's slot ids numerically below the target's smallest one (empty when none).
The defaults are the original's: the programme it hard-codes and the file names viewed_v2.txt /
not_viewed_v2.txt.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python ovt_explain/classify_training_data.py`
    import _run_as_file  # noqa: F401

from absl import flags, logging  # noqa: E402

from common import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    from ovt_explain.logs import DEFAULT_THRESHOLD
    from ovt_explain.original_data import ORIGINAL_CATEGORIES, ORIGINAL_PROGRAM_NAME, ORIGINAL_PROGRAM_SUBTITLE

    flags.DEFINE_string("sentences_data_file", None, "sentence.txt (one user a line of sortids).")
    flags.DEFINE_string("tv_meta_data_file", None, "Programme metadata CSV (番組名, サブタイトル, sortid).")
    flags.DEFINE_string("training_data_dir", None, "Output folder of the labelled files.")
    flags.DEFINE_string("tv_program_name", ORIGINAL_PROGRAM_NAME, "Target programme title (番組名).")
    flags.DEFINE_string("tv_program_subtitle", ORIGINAL_PROGRAM_SUBTITLE, "Its subtitle (サブタイトル); empty: any.")
    flags.DEFINE_list("categories", list(ORIGINAL_CATEGORIES), "File names (without .txt) for viewed, not viewed.")
    flags.DEFINE_float("threshold", DEFAULT_THRESHOLD, "Share of the target's slots; needed = max(1, int(n * it)).")


def main(argv):
    del argv
    from ovt_explain.run_config import require_flags
    from ovt_explain.original_data import classify_sentences, target_sort_ids

    require_flags(FLAGS, "sentences_data_file", "tv_meta_data_file", "training_data_dir")
    if len(FLAGS.categories) != 2:
        raise cli.UserError("--categories needs two names: viewed, not viewed")
    target = target_sort_ids(FLAGS.tv_meta_data_file, FLAGS.tv_program_name, FLAGS.tv_program_subtitle)
    counts = classify_sentences(FLAGS.sentences_data_file, target, FLAGS.training_data_dir, FLAGS.categories,
                                FLAGS.threshold)
    for name, count in counts.items():
        logging.info("%s: %d users%s", name, count, "" if count else " (no file written, as the original)")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
