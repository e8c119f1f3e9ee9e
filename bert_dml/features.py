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
from bert_dml.model import BertDML, batched_outputs, feature_function
from bert_dml.setup_model import load_encoder, read_saved_model
from common.cli import UserError
from common.encoder import BertEncoder

__all__ = ["KINDS", "extract_features", "load_feature_model", "read_features", "write_features"]

KINDS = ("dml", "classified", "embed")
POOLED = "POOLED"  # the encoder's [CLS] -> dense -> tanh output


def _restore(model, path: str) -> None:
    from common.checkpoints import CheckpointMismatchError, restore_checkpoint
    try:
        restore_checkpoint(tf.train.Checkpoint(model=model), path)
    except CheckpointMismatchError as error:
        raise UserError(str(error)) from None


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
            raise UserError(f"--kind={kind} needs --model: the folder train_{'dml' if kind == 'dml' else 'cls'} wrote")
        saved = read_saved_model(model)
        if saved.run_config.get("kind") != kind:
            raise UserError(f"--model {model} was trained as {saved.run_config.get('kind')!r}, not {kind!r}")
        encoder = BertEncoder(saved.config)
        tokenizer, max_length = saved.tokenizer(), saved.run_config.get("max_seq_length")
        if kind == "dml":
            network = BertDML(encoder, output_dim=int(saved.run_config.get("output_dim", 512)))
            _restore(network, saved.checkpoint_path)
            return feature_function(lambda features: network(features, training=False)), tokenizer, max_length
        from common.heads import BertClassifier
        _restore(BertClassifier(encoder, max(len(saved.labels), 1)), saved.checkpoint_path)
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
