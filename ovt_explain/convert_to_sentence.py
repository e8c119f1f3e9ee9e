r"""Viewing CSV -> `sentence.txt`, as the original's `convert_to_sentence.py` (streaming, bounded memory).

    python -m ovt_explain.convert_to_sentence --csv_file data/input.csv --sentence_file data/sentence.txt

Input: a header line, then `userid,sortid` rows in any order. Output: one user a line, their sortids
ascending and space-separated, users in order of first appearance.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python ovt_explain/convert_to_sentence.py`
    import _run_as_file  # noqa: F401

from absl import flags, logging  # noqa: E402

from common import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("csv_file", None, "Viewing data: header, then userid,sortid rows.")
    flags.DEFINE_string("sentence_file", None, "Output: one user a line of sortids.")


def main(argv):
    del argv
    from ovt_explain.run_config import require_flags
    from ovt_explain.original_data import convert_to_sentences

    require_flags(FLAGS, "csv_file", "sentence_file")
    result = convert_to_sentences(FLAGS.csv_file, FLAGS.sentence_file)
    logging.info("%d rows, %d users -> %s", result["rows"], result["users"], FLAGS.sentence_file)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
