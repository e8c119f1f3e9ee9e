"""The original's masked-LM data: one line = one example, the first `eval_percentage` % of the lines
are the evaluation set, `[CLS]` + the first `max_seq_length - 2` ids + `[SEP]`, and masks drawn per
batch as Hugging Face's `DataCollatorForLanguageModeling` (15 % of the non-special tokens; of those
80 % `[MASK]`, 10 % a random vocabulary id, 10 % unchanged).

Examples are stored as TFRecords holding each line's unpadded token ids (`input_ids`, int64 list);
padding (with the vocabulary's `[PAD]` id) and masking happen in the `tf.data` pipeline.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

from ovt_explain.logs import CLS, MASK, PAD, SEP, UNK, iter_plain_lines


def eval_line_count(num_lines: int, eval_percentage: float) -> int:
    """Lines in the evaluation split: `datasets`' `train[:p%]` with its default "closest" rounding of
    the integer percentage the original passes (`int(eval_percentage)`)."""
    return int(round(int(eval_percentage) * num_lines / 100.0))


def line_token_ids(ids: Sequence[str], vocab: Mapping[str, int], max_seq_length: int) -> list[int]:
    """`[CLS]` + the first `max_seq_length - 2` ids (unknown ones `[UNK]`) + `[SEP]`, as vocabulary ids."""
    unknown = vocab[UNK]
    return [vocab[CLS]] + [vocab.get(token, unknown) for token in ids[:max(0, max_seq_length - 2)]] + [vocab[SEP]]


def _example(token_ids: Sequence[int]) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=token_ids))})).SerializeToString()


def write_line_examples(lines: Iterable[Sequence[str]], num_lines: int, vocab: Mapping[str, int],
                        max_seq_length: int, output_dir: str, eval_percentage: float) -> dict:
    """Writes `output_dir/{train,eval}.tfrecord` from the lines (each a list of ids, in file order);
    the first `eval_line_count` lines (empty ones included, as the original splits before dropping
    them) are the evaluation set; empty lines are dropped. Returns counts and file paths."""
    import tensorflow as tf

    os.makedirs(output_dir, exist_ok=True)
    eval_count = eval_line_count(num_lines, eval_percentage)
    paths = {"eval": os.path.join(output_dir, "eval.tfrecord"), "train": os.path.join(output_dir, "train.tfrecord")}
    counts = {"eval": 0, "train": 0, "empty_lines": 0, "truncated": 0}
    writers = {name: tf.io.TFRecordWriter(path) for name, path in paths.items()}
    try:
        for index, ids in enumerate(lines):
            if not ids:
                counts["empty_lines"] += 1
                continue
            name = "eval" if index < eval_count else "train"
            counts["truncated"] += len(ids) > max_seq_length - 2
            writers[name].write(_example(line_token_ids(ids, vocab, max_seq_length)))
            counts[name] += 1
    finally:
        for writer in writers.values():
            writer.close()
    return {**counts, "files": paths}


def plain_text_lines(paths: Sequence[str]) -> tuple[Iterable[list[str]], int]:
    """The lines of plain-text files in order (as `datasets`' "text" loader) and their count."""
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 24), b""))
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                total += handle.read(1) != b"\n"

    def generate():
        for path in paths:
            for _, ids in iter_plain_lines(path):
                yield ids
    return generate(), total


MASKINGS = ("tokens", "runs")


def slot_table(vocab: Mapping[str, int]) -> tuple[list[int], list[int]]:
    """Per vocabulary id: the slot's time (the id without its last digit) and channel (the last digit);
    -1 for tokens that are not slot ids ([CLS], [MASK], ...)."""
    times, channels = [-1] * len(vocab), [-1] * len(vocab)
    for token, index in vocab.items():
        if len(token) >= 2 and token.isascii() and token.isdigit():
            times[index], channels[index] = int(token[:-1]), int(token[-1])
    return times, channels


def run_starts(ids, times, channels, slot_seconds: int):
    """int32 `[batch, length]`: for each position, the position where its run starts. A run is a stretch
    of consecutive slots of one channel (each `slot_seconds` after the previous), i.e. one programme
    watched without zapping; every other token is a run of its own."""
    import tensorflow as tf

    time, channel = tf.gather(times, ids), tf.gather(channels, ids)
    continues = ((channel[:, 1:] == channel[:, :-1]) & (channel[:, 1:] >= 0)
                 & (time[:, 1:] - time[:, :-1] == slot_seconds))
    continues = tf.concat([tf.zeros_like(continues[:, :1]), continues], axis=1)
    batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
    positions = tf.broadcast_to(tf.range(length), [batch, length])
    # Run number r of a row -> global segment row * length + r; each segment's smallest position.
    segments = tf.cumsum(tf.cast(~continues, tf.int32), axis=1) - 1 + tf.range(batch)[:, None] * length
    first = tf.math.unsorted_segment_min(tf.reshape(positions, [-1]), tf.reshape(segments, [-1]), batch * length)
    return tf.gather(first, segments)


def mask_tokens(input_ids, special_mask, seed, vocab_size: int, mask_id: int, mlm_probability: float = 0.15,
                starts=None):
    """Hugging Face's `torch_mask_tokens` in TF, stateless: int32 `[batch, length]` ids and bool special
    mask -> (masked input ids, bool `[batch, length]` of the positions to predict). With `starts`
    (`run_starts`), whole runs are chosen: each run with probability `mlm_probability`."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = tf.shape(input_ids)
    draws = tf.random.stateless_uniform(shape, seeds[0])
    if starts is not None:
        draws = tf.gather(draws, starts, batch_dims=1)
    chosen = (draws < mlm_probability) & ~special_mask
    replaced = (tf.random.stateless_uniform(shape, seeds[1]) < 0.8) & chosen
    randomised = (tf.random.stateless_uniform(shape, seeds[2]) < 0.5) & chosen & ~replaced
    random_words = tf.random.stateless_uniform(shape, seeds[3], minval=0, maxval=vocab_size, dtype=tf.int32)
    masked = tf.where(replaced, tf.cast(mask_id, input_ids.dtype), input_ids)
    masked = tf.where(randomised, random_words, masked)
    return masked, chosen


def masked_lm_dataset(path: str, batch_size: int, max_seq_length: int, vocab: Mapping[str, int], seed: int,
                      is_training: bool, mlm_probability: float = 0.15, input_context=None,
                      masking: str = "tokens", slot_seconds: int = 300):
    """Batches of `BertPretrainer` features, masks drawn per batch: input_ids / input_mask / segment_ids
    int32 `[batch, max_seq_length]`, masked_lm_positions = every position, masked_lm_ids = the original
    ids, masked_lm_weights float32 (1 where a token is to be predicted). Training repeats and
    reshuffles; evaluation is one pass with the same masks every time."""
    import tensorflow as tf

    pad_id, mask_id = vocab[PAD], vocab[MASK]
    special = tf.constant(sorted({vocab[CLS], vocab[SEP], pad_id}), tf.int32)
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {', '.join(MASKINGS)}, got {masking!r}")
    if masking == "runs":
        times, channels = (tf.constant(column, tf.int64) for column in slot_table(vocab))
    dataset = tf.data.TFRecordDataset(path)
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    pipeline = input_context.input_pipeline_id if input_context is not None else 0
    if is_training:
        dataset = dataset.shuffle(100_000, seed=seed, reshuffle_each_iteration=True).repeat()

    def parse(record):
        ids = tf.io.parse_single_example(record, {"input_ids": tf.io.VarLenFeature(tf.int64)})["input_ids"]
        return tf.cast(tf.sparse.to_dense(ids), tf.int32)

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    # Padded with -1 first so the mask never depends on which id [PAD] has; then the vocabulary's [PAD].
    dataset = dataset.padded_batch(batch_size, padded_shapes=[max_seq_length], padding_values=-1,
                                   drop_remainder=is_training)

    def collate(step, padded):
        input_mask = tf.cast(padded >= 0, tf.int32)
        ids = tf.where(padded >= 0, padded, pad_id)
        is_special = tf.reduce_any(ids[..., None] == special, axis=-1) | (input_mask == 0)
        starts = run_starts(ids, times, channels, slot_seconds) if masking == "runs" else None
        masked, chosen = mask_tokens(ids, is_special, tf.stack([tf.cast(seed, tf.int64) * 1000 + pipeline, step]),
                                     len(vocab), mask_id, mlm_probability, starts)
        batch = tf.shape(ids)[0]
        return {"input_ids": masked, "input_mask": input_mask, "segment_ids": tf.zeros_like(ids),
                "masked_lm_positions": tf.tile(tf.range(max_seq_length, dtype=tf.int32)[None], [batch, 1]),
                "masked_lm_ids": ids, "masked_lm_weights": tf.cast(chosen, tf.float32)}

    return dataset.enumerate().map(collate, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def count_records(path: str) -> int:
    import tensorflow as tf

    return int(sum(1 for _ in tf.data.TFRecordDataset(path)))

