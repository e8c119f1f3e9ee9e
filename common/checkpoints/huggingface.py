"""Hugging Face BERT folders (`config.json` + `model.safetensors`, with the `cls.*` pre-training heads when
they are there) and keras-hub presets (`save_to_preset`)."""

from __future__ import annotations

import math
import os

import keras
import tensorflow as tf
from absl import logging

from common.checkpoints.mapping import CheckpointMismatchError, assign_all, google_mappings, same_shape, shape_of
from common.config import BertConfig
from common.encoder import LAYER_NORM_EPSILON, BertEncoder
from common.io_utils import isfile, read_json

# Hugging Face activation names that mean one of ours.
_HF_ACTIVATION_ALIASES = {"gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}
# Older PyTorch checkpoints spell some tensors differently: their ending -> today's.
_HF_OLD_ENDINGS = {".gamma": ".weight", ".beta": ".bias", "cls.predictions.decoder.bias": "cls.predictions.bias"}


def hugging_face_name(google_name: str, prefix: str = "bert.") -> tuple[str, bool]:
    """Google tensor name -> (Hugging Face name, whether transposed: torch Linear weights are [out, in])."""
    name = google_name.replace("output_bias", "bias").replace("output_weights", "weight")  # cls/ heads
    name = name.replace("layer_", "layer.").replace("/", ".")
    name = prefix + name[len("bert."):] if name.startswith("bert.") else name
    stem, _, leaf = name.rpartition(".")
    leaf = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    return f"{stem}.{leaf}" + (".weight" if leaf.endswith("_embeddings") else ""), name.endswith(".kernel")


def hugging_face_config(values: dict, source: str) -> BertConfig:
    """Our config of a HF BERT; refuses variants our encoder would compute differently."""
    if values.get("model_type") != "bert":
        raise ValueError(f"{source}: model_type {values.get('model_type')!r} is not 'bert'")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{source}: key 'position_embedding_type' must be 'absolute' "
                         f"(got {values['position_embedding_type']!r})")
    # Our blocks use Google's LayerNorm epsilon; another value would silently change the numerics.
    epsilon = values.get("layer_norm_eps", LAYER_NORM_EPSILON)
    if not math.isclose(epsilon, LAYER_NORM_EPSILON, rel_tol=1e-6):
        raise ValueError(f"{source}: key 'layer_norm_eps' must be {LAYER_NORM_EPSILON} (got {epsilon!r})")
    hidden_act = values.get("hidden_act", "gelu")
    defaults = dict(type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                    initializer_range=0.02)
    return BertConfig.from_dict({**defaults, **values, "hidden_act": _HF_ACTIVATION_ALIASES.get(hidden_act, hidden_act)},
                                source=source)


def keras_hub_backbone(folder: str):
    """A keras-hub preset's `BertBackbone` and its config (tanh GELU: what BertBackbone computes)."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    return backbone, BertConfig(
        vocab_size=backbone.vocabulary_size, hidden_size=backbone.hidden_dim, num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_heads, intermediate_size=backbone.intermediate_dim,
        max_position_embeddings=backbone.max_sequence_length, type_vocab_size=backbone.num_segments,
        hidden_act="gelu_approximate", hidden_dropout_prob=backbone.dropout,
        attention_probs_dropout_prob=backbone.dropout)


def load_backbone(backbone, encoder: BertEncoder, folder: str) -> list[str]:
    """Both are built from the same keras-hub layers, so variables pair up by their path in each layer."""
    if len(encoder.transformer_layers) != backbone.num_layers:
        raise CheckpointMismatchError(f"backbone has {backbone.num_layers} transformer layers, "
                                      f"the encoder {len(encoder.transformer_layers)}")
    tensors, available = [], {}
    for layer in [encoder.token_embedding, encoder.position_embedding, encoder.embeddings_layer_norm,
                  encoder.segment_embedding, *encoder.transformer_layers, encoder.pooler_dense]:
        if layer is not None:
            source = backbone.get_layer({"pooler_dense": "pooled_dense"}.get(layer.name, layer.name))
            available.update({f"{source.name}/{v.path.split(source.name + '/', 1)[-1]}": v for v in source.weights})
            tensors += [same_shape(f"{source.name}/{v.path.split(layer.name + '/', 1)[-1]}", v) for v in layer.weights]
    return assign_all(tensors, {name: shape_of(v) for name, v in available.items()},
                      lambda name: keras.ops.convert_to_numpy(available[name]), folder, what="keras-hub preset")


def load_hugging_face_folder(folder: str | os.PathLike, encoder: BertEncoder, masked_lm_head=None,
                             next_sentence_head=None) -> list[str]:
    """Loads a Hugging Face BERT folder (or keras-hub preset, encoder only) into `encoder` (+ heads), all
    or nothing. The encoder keeps its own `hidden_act`; `load_pretrained_folder` builds one with the folder's."""
    from safetensors.numpy import load

    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    if not isfile(config_path):
        raise FileNotFoundError(f"{folder}: no config.json (not a Hugging Face / keras-hub folder)")
    raw_config = read_json(config_path, expect=dict)
    if "model_type" not in raw_config:
        if masked_lm_head is not None or next_sentence_head is not None:
            raise CheckpointMismatchError(f"{folder}: a keras-hub backbone preset holds no pre-training heads")
        return load_backbone(keras_hub_backbone(folder)[0], encoder, folder)
    if hugging_face_config(raw_config, config_path).hidden_act != encoder.config.hidden_act:
        logging.warning("%s: hidden_act %r, but the encoder computes %r", config_path, raw_config.get("hidden_act"),
                        encoder.config.hidden_act)
    path = os.path.join(folder, "model.safetensors")
    if not isfile(path):
        raise CheckpointMismatchError(f"{folder}: no model.safetensors (the weights of a Hugging Face folder)")
    with tf.io.gfile.GFile(path, "rb") as handle:
        arrays = {}
        for name, value in load(handle.read()).items():
            ending = next((old for old in _HF_OLD_ENDINGS if name.endswith(old)), None)
            arrays[name[:-len(ending)] + _HF_OLD_ENDINGS[ending] if ending else name] = value
    # BertForPreTraining / BertForMaskedLM nest the encoder under `bert.`; a BertModel folder does not.
    prefix = "bert." if any(name.startswith("bert.") for name in arrays) else ""
    tensors = [t.renamed(*hugging_face_name(t.name, prefix))
               for t in google_mappings(encoder, masked_lm_head, next_sentence_head)]
    return assign_all(tensors, {name: value.shape for name, value in arrays.items()}, arrays.__getitem__, path,
                      what="Hugging Face weights", hint="Hugging Face BertModel folders have no cls.* heads; "
                                                         "BertForPreTraining / BertForMaskedLM folders do")
