"""Danmaku corpus -> pre-training TFRecords: what `python -m danmaku.create_pretraining_data` runs."""

from __future__ import annotations

import itertools

from absl import logging

from common import io_utils
from common.cli import UserError
from common.tokenization import BertTokenizer, VocabError, compute_char_vocabulary, compute_wordpiece_vocabulary
from danmaku.corpus import DanmakuCorpus
from danmaku.files import output_prefix_of


def output_files_of(output_file: str, num_shards: int = 1) -> list[str]:
    """Google's `--output_file`: one file, or a comma-separated list of files the instances are dealt to in turn;
    with `--num_shards=N > 1` (ours) and one name, `<stem>-0000i-of-0000N.tfrecord`."""
    from common.pretraining_data import output_paths

    names = [name.strip() for name in output_file.split(",") if name.strip()]
    if not names:
        raise UserError("--output_file is empty")
    if len(names) > 1 or num_shards == 1:
        if len(names) > 1 and num_shards not in (1, len(names)):
            raise UserError(f"--output_file lists {len(names)} files but --num_shards={num_shards}")
        try:
            return output_paths(names)
        except ValueError as error:
            raise UserError(f"--output_file: {error}") from None
    return output_paths(output_prefix_of(names[0]), num_shards)


def build_vocabulary(input_files, input_format: str, vocab_size: int, vocab_type: str, lowercase: bool,
                     output_path: str) -> list[str]:
    """A vocabulary of the corpus' comments, written to `output_path` (which must not exist yet)."""
    if io_utils.exists(output_path):
        raise UserError(f"{output_path}: already exists; give --vocab_file without --build_vocab "
                        "to use it, or another path to build a new one")
    comments = DanmakuCorpus(input_files, input_format).comments()
    try:
        if vocab_type == "char":
            return compute_char_vocabulary(lines=comments, vocab_size=vocab_size, lowercase=lowercase,
                                           output_path=output_path)
        return compute_wordpiece_vocabulary(vocab_size, lines=comments, lowercase=lowercase,
                                            output_path=output_path)
    except ValueError as error:
        raise UserError(f"--build_vocab={vocab_size}: {error}") from None


def create_pretraining_data(input_files, output_file: str, vocab_file: str | None = None, *,
                            do_lower_case: bool = True, input_format: str = "txt",
                            drop_oov_comments: bool = False, build_vocab: int = 0,
                            vocab_type: str = "char", num_shards: int = 1, num_workers: int | None = None,
                            progress: bool = True, **instance_kwargs) -> dict:
    """Danmaku files -> sharded pre-training TFRecords; returns the statistics.

    `instance_kwargs` go to `common.pretraining_data.create_training_instances` (max_seq_length,
    max_predictions_per_seq, masked_lm_prob, dupe_factor, short_seq_prob, random_seed,
    do_whole_word_mask). The corpus is read once, in this process (workers tokenize blocks of documents
    into a memory-mapped token store, then make the instances); on a malformed line the files are
    discarded, so the output is whole or absent. A vocabulary built here is removed again if the run
    fails. Any path may be a `tf.io.gfile` one (gs://, ram://).
    """
    from common.pretraining_data import InstanceSettings, write_pretraining_data

    try:  # bad flag values fail here, in one line, before a vocabulary or shard is written
        InstanceSettings(**instance_kwargs)
    except ValueError as error:
        raise UserError(str(error)) from None
    if num_shards < 1 or (num_workers is not None and num_workers < 1):
        raise UserError(f"--num_shards ({num_shards}) and --num_workers ({num_workers}) must be at least 1")
    output_files = output_files_of(output_file, num_shards)
    built_vocab = None
    if build_vocab:
        vocab_file = vocab_file or io_utils.join(io_utils.dirname(output_files[0]), "vocab.txt")
        vocab = build_vocabulary(input_files, input_format, build_vocab, vocab_type, do_lower_case, vocab_file)
        built_vocab = vocab_file
        logging.info("built a %d-token %s vocabulary: %s", len(vocab), vocab_type, vocab_file)
    elif not vocab_file:
        raise UserError("give --vocab_file (e.g. chinese_L-12_H-768_A-12/vocab.txt) or --build_vocab=N")
    elif not io_utils.isfile(vocab_file):
        raise UserError(f"{vocab_file}: no such --vocab_file (add --build_vocab=N to build one there)")
    try:
        try:
            tokenizer = BertTokenizer.from_vocab_file(vocab_file, lowercase=do_lower_case)
        except VocabError as error:
            raise UserError(str(error)) from None
        # Without --drop_oov_comments the corpus needs no tokenizer: the workers tokenize each comment once
        # (dropping comments without tokens, as Google) and count the empty ones and those with [UNK].
        corpus = DanmakuCorpus(input_files, input_format, tokenize=tokenizer.tokenize if drop_oov_comments else None,
                               drop_oov_comments=drop_oov_comments)
        documents_found = sum(1 for _ in itertools.islice(iter(corpus), 2))  # stops after two
        if documents_found < 2:
            # Random-next segments come from another document (one video: a blank-line block or a CSV file).
            raise UserError(f"{', '.join(corpus.files)}: {documents_found} document(s) with comments; "
                            "next-sentence instances need at least 2")
        try:
            write_stats = write_pretraining_data(corpus, output_files, vocab_file, tokenize=tokenizer.tokenize,
                                                 num_workers=num_workers, progress=progress, **instance_kwargs)
        except ValueError as error:
            if "non-empty documents" not in str(error):
                raise
            raise UserError(f"{', '.join(corpus.files)}: {error}") from None
    except BaseException:
        if built_vocab:
            io_utils.remove(built_vocab, missing_ok=True)
        raise
    # The corpus was iterated in this process, so its counts describe the pass that was written; the workers
    # counted what only tokenizing tells.
    stats = corpus.stats.as_dict()
    if not drop_oov_comments:
        stats.update(comments=write_stats["sentences"], oov_comments_kept=write_stats["unk_sentences"],
                     empty_lines_skipped=write_stats["empty_sentences"])
    logging.info("corpus: %s", stats)
    return {**stats, **write_stats, "vocab_file": vocab_file}
