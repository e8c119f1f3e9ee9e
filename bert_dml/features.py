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
                       vocab_file: str | None = None, pooling: str = POOLED, lowercase: bool = True):
    """-> (features_fn(batch) -> float32 [batch, width], tokenizer, max_seq_length or None)."""
    if kind not in KINDS:
        raise UserError(f"unknown --kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "embed":
        if not (preset or init_checkpoint):
            raise UserError("--kind=embed needs the pre-trained model: --preset, or --init_checkpoint "
                            "with --bert_config_file and --vocab_file")
        setup = load_encoder(preset=preset, init_checkpoint=init_checkpoint, bert_config_file=bert_config_file,
                             vocab_file=vocab_file, lowercase=lowercase)
        encoder, tokenizer, max_length = setup.encoder, setup.tokenizer(), None
    else:
        if not model:
            raise UserError(f"--kind={kind} needs --model: the folder train_{'dml' if kind == 'dml' else 'cls'} wrote "
                            f"(or the original's Chainer final.model with --bert_config_file and --vocab_file)")
        from common import model_source
        loaded = model_source.load(model, bert_config_file=bert_config_file, vocab_file=vocab_file,
                                   heads=("output",) if kind == "dml" else (),
                                   lowercase=None if tf.io.gfile.isdir(model) else lowercase)
        run_config = loaded.run_config or {}
        if loaded.run_config is not None and run_config.get("kind") != kind:
            raise UserError(f"--model {model} was trained as {run_config.get('kind')!r}, not {kind!r}")
        encoder, tokenizer, max_length = loaded.encoder, loaded.tokenizer, run_config.get("max_seq_length")
        if kind == "dml":  # pooled output -> dense 512 (the dropout is off at inference)
            head = loaded.heads["output"]
            return feature_function(lambda features: tf.cast(head(encoder(features, training=False)["pooled_output"]),
                                                             tf.float32)), tokenizer, max_length
    if pooling.upper() == POOLED:
        output = lambda features: tf.cast(encoder(features, training=False)["pooled_output"], tf.float32)  # noqa: E731
    else:
        from common.embeddings import pool
        output = lambda features: pool(encoder(features, training=False), features["input_mask"],  # noqa: E731
                                       strategy=pooling.upper(), layers=(-1,))
    return feature_function(output), tokenizer, max_length


def extract_features(kind: str, input_path: str, batchsize: int = 64, encoding: str = "utf-8",
                     max_seq_length: int | None = None, **model_kwargs) -> tuple[list[str], np.ndarray]:
    """(labels, float32 features) of every non-blank line of `input_path`, in order."""
    texts = dml_data.read_labeled_texts(input_path, encoding=encoding, require_labels=False)
    features_fn, tokenizer, trained_length = load_feature_model(kind, **model_kwargs)
    length = max_seq_length or trained_length or 128
    encoded = dml_data.encode_texts(tokenizer, texts.texts, length)
    return texts.labels, batched_outputs(features_fn, encoded, batchsize).astype(np.float32)
