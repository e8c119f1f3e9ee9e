"""Feature extraction (`dml`, `classified`, `embed`) and the `label<TAB>f1<TAB>f2...` feature files.

- dml: the 512 numbers of a `train_dml` model (pooled output -> dense 512), as `extruct_bert_metrics.py`.
- classified: the [CLS] pooled output of a `train_cls` model's encoder, as `extruct_bert_classified.py`.
- embed: the pre-trained model with no fine-tuning, as `extruct_bert_embed.py`: its pooled output by
  default, or any `common.embeddings` pooling (`REDUCE_MEAN` is what sentence-transformers use).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_dml import data as dml_data
from bert_dml.feature_files import read_features, write_features  # noqa: F401  (re-exported)
from bert_dml.model import batched_outputs, feature_function, load_encoder
from common.cli import UserError

__all__ = ["KINDS", "extract_features", "load_feature_model", "read_features", "write_features"]

KINDS = ("dml", "classified", "embed")
POOLED = "POOLED"  # the encoder's [CLS] -> dense -> tanh output


def load_feature_model(kind: str, model: str | None = None, preset: str | None = None,
                       init_checkpoint: str | None = None, bert_config_file: str | None = None,
                       vocab_file: str | None = None, pooling: str = POOLED, lowercase: bool = True,
                       tokenize_chinese_chars: bool | None = None):
    """-> (features_fn(batch) -> float32 [batch, width], tokenizer, the model's max_position_embeddings).

    As the original scripts, `init_checkpoint`, `bert_config_file` and `vocab_file` count for every
    kind: with `model`, `bert_config_file` / `vocab_file` replace the folder's own (or describe a Chainer
    final.model), and `init_checkpoint` must exist although the trained weights overwrite all of it.
    `tokenize_chinese_chars` None: the training run's setting (dml, classified), off for embed (the
    original's tokenizer).
    """
    if kind not in KINDS:
        raise UserError(f"unknown --kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "embed":
        if not (preset or init_checkpoint):
            raise UserError("--kind=embed needs the pre-trained model: --preset, or --init_checkpoint "
                            "with --bert_config_file and --vocab_file")
        setup = load_encoder(preset=preset, init_checkpoint=init_checkpoint, bert_config_file=bert_config_file,
                             vocab_file=vocab_file, lowercase=lowercase)
        encoder, config = setup.encoder, setup.config
        tokenizer = setup.tokenizer().replace(tokenize_chinese_chars=bool(tokenize_chinese_chars))
    else:
        if not model:
            raise UserError(f"--kind={kind} needs --model: the folder train_{'dml' if kind == 'dml' else 'cls'} wrote "
                            f"(or the original's Chainer final.model with --bert_config_file and --vocab_file)")
        if init_checkpoint and not tf.io.gfile.exists(init_checkpoint):
            raise UserError(f"--init_checkpoint {init_checkpoint}: no such file")
        from common import model_source
        # The original loads --init_checkpoint and then --model over all of it: the trained weights decide.
        loaded = model_source.load(model, bert_config_file=bert_config_file, vocab_file=vocab_file,
                                   heads=("output",) if kind == "dml" else (),
                                   lowercase=None if tf.io.gfile.isdir(model) else lowercase)
        run_config = loaded.run_config or {}
        if loaded.run_config is not None and run_config.get("kind") != kind:
            raise UserError(f"--model {model} was trained as {run_config.get('kind')!r}, not {kind!r}")
        encoder, config, tokenizer = loaded.encoder, loaded.config, loaded.tokenizer
        if tokenize_chinese_chars is None:
            # Our folders say how they were trained (before the switch: split, Google's); a Chainer
            # final.model was trained with the original's tokenizer (not split).
            tokenize_chinese_chars = run_config.get("tokenize_chinese_chars", loaded.run_config is not None)
        tokenizer = tokenizer.replace(tokenize_chinese_chars=tokenize_chinese_chars)
        if kind == "dml":  # pooled output -> dense 512 (the dropout is off at inference)
            head = loaded.heads["output"]
            return feature_function(lambda features: tf.cast(head(encoder(features, training=False)["pooled_output"]),
                                                             tf.float32)), tokenizer, config.max_position_embeddings
    if pooling.upper() == POOLED:
        output = lambda features: tf.cast(encoder(features, training=False)["pooled_output"], tf.float32)  # noqa: E731
    else:
        from common.embeddings import pool
        output = lambda features: pool(encoder(features, training=False), features["input_mask"],  # noqa: E731
                                       strategy=pooling.upper(), layers=(-1,))
    return feature_function(output), tokenizer, config.max_position_embeddings


def extract_features(kind: str, input_path: str, batchsize: int = 64, encoding: str = "utf-8",
                     max_seq_length: int | None = None, max_lines: int | None = None,
                     **model_kwargs) -> tuple[list[str], np.ndarray]:
    """(labels, float32 features) of every non-blank line of `input_path`, in order.

    As the original's extraction: `[CLS] text` (no trailing `[SEP]`), truncated at the model's
    max_position_embeddings unless `max_seq_length` says otherwise; `max_lines` (the original's
    `--max_length`) reads only the file's first lines.
    """
    texts = dml_data.read_labeled_texts(input_path, encoding=encoding, require_labels=False,
                                        max_lines=max_lines)
    features_fn, tokenizer, max_positions = load_feature_model(kind, **model_kwargs)
    encoded = dml_data.encode_texts(tokenizer, texts.texts, max_seq_length or max_positions, trailing_sep=False)
    return texts.labels, batched_outputs(features_fn, encoded, batchsize).astype(np.float32)
