"""Fine-tuning helpers: which parts of a `BertEncoder` train.

Call `freeze_encoder` before the optimizer is built (`common.training.Trainer` builds it from
`model.trainable_variables`): the optimizer then holds slots for the trainable variables only, weight
decay is decided per trained variable as before, and frozen weights stay bit-identical. Resuming
with another frozen set fails with a `CheckpointMismatchError` that names the difference.
"""

from __future__ import annotations

from common.encoder import BertEncoder


def _parameter_count(variables) -> int:
    count = 0
    for variable in variables:
        size = 1
        for dimension in variable.shape:
            size *= int(dimension)
        count += size
    return count


def freeze_encoder(encoder: BertEncoder, trainable_last_layers: int, train_pooler: bool = True,
                   train_embeddings: bool = False) -> str:
    """Freezes the encoder except its last `trainable_last_layers` blocks (and the pooler, the
    embeddings when asked); returns a one-line summary for the log.

    The OVT paper fine-tunes only the last layer and the pooler: `freeze_encoder(encoder, 1)`.
    `trainable_last_layers=0` freezes every block, `num_hidden_layers` none. The embeddings are
    word, segment and position tables plus their LayerNorm; the word table is also the tied output
    matrix of a masked-LM head, so freezing it freezes that too (the head's own weights still train).
    Calling again replaces the previous setting.
    """
    layers = list(encoder.transformer_layers)
    if isinstance(trainable_last_layers, bool) or not isinstance(trainable_last_layers, int) \
            or not 0 <= trainable_last_layers <= len(layers):
        raise ValueError(f"trainable_last_layers must be an integer in [0, {len(layers)}] "
                         f"(the encoder has {len(layers)} layers), got {trainable_last_layers!r}")
    embeddings = [layer for layer in (encoder.token_embedding, encoder.segment_embedding,
                                      encoder.position_embedding, encoder.embeddings_layer_norm)
                  if layer is not None]
    settings = [(layer, train_embeddings) for layer in embeddings]
    settings += [(layer, index >= len(layers) - trainable_last_layers) for index, layer in enumerate(layers)]
    if encoder.pooler_dense is not None:
        settings.append((encoder.pooler_dense, train_pooler))
    encoder.trainable = True
    # Every part is set explicitly: a Keras model's `trainable = True` does not reach parts
    # frozen before, so a second call must not rely on it.
    for layer, trainable in settings:
        layer.trainable = trainable

    trainable = encoder.trainable_variables
    trained_parts = ([] if not train_embeddings else ["embeddings"])
    trained_parts += [layer.name for layer in layers[len(layers) - trainable_last_layers:]]
    if train_pooler and encoder.pooler_dense is not None:
        trained_parts.append("pooler")
    return (f"training {', '.join(trained_parts) or 'nothing'} of the encoder: "
            f"{_parameter_count(trainable):,} of {_parameter_count(encoder.variables):,} parameters "
            f"({len(trainable)} of {len(encoder.variables)} variables)")
