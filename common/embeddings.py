"""Sentence and token embeddings from the BERT encoder: pooling, batched encoding, SavedModel export.

Pooling follows `bert-as-service` (hanxiao/bert-as-service, `graph.py` and its `-pooling_layer`,
`-pooling_strategy`, `-mask_cls_sep` flags):

- `layers` index `hidden_states` as the encoder returns them (`hidden_states[0]` is the embedding
  output, `hidden_states[i]` block i's output), so the negative indices mean what they mean in
  bert-as-service's `all_encoder_layers`: -1 the last block, -2 (its default) the one before.
  Several layers are concatenated along the width.
- `REDUCE_MEAN` / `REDUCE_MAX` / `REDUCE_MEAN_MAX` (mean then max, concatenated) over real tokens
  only; padding never enters. `CLS_TOKEN` is position 0, `SEP_TOKEN` the last real token's vector.
  `NONE` returns every position, padding zeroed.
- `mask_cls_sep` drops [CLS] and [SEP] from the reductions and zeroes them for `NONE`; the
  `CLS_TOKEN`/`SEP_TOKEN` strategies keep their token, as bert-as-service documents.
  `SentenceEncoder(mask_cls_sep_in_attention=True)` also zeroes their input mask, so attention hides
  them too, as bert-as-service's code does (it builds the input mask with 0 at [CLS]/[SEP]).
- `SentenceEncoder(layer_indexing="encoder_blocks")` counts non-negative layers as bert-as-service's
  `all_encoder_layers` (0 = the first block's output); the default indexes `hidden_states` (0 = embeddings).

`SentenceEncoder.from_folder` also reads a sentence-transformers folder's own settings
(`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`), so the all-MiniLM-L6-v2
folder gives the vectors sentence-transformers computes: mean of the last layer, L2-normalised.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np
import tensorflow as tf

from common.io_utils import read_json

POOLING_STRATEGIES = ("REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "SEP_TOKEN", "NONE")
# bert-as-service accepts these two aliases of CLS_TOKEN / SEP_TOKEN.
_ALIASES = {"FIRST_TOKEN": "CLS_TOKEN", "LAST_TOKEN": "SEP_TOKEN"}


def check_strategy(strategy: str) -> str:
    """The canonical strategy name, or a ValueError listing the valid ones."""
    name = str(strategy).upper()
    name = _ALIASES.get(name, name)
    if name not in POOLING_STRATEGIES:
        raise ValueError(f"unknown pooling strategy {strategy!r}; expected one of {', '.join(POOLING_STRATEGIES)}")
    return name


def _as_layer_list(layers) -> list[int]:
    if isinstance(layers, (int, np.integer)):
        return [int(layers)]
    layers = [int(layer) for layer in layers]
    if not layers:
        raise ValueError("layers must name at least one hidden state")
    return layers


def absolute_layers(layers, num_hidden_states: int) -> list[int]:
    """Negative or positive indices into `hidden_states` -> indices in 0..num_hidden_states-1."""
    resolved = []
    for layer in _as_layer_list(layers):
        index = layer + num_hidden_states if layer < 0 else layer
        if not 0 <= index < num_hidden_states:
            raise ValueError(f"pooling layer {layer} is outside the encoder's {num_hidden_states} hidden states "
                             f"(-1 = last block, -{num_hidden_states} = embedding output)")
        resolved.append(index)
    return resolved


def _cls_sep_positions(input_mask, segment_ids=None):
    """1.0 where [CLS] (position 0), the final [SEP] and, given segments, the [SEP] ending segment A sit."""
    mask = tf.cast(input_mask, tf.int32)
    positions = tf.range(tf.shape(mask)[1])[None, :]
    lengths = tf.reduce_sum(mask, axis=1, keepdims=True)
    special = tf.logical_or(positions == 0, positions == lengths - 1)
    if segment_ids is not None:
        segments = tf.cast(segment_ids, tf.int32)
        next_segments = tf.concat([segments[:, 1:], tf.zeros_like(segments[:, :1])], axis=1)
        special = tf.logical_or(special, tf.logical_and(segments == 0, next_segments == 1))
    return tf.logical_and(special, mask > 0)


def pool(hidden_states, input_mask, strategy: str = "REDUCE_MEAN", layers=(-2,), mask_cls_sep: bool = False,
         segment_ids=None):
    """bert-as-service pooling of `hidden_states` (a list of `[batch, seq, width]`, or the encoder's
    output dict) -> float32 `[batch, width * len(layers)]` (`[batch, seq, ...]` for NONE; twice the
    width for REDUCE_MEAN_MAX). `segment_ids` lets `mask_cls_sep` find the [SEP] between a pair's
    two segments too."""
    strategy = check_strategy(strategy)
    if isinstance(hidden_states, dict):
        hidden_states = hidden_states["hidden_states"]
    hidden_states = list(hidden_states)
    selected = [tf.cast(hidden_states[index], tf.float32)
                for index in absolute_layers(layers, len(hidden_states))]
    x = selected[0] if len(selected) == 1 else tf.concat(selected, axis=-1)

    real = tf.cast(input_mask, tf.int32) > 0
    if strategy == "CLS_TOKEN":
        return x[:, 0, :]
    if strategy == "SEP_TOKEN":
        last = tf.maximum(tf.reduce_sum(tf.cast(real, tf.int32), axis=1) - 1, 0)
        return tf.gather(x, last, axis=1, batch_dims=1)

    keep = real
    if mask_cls_sep:
        keep = tf.logical_and(keep, tf.logical_not(_cls_sep_positions(input_mask, segment_ids)))
    weights = tf.cast(keep, tf.float32)[:, :, None]
    if strategy == "NONE":
        return x * weights
    count = tf.reduce_sum(weights, axis=1)  # [batch, 1]
    pooled = []
    if strategy in ("REDUCE_MEAN", "REDUCE_MEAN_MAX"):
        # A row with no token left (only possible with mask_cls_sep) pools to zeros.
        pooled.append(tf.reduce_sum(x * weights, axis=1) / tf.maximum(count, 1.0))
    if strategy in ("REDUCE_MAX", "REDUCE_MEAN_MAX"):
        maximum = tf.reduce_max(tf.where(keep[:, :, None], x, tf.fill(tf.shape(x), -np.inf)), axis=1)
        pooled.append(tf.where(count > 0, maximum, 0.0))
    return pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=-1)


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12):
    """x / max(||x||, epsilon) (PyTorch `F.normalize`, as sentence-transformers); NumPy in, NumPy out."""
    if isinstance(x, np.ndarray):
        norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
        return (x / np.maximum(norm, epsilon)).astype(x.dtype, copy=False)
    # rsqrt of the clipped squared norm: the same value, and a finite gradient at a zero vector (training losses).
    return x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=axis, keepdims=True), epsilon ** 2))


# ---- sentence-transformers folders -----------------------------------------------------------

_ST_POOLING_MODES = {
    "pooling_mode_mean_tokens": "REDUCE_MEAN",
    "pooling_mode_max_tokens": "REDUCE_MAX",
    "pooling_mode_cls_token": "CLS_TOKEN",
    "pooling_mode_lasttoken": "SEP_TOKEN",
}
_ST_UNSUPPORTED_MODES = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def read_sentence_transformers_settings(folder: str | os.PathLike) -> dict:
    """A sentence-transformers folder -> SentenceEncoder keyword arguments plus `model_folder` (the
    folder of its Transformer module). A plain BERT folder (no `modules.json`) -> `{"model_folder": folder}`."""
    folder = os.fspath(folder)
    modules_path = os.path.join(folder, "modules.json")
    settings = {"model_folder": folder}
    if not os.path.isfile(modules_path):
        return settings
    modules = read_json(modules_path)
    settings.update(pooling="REDUCE_MEAN", layers=(-1,), normalize=False)
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = os.path.normpath(os.path.join(folder, module.get("path", "")))
        if kind == "Transformer":
            settings["model_folder"] = path
            st_config_path = os.path.join(path, "sentence_bert_config.json")
            if os.path.isfile(st_config_path):
                st_config = read_json(st_config_path)
                if st_config.get("max_seq_length"):
                    settings["max_seq_length"] = int(st_config["max_seq_length"])
                settings["lowercase_text"] = bool(st_config.get("do_lower_case", False))
        elif kind == "Pooling":
            config_path = os.path.join(path, "config.json")
            pooling = read_json(config_path)
            chosen = [strategy for key, strategy in _ST_POOLING_MODES.items() if pooling.get(key)]
            unsupported = [key for key in _ST_UNSUPPORTED_MODES if pooling.get(key)]
            if unsupported or len(chosen) != 1:
                raise ValueError(f"{config_path}: exactly one of {', '.join(_ST_POOLING_MODES)} is supported "
                                 f"(found {', '.join(chosen + unsupported) or 'none'})")
            settings["pooling"] = chosen[0]
        elif kind == "Normalize":
            settings["normalize"] = True
        else:
            raise ValueError(f"{modules_path}: sentence-transformers module {module.get('type')!r} is not supported "
                             f"(only Transformer, Pooling, Normalize)")
    return settings


# ---- batched sentence encoding ---------------------------------------------------------------

_FEATURE_SPEC = tf.TensorSpec([None, None], tf.int32)
LAYER_INDEXINGS = ("hidden_states", "encoder_blocks")

# Where a text may be cut without changing the tokens before the cut: the tokenizer splits words at
# whitespace, punctuation and (unless told not to) around every CJK ideograph, and tokenizes each piece
# alone. Missing a boundary is safe (a cut is only made at one found), so astral punctuation is left out.
_BOUNDARIES: dict[bool, np.ndarray] = {}
_LONGEST_RUN = 10_000  # characters kept of one boundary-free run (one word: [UNK] beyond 100 characters)
_WINDOW = 1 << 16


def _boundary_table(split_cjk: bool) -> np.ndarray:
    """bool [0x110000]: True at code points where a text may be cut."""
    if split_cjk not in _BOUNDARIES:
        import unicodedata

        from common.tokenization import _CJK_RANGES

        table = np.zeros(0x110000, bool)
        table[[code for code in range(0x10000) if unicodedata.category(chr(code))[0] in "PZ"]] = True
        for low, high in ((9, 10), (13, 13), (32, 47), (58, 64), (91, 96), (123, 126)):
            table[low:high + 1] = True
        if split_cjk:
            for low, high in _CJK_RANGES:
                table[low:high + 1] = True
        _BOUNDARIES[split_cjk] = table
    return _BOUNDARIES[split_cjk]


def _next_boundary(text: str, start: int, stop: int, table: np.ndarray) -> int | None:
    """The first index in [start, stop) of a boundary character, or None."""
    for low in range(start, min(stop, len(text)), _WINDOW):
        high = min(low + _WINDOW, stop, len(text))
        codes = np.frombuffer(text[low:high].encode("utf-32-le", "surrogatepass"), np.uint32)
        hits = np.flatnonzero(table[codes])
        if hits.size:
            return low + int(hits[0])
    return None


def tokenize_prefix(tokenizer, text: str, max_tokens: int) -> list[str]:
    """The first `max_tokens` wordpieces of `text`, tokenizing only as much of it as they need (a text of
    megabytes costs what its first words cost). Equal to `tokenizer.tokenize(text)[:max_tokens]`, except
    that a run of more than 10,000 characters without whitespace, punctuation or CJK counts as 10,000
    (it is one word: [UNK] either way, unless nearly all of it is control characters or accents)."""
    step = 4 * max_tokens + 64
    if len(text) <= step:
        return tokenizer.tokenize(text)[:max_tokens]
    table = _boundary_table(bool(getattr(tokenizer, "tokenize_chinese_chars", True)))
    tokens, position = [], 0
    while position < len(text) and len(tokens) < max_tokens:
        cut = position + step
        step *= 2
        if cut >= len(text):
            tokens += tokenizer.tokenize(text[position:])
            break
        # Pieces cut after a boundary character tokenize as the whole does.
        boundary = _next_boundary(text, cut, cut + _LONGEST_RUN, table)
        if boundary is not None:
            tokens += tokenizer.tokenize(text[position:boundary + 1])
            position = boundary + 1
        else:  # a long run: its first 10,000 characters stand for it; go on at the next boundary
            tokens += tokenizer.tokenize(text[position:cut + _LONGEST_RUN])
            boundary = _next_boundary(text, cut + _LONGEST_RUN, len(text), table)
            position = len(text) if boundary is None else boundary
    return tokens[:max_tokens]


class SentenceEncoder:
    """Texts -> float32 NumPy embeddings, in batches sorted by length, each padded to its own longest text.

    A text is a string, a list of wordpieces (already tokenized; unknown ones count as [UNK]) or an
    `(a, b)` pair of those (`[CLS] a [SEP] b [SEP]`, segment ids 0/1). Texts are truncated to
    `max_seq_length` tokens ([CLS]/[SEP] included; None: the encoder's positions) before most of a long
    text is tokenized. Only the blocks up to the deepest pooled layer run (the vectors are the same;
    `skip_unused_layers=False` runs all). One traced graph serves every batch shape (the signature is
    `[None, None]`), so the default pads no further; `pad_to_multiple_of` rounds batch lengths up where
    distinct shapes cost (XLA, `jit_compile`).
    """

    def __init__(self, encoder, tokenizer, pooling: str = "REDUCE_MEAN", layers=(-1,), normalize: bool = False,
                 max_seq_length: int | None = 128, batch_size: int = 64, mask_cls_sep: bool = False,
                 lowercase_text: bool = False, skip_unused_layers: bool = True, pad_to_multiple_of: int = 1,
                 jit_compile: bool = False, layer_indexing: str = "hidden_states",
                 mask_cls_sep_in_attention: bool = False):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = check_strategy(pooling)
        num_blocks = encoder.config.num_hidden_layers
        self.layers = tuple(_as_layer_list(layers))
        if layer_indexing not in LAYER_INDEXINGS:
            raise ValueError(f"layer_indexing must be one of {', '.join(LAYER_INDEXINGS)}, got {layer_indexing!r}")
        self.layer_indexing = layer_indexing
        if layer_indexing == "encoder_blocks":
            # bert-as-service indexes `all_encoder_layers` (the blocks' outputs): i >= 0 is hidden state i + 1.
            for layer in self.layers:
                if not -num_blocks <= layer < num_blocks:
                    raise ValueError(f"pooling layer {layer} is outside the encoder's {num_blocks} blocks "
                                     f"(0 = the first block, -1 = the last)")
            self._absolute_layers = [layer + 1 if layer >= 0 else layer + num_blocks + 1 for layer in self.layers]
        else:
            self._absolute_layers = absolute_layers(self.layers, num_blocks + 1)
        self.normalize = bool(normalize)
        limit = encoder.config.max_position_embeddings
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        if self.max_seq_length is not None and not 2 <= self.max_seq_length <= limit:
            raise ValueError(f"max_seq_length={max_seq_length} must be in 2..{limit} (the encoder's positions)")
        self.truncate_to = limit if self.max_seq_length is None else self.max_seq_length
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive (got {batch_size})")
        self.batch_size = int(batch_size)
        self.mask_cls_sep = bool(mask_cls_sep)
        self.mask_cls_sep_in_attention = bool(mask_cls_sep_in_attention)
        self.lowercase_text = bool(lowercase_text)
        self.pad_to_multiple_of = max(1, int(pad_to_multiple_of))
        self.num_layers = max(self._absolute_layers) if skip_unused_layers else num_blocks
        self._forward = tf.function(self._embed_batch, input_signature=[_FEATURE_SPEC] * 3,
                                    jit_compile=jit_compile, reduce_retracing=True)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **overrides) -> "SentenceEncoder":
        """A pretrained folder (Google, keras-hub, Hugging Face or sentence-transformers); the
        sentence-transformers settings found there apply unless `overrides` say otherwise."""
        from common.model_source import load_pretrained_folder
        from common.tokenization import BertTokenizer

        settings = read_sentence_transformers_settings(folder)
        model_folder = settings.pop("model_folder")
        pretrained = load_pretrained_folder(model_folder)
        if pretrained.vocab_path is None:
            raise FileNotFoundError(f"{model_folder}: no vocabulary file to tokenize with")
        if os.path.isfile(os.path.join(model_folder, "vocab.txt")):
            tokenizer = BertTokenizer.from_pretrained_dir(model_folder, lowercase=pretrained.lowercase)
        else:
            tokenizer = BertTokenizer.from_vocab_file(pretrained.vocab_path, lowercase=pretrained.lowercase)
        if "max_seq_length" in settings:
            settings["max_seq_length"] = min(settings["max_seq_length"], pretrained.config.max_position_embeddings)
        settings.update(overrides)
        return cls(pretrained.encoder, tokenizer, **settings)

    @property
    def width(self) -> int:
        width = self.encoder.config.hidden_size * len(self.layers)
        return 2 * width if self.pooling == "REDUCE_MEAN_MAX" else width

    def _embed_batch(self, input_ids, input_mask, segment_ids):
        model_mask = input_mask
        if self.mask_cls_sep_in_attention:
            special = _cls_sep_positions(input_mask, segment_ids)
            model_mask = input_mask * (1 - tf.cast(special, input_mask.dtype))
        outputs = self.encoder({"input_ids": input_ids, "input_mask": model_mask, "segment_ids": segment_ids},
                               training=False, num_layers=self.num_layers)
        pooled = pool(outputs["hidden_states"], input_mask, self.pooling, layers=self._absolute_layers,
                      mask_cls_sep=self.mask_cls_sep or self.mask_cls_sep_in_attention, segment_ids=segment_ids)
        return l2_normalize(pooled) if self.normalize and self.pooling != "NONE" else pooled

    def _tokens(self, side, budget: int) -> list[str]:
        if isinstance(side, str):
            if self.lowercase_text:
                side = side.lower()
            return tokenize_prefix(self.tokenizer, side, budget)
        return list(side[:budget])

    def featurize(self, texts: Sequence) -> list[tuple[list[int], list[int]]]:
        """Each text -> (ids, segment ids) without padding, truncated to `max_seq_length`."""
        rows = []
        for index, text in enumerate(texts):
            if isinstance(text, str) or _is_token_list(text):
                text_a, text_b = text, None
            elif (isinstance(text, (tuple, list)) and len(text) == 2
                  and all(isinstance(t, str) or _is_token_list(t) for t in text)):
                text_a, text_b = text
            else:
                raise TypeError(f"text {index} is {type(text).__name__}, not a string, a list of tokens or an "
                                f"(a, b) pair of those")
            budget = self.truncate_to - (2 if text_b is None else 3)
            tokens_b = None if text_b is None else self._tokens(text_b, budget)
            features = self.tokenizer.encode_tokens(self._tokens(text_a, budget), tokens_b, self.truncate_to)
            length = sum(features["input_mask"])
            rows.append((features["input_ids"][:length], features["segment_ids"][:length]))
        return rows

    def output_length(self, rows) -> int:
        """Positions of a NONE output for these rows: `max_seq_length`, or the longest row when it is None."""
        if self.max_seq_length is not None:
            return self.max_seq_length
        return max((len(ids) for ids, _ in rows), default=0)

    def batches(self, rows):
        """(indices, input_ids, input_mask, segment_ids) per batch, longest texts first."""
        order = sorted(range(len(rows)), key=lambda index: -len(rows[index][0]))
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            longest = len(rows[indices[0]][0])
            length = min(-(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of, self.truncate_to)
            input_ids = np.zeros((len(indices), length), np.int32)
            segment_ids = np.zeros_like(input_ids)
            input_mask = np.zeros_like(input_ids)
            for row, index in enumerate(indices):
                ids, segments = rows[index]
                input_ids[row, :len(ids)] = ids
                segment_ids[row, :len(ids)] = segments
                input_mask[row, :len(ids)] = 1
            yield indices, input_ids, input_mask, segment_ids

    def encode_rows(self, rows, progress: bool = False, output_length: int | None = None) -> np.ndarray:
        """`featurize`d rows -> float32 `[n, width]` (`[n, output_length, width]` for NONE, zero-padded;
        default `self.output_length(rows)`)."""
        if self.pooling == "NONE":
            length = self.output_length(rows) if output_length is None else output_length
            result = np.zeros((len(rows), length, self.width), np.float32)
        else:
            result = np.zeros((len(rows), self.width), np.float32)
        batches = self.batches(rows)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, total=-(-len(rows) // self.batch_size), desc="encode", unit="batch")
        for indices, input_ids, input_mask, segment_ids in batches:
            pooled = self._forward(tf.constant(input_ids), tf.constant(input_mask), tf.constant(segment_ids)).numpy()
            if self.pooling == "NONE":
                result[indices, :pooled.shape[1]] = pooled
            else:
                result[indices] = pooled
        return result

    def encode(self, texts: Sequence, progress: bool = False) -> np.ndarray:
        """float32 `[n, width]` in the input order (`[n, max_seq_length, width]` for NONE, zero-padded; the
        longest text's length when `max_seq_length` is None)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        return self.encode_rows(self.featurize(texts), progress=progress)

    __call__ = encode


def _is_token_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(token, str) for token in value)


# ---- SavedModel export -----------------------------------------------------------------------

class _PooledEmbeddingModule(tf.Module):
    def __init__(self, encoder, pooling, layers, normalize, mask_cls_sep):
        super().__init__(name="pooled_embedding")
        self.encoder = encoder
        self._pooling, self._layers = pooling, layers
        self._normalize, self._mask_cls_sep = normalize, mask_cls_sep
        self._num_layers = max(layers)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="input_mask"),
                                  tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
    def serve(self, input_ids, input_mask, segment_ids):
        outputs = self.encoder({"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids},
                               training=False, num_layers=self._num_layers)
        pooled = pool(outputs["hidden_states"], input_mask, self._pooling, layers=self._layers,
                      mask_cls_sep=self._mask_cls_sep, segment_ids=segment_ids)
        if self._normalize and self._pooling != "NONE":
            pooled = l2_normalize(pooled)
        return {"embeddings": pooled}


def export_saved_model(encoder, export_dir: str | os.PathLike, pooling: str | None = None, layers=None,
                       normalize: bool | None = None, mask_cls_sep: bool | None = None,
                       vocab_file: str | os.PathLike | None = None, overwrite: bool = False) -> str:
    """Writes a SavedModel whose `serving_default` signature maps int32 `input_ids`, `input_mask`,
    `segment_ids` `[batch, seq]` to `{"embeddings": pooled}`; plain `tf.saved_model.load` serves it.

    `encoder` is a BertEncoder or a SentenceEncoder (whose settings are the defaults then; otherwise
    REDUCE_MEAN of the last layer, unnormalised). The vocabulary goes to `assets.extra/vocab.txt` and the
    pooling settings to `assets.extra/embedding_config.json`. The folder appears whole or not at all.
    """
    sentence_encoder = encoder if isinstance(encoder, SentenceEncoder) else None
    if sentence_encoder is not None:
        encoder = sentence_encoder.encoder
        pooling = sentence_encoder.pooling if pooling is None else pooling
        layers = sentence_encoder._absolute_layers if layers is None else layers  # hidden_states indices
        normalize = sentence_encoder.normalize if normalize is None else normalize
        mask_cls_sep = sentence_encoder.mask_cls_sep if mask_cls_sep is None else mask_cls_sep
        if vocab_file is None:
            vocab = sentence_encoder.tokenizer.vocab
            vocab_tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
        else:
            vocab_tokens = None
    else:
        vocab_tokens = None
    pooling = check_strategy(pooling or "REDUCE_MEAN")
    layers = absolute_layers((-1,) if layers is None else layers, encoder.config.num_hidden_layers + 1)
    normalize, mask_cls_sep = bool(normalize), bool(mask_cls_sep)

    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(export_dir) and os.listdir(export_dir) and not overwrite:
        raise FileExistsError(f"{export_dir} exists and is not empty (pass overwrite=True to replace it)")
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.", dir=parent)
    try:
        module = _PooledEmbeddingModule(encoder, pooling, layers, normalize, mask_cls_sep)
        tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        if vocab_file is not None:
            shutil.copyfile(vocab_file, os.path.join(extra, "vocab.txt"))
        elif vocab_tokens is not None:
            with open(os.path.join(extra, "vocab.txt"), "w", encoding="utf-8") as handle:
                handle.write("".join(token + "\n" for token in vocab_tokens))
        settings = {"pooling_strategy": pooling, "hidden_state_indices": layers, "normalize": normalize,
                    "mask_cls_sep": mask_cls_sep, "width": encoder.config.hidden_size * len(layers)
                    * (2 if pooling == "REDUCE_MEAN_MAX" else 1)}
        if sentence_encoder is not None:
            settings.update(max_seq_length=sentence_encoder.max_seq_length,
                            lowercase=sentence_encoder.tokenizer.lowercase,
                            lowercase_text=sentence_encoder.lowercase_text)
        with open(os.path.join(extra, "embedding_config.json"), "w", encoding="utf-8") as handle:
            json.dump(settings, handle, indent=2, sort_keys=True)
        os.chmod(staging, 0o755)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir
