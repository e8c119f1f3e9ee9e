"""bert-as-service's server in NumPy, for tests: its `convert_lst_to_features` (extract_features.py),
Google's `modeling.BertModel` forward pass (float64, from Hugging Face weight names) and the pooling
graph of `graph.py`. Nothing here uses our Keras code; the tokenizer's wordpieces are the input."""

import math
import re

import numpy as np
from numpy_reference import gelu_erf, layer_norm, softmax  # tests/numpy_reference.py


def features(texts, tokenize, vocab, max_seq_len, max_position_embeddings, mask_cls_sep):
    """convert_lst_to_features: "a ||| b" pairs, Google's truncation, [CLS]/[SEP] with input mask
    int(not mask_cls_sep), zero padding to max_seq_len (None: the batch's longest, as the original)."""
    examples = []
    for text in texts:
        line = text.strip()
        match = re.match(r"^(.*) \|\|\| (.*)$", line)
        a, b = (line, None) if match is None else (match.group(1), match.group(2))
        examples.append((tokenize(a), tokenize(b) if b else []))
    if max_seq_len is None:
        max_seq_len = max(len(a) + len(b) for a, b in examples) + (3 if any(b for _, b in examples) else 2)
        max_seq_len = min(max_seq_len, max_position_embeddings)
    ids, masks, types = [], [], []
    special = int(not mask_cls_sep)
    for tokens_a, tokens_b in examples:
        if tokens_b:
            while len(tokens_a) + len(tokens_b) > max_seq_len - 3:
                (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()
        else:
            tokens_a = tokens_a[:max_seq_len - 2]
        tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
        type_ids = [0] * len(tokens)
        mask = [special] + [1] * len(tokens_a) + [special]
        if tokens_b:
            tokens += tokens_b + ["[SEP]"]
            type_ids += [1] * (len(tokens_b) + 1)
            mask += [1] * len(tokens_b) + [special]
        row = [vocab.get(token, vocab["[UNK]"]) for token in tokens]
        padding = max_seq_len - len(row)
        ids.append(row + [0] * padding)
        masks.append(mask + [0] * padding)
        types.append(type_ids + [0] * padding)
    return np.array(ids), np.array(masks), np.array(types)


def all_encoder_layers(weights, input_ids, input_mask, token_type_ids, num_heads):
    """modeling.BertModel(is_training=False).all_encoder_layers: one [batch, seq, hidden] per block."""
    w = {key: value.astype(np.float64) for key, value in weights.items()}
    batch, length = input_ids.shape
    x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][:length]
         + w["embeddings.token_type_embeddings.weight"][token_type_ids])
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    adder = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0  # create_attention_mask
    hidden = x.shape[-1]
    head = hidden // num_heads
    layers = []
    index = 0
    while f"encoder.layer.{index}.attention.self.query.weight" in w:
        p = f"encoder.layer.{index}."

        def dense(value, name):
            return value @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(value):
            return value.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"attention.self.{name}")) for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + adder
        context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        attention = layer_norm(dense(context, "attention.output.dense") + x,
                                w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        intermediate = gelu_erf(dense(attention, "intermediate.dense"))
        x = layer_norm(dense(intermediate, "output.dense") + attention, w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"])
        layers.append(x)
        index += 1
    return layers


def pool(layers, input_mask, strategy, pooling_layer):
    """graph.py's pooling of `all_encoder_layers[pooling_layer]` with the (possibly [CLS]/[SEP]-zeroed) mask."""
    x = np.concatenate([layers[index] for index in pooling_layer], axis=-1)
    mask = input_mask.astype(np.float64)

    def mean(value):
        return (value * mask[:, :, None]).sum(1) / (mask.sum(1, keepdims=True) + 1e-10)

    def maximum(value):
        return (value - (1.0 - mask[:, :, None]) * 1e30).max(1)

    if strategy == "REDUCE_MEAN":
        return mean(x)
    if strategy == "REDUCE_MAX":
        return maximum(x)
    if strategy == "REDUCE_MEAN_MAX":
        return np.concatenate([mean(x), maximum(x)], axis=1)
    if strategy in ("CLS_TOKEN", "FIRST_TOKEN"):
        return x[:, 0]
    if strategy in ("SEP_TOKEN", "LAST_TOKEN"):
        last = mask.sum(1).astype(int) - 1
        return x[np.arange(len(x)), last]
    if strategy == "NONE":
        return x * mask[:, :, None]
    raise ValueError(strategy)
