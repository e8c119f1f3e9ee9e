"""What pre-training, fine-tuning and the visualisation share: programme ids -> features, the classifier
built from a model folder, batched prediction with attention."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from common.checkpoints import CheckpointMismatchError, read_model_folder, restore_checkpoint
from common.config import BertConfig
from common.encoder import BertEncoder
from common.heads import BertClassifier
from common.tokenization import load_vocab
from ovt_explain.logs import CLS, LABELS, PAD, SEP, UNK

TRUNCATIONS = ("first", "recent")


def special_ids(vocab: Mapping[str, int]) -> dict[str, int]:
    """The special tokens' ids as the vocabulary has them (the original's: [UNK] 0 ... [PAD] 3)."""
    missing = [token for token in (UNK, CLS, SEP, PAD) if token not in vocab]
    if missing:
        raise ValueError(f"the vocabulary has no {', '.join(missing)} token")
    return {token: vocab[token] for token in (UNK, CLS, SEP, PAD, "[MASK]") if token in vocab}


def model_input_tokens(history: Sequence[str], vocab: Mapping[str, int], max_seq_length: int,
                       truncation: str = "first") -> list[str]:
    """`[CLS]` + `max_seq_length - 2` programmes (rare ones as [UNK]) + `[SEP]`: the first ones, as the
    original's tokenizer truncates, or with `truncation="recent"` the most recent ones."""
    keep = max(0, max_seq_length - 2)
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    kept = list(history)[:keep] if truncation == "first" else (list(history)[-keep:] if keep else [])
    return [CLS] + [program if program in vocab else UNK for program in kept] + [SEP]


def encode_histories(histories: Sequence[Sequence[str]], vocab: Mapping[str, int],
                     max_seq_length: int, truncation: str = "first") -> dict[str, np.ndarray]:
    """Programme ids map straight to vocabulary ids (the original's BertTokenizer gives the same: a whole
    id is one vocabulary word, an unknown one [UNK]); padding uses the vocabulary's [PAD] id.
    Returns int32 `[n, max_seq_length]` input_ids, input_mask, segment_ids."""
    count = len(histories)
    input_ids = np.full((count, max_seq_length), special_ids(vocab)[PAD], np.int32)
    input_mask = np.zeros((count, max_seq_length), np.int32)
    for row, history in enumerate(histories):
        ids = [vocab[token] for token in model_input_tokens(history, vocab, max_seq_length, truncation)]
        input_ids[row, :len(ids)] = ids
        input_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": np.zeros_like(input_ids)}


def classifier_from_config(config: BertConfig) -> BertClassifier:
    return BertClassifier(BertEncoder(config), num_labels=len(LABELS))


def _mismatch_summary(message: str) -> str:
    """Each problem group of a CheckpointMismatchError with its first item, for one error line."""
    lines = [line.strip() for line in message.splitlines()[1:]]
    groups = [f"{line} {lines[i + 1]}" for i, line in enumerate(lines[:-1]) if line.endswith("):")]
    return "; ".join(groups) or (lines[0] if lines else message)


class LoadedClassifier:
    """A fine-tuned viewed/not_viewed classifier read from a `bert_cls` output folder (or checkpoint)."""

    def __init__(self, checkpoint: str):
        folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint) or "."
        if not os.path.isdir(checkpoint) and not tf.io.gfile.glob(checkpoint + ".index"):
            raise FileNotFoundError(f"{checkpoint}: neither a bert_cls output folder nor a checkpoint prefix")
        model_folder = read_model_folder(folder)
        path = checkpoint if not os.path.isdir(checkpoint) else model_folder.checkpoint_path
        best = os.path.join(folder, "best")
        if os.path.isdir(checkpoint) and (model_folder.run_config or {}).get("use_best") and \
                tf.train.latest_checkpoint(best):
            path = tf.train.latest_checkpoint(best)
        if path is None:
            raise FileNotFoundError(f"{checkpoint}: no checkpoint in this model folder")
        if model_folder.vocab_path is None:
            raise FileNotFoundError(f"{folder}: no vocab.txt in this model folder")
        self.config = model_folder.config
        self.vocab = load_vocab(model_folder.vocab_path)
        self.inverse_vocab = {index: token for token, index in self.vocab.items()}
        self.labels = model_folder.labels or list(LABELS)
        self.max_seq_length = int((model_folder.run_config or {}).get("max_seq_length",
                                                                      self.config.max_position_embeddings))
        self.truncation = (model_folder.run_config or {}).get("truncation", "first")
        self.model = classifier_from_config(self.config)
        # Every model variable must come from the checkpoint; the optimizer and step are left out.
        try:
            restore_checkpoint(tf.train.Checkpoint(model=self.model), path)
        except CheckpointMismatchError as error:
            raise CheckpointMismatchError(f"{checkpoint}: not a viewed/not_viewed classifier written by "
                                          f"bert_cls ({_mismatch_summary(str(error))})") from None
        self.checkpoint_path = path

    def encode(self, histories: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        return encode_histories(histories, self.vocab, self.max_seq_length, self.truncation)

    def input_tokens(self, history: Sequence[str]) -> list[str]:
        return model_input_tokens(history, self.vocab, self.max_seq_length, self.truncation)


def _forward_function(model, return_attention: bool):
    """One traced forward pass per model and mode (evaluation calls predict repeatedly)."""
    attribute = f"_ovt_forward_{int(return_attention)}"
    if not hasattr(model, attribute):
        @tf.function(reduce_retracing=True)
        def forward(batch):
            outputs = model(batch, training=False, return_attention=return_attention)
            if return_attention:
                return tf.nn.softmax(tf.cast(outputs["logits"], tf.float32)), [
                    tf.cast(layer, tf.float32) for layer in outputs["attention_probs"]]
            return tf.nn.softmax(tf.cast(outputs, tf.float32)), []
        object.__setattr__(model, attribute, forward)
    return getattr(model, attribute)


def predict(model, features: Mapping[str, np.ndarray], batch_size: int = 64,
            return_attention: bool = False):
    """Class probabilities `[n, num_labels]` (float64) and, with `return_attention`, each example's
    attention: a list (one per example) of float32 `[layers, heads, length, length]`, padding cropped."""
    forward = _forward_function(model, return_attention)
    count = len(features["input_ids"])
    probabilities, attentions = [], []
    for start in range(0, count, batch_size):
        batch = {name: tf.constant(values[start:start + batch_size]) for name, values in features.items()
                 if name in ("input_ids", "input_mask", "segment_ids")}
        probs, layers = forward(batch)
        probabilities.append(probs.numpy().astype(np.float64))
        if return_attention:
            stacked = np.stack([layer.numpy() for layer in layers], axis=1)  # [batch, layers, heads, q, k]
            lengths = batch["input_mask"].numpy().sum(axis=1)
            attentions.extend(stacked[row, :, :, :length, :length] for row, length in enumerate(lengths))
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, 2))
    return (probabilities, attentions) if return_attention else probabilities
