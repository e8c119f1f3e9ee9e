r"""Programme metadata -> `vocab.txt`, as the original's `generate_vocab.py`.

    python -m ovt_explain.generate_vocab --meta_data_file data/tv_meta_data.csv --output_dir data/ \
        [--start_date 2021/08/01 --end_date 2021/08/08]

Writes `[UNK] [CLS] [SEP] [PAD] [MASK]` (so `[PAD]` is id 3) then every sortid whose broadcast start
date (the 4th column) lies in [start_date, end_date), ascending.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as a file, `python ovt_explain/generate_vocab.py`
    import _run_as_file  # noqa: F401

from absl import flags, logging  # noqa: E402

from common import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    from ovt_explain.original_data import VOCAB_END_DATE, VOCAB_START_DATE

    flags.DEFINE_string("meta_data_file", None, "Programme metadata CSV (番組名, サブタイトル, sortid, date 4th).")
    flags.DEFINE_string("output_dir", None, "Folder for vocab.txt.")
    flags.DEFINE_string("start_date", VOCAB_START_DATE, "First broadcast date included (compared as text).")
    flags.DEFINE_string("end_date", VOCAB_END_DATE, "First broadcast date excluded.")


def main(argv):
    del argv
    from ovt_explain.run_config import require_flags
    from ovt_explain.original_data import save_vocab

    require_flags(FLAGS, "meta_data_file", "output_dir")
    path = save_vocab(FLAGS.meta_data_file, FLAGS.output_dir, FLAGS.start_date, FLAGS.end_date)
    logging.info("wrote %s", path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
