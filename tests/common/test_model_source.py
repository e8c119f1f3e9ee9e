"""`common.model_source.load`: every source the suite reads gives the same config, encoder, tokenizer and heads."""

import json
import os

import keras
import numpy as np
import pytest

from common import model_source
from common.checkpoints import make_checkpoint_manager, save_chainer_npz, write_model_folder
from common.cli import UserError
from common.config import BertConfig
from common.encoder import BertEncoder
from common.heads import BertClassifier
from common.tokenization import write_vocab
from test_checkpoints import (INPUT_IDS, INPUT_MASK, SEGMENT_IDS, TINY, google_to_hugging_face, google_variable_shapes,
                              numpy_bert, random_weights, rename_like_bert_chainer, run_encoder, write_tf1_checkpoint)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(35)]


@pytest.fixture(scope="module")
def weights():
    return random_weights(google_variable_shapes(), seed=3)


@pytest.fixture(scope="module")
def expected(weights):
    return numpy_bert(weights, INPUT_IDS, SEGMENT_IDS, INPUT_MASK, num_heads=2, num_layers=2)


def google_folder(folder, weights):
    folder.mkdir()
    write_tf1_checkpoint(folder / "bert_model.ckpt", weights)
    BertConfig(**TINY).to_json_file(folder / "bert_config.json")
    write_vocab(VOCAB, folder / "vocab.txt")
    return folder


def assert_reproduces(loaded, expected):
    sequence, pooled = expected
    outputs = run_encoder(loaded.encoder)
    np.testing.assert_allclose(outputs["sequence_output"], sequence, atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"], pooled, atol=1e-5)
    config, encoder, tokenizer, heads = loaded  # unpacks as (config, encoder, tokenizer, heads)
    assert config == BertConfig(**TINY) and tokenizer.vocab_size == len(VOCAB)


def test_google_folder_prefix_and_flags(tmp_path, weights, expected):
    folder = google_folder(tmp_path / "uncased_L-2_H-16_A-2", weights)
    loaded = model_source.load(folder, heads=("masked_lm", "next_sentence"))
    assert_reproduces(loaded, expected)
    assert set(loaded.heads) == {"masked_lm", "next_sentence"} and loaded.tokenizer.lowercase
    assert loaded.weights.startswith("Google checkpoint")
    # A bare prefix with the original's --bert_config_file / --vocab_file, from elsewhere.
    elsewhere = tmp_path / "ckpt"
    elsewhere.mkdir()
    write_tf1_checkpoint(elsewhere / "model.ckpt-7", weights)
    assert_reproduces(model_source.load(elsewhere / "model.ckpt-7", bert_config_file=folder / "bert_config.json",
                                        vocab_file=folder / "vocab.txt"), expected)
    # bert-as-service: config and vocabulary from the folder, weights from the tuned folder's newest model.ckpt-N.
    assert_reproduces(model_source.load(folder, weights=elsewhere), expected)
    with pytest.raises(UserError, match="give --bert_config_file"):
        model_source.load(elsewhere / "model.ckpt-7")
    with pytest.raises(UserError, match="no such model folder"):
        model_source.load(tmp_path / "absent")


def test_hugging_face_folder_and_bert_chainer_npz(tmp_path, weights, expected):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "hf"
    folder.mkdir()
    safetensors_numpy.save_file(google_to_hugging_face(weights), os.fspath(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(model_type="bert", hidden_act="gelu", **TINY)))
    write_vocab(VOCAB, folder / "vocab.txt")
    loaded = model_source.load(folder)
    assert_reproduces(loaded, expected)
    # The same weights as bert-chainer's npz, with the original's flags.
    npz = save_chainer_npz(loaded.encoder, os.fspath(tmp_path / "arrays_bert_model.ckpt.npz"))
    BertConfig(**TINY).to_json_file(tmp_path / "bert_config.json")
    assert_reproduces(model_source.load(npz, vocab_file=folder / "vocab.txt"), expected)


def test_our_model_folder_and_its_best_folder(tmp_path, expected, weights):
    source = model_source.load(google_folder(tmp_path / "google", weights))
    out = tmp_path / "run"
    write_model_folder(out, source.config, vocab_file=VOCAB, labels=["neg", "pos"],
                       run_config={"kind": "classified", "lowercase": False})
    make_checkpoint_manager(os.fspath(out / "best"), model=BertClassifier(source.encoder, 2))[1].save()
    loaded = model_source.load(out / "best")
    assert_reproduces(loaded, expected)
    assert loaded.labels == ["neg", "pos"] and loaded.run_config["kind"] == "classified"
    assert loaded.tokenizer.lowercase is False  # run_config.json's, not the default
    # A network with a head over the pooled output (bert_dml's BertDML: `.encoder`, `.output_dense`).
    network = keras.Model()
    network.encoder, network.output_dense = source.encoder, keras.layers.Dense(7)
    network.output_dense.build((None, TINY["hidden_size"]))
    make_checkpoint_manager(os.fspath(out / "dml"), model=network)[1].save()
    head = model_source.load(out / "dml", heads=("output",)).heads["output"]
    np.testing.assert_array_equal(head.kernel.numpy(), network.output_dense.kernel.numpy())


def test_a_mismatch_names_every_tensor_and_loads_nothing(tmp_path, weights):
    folder = google_folder(tmp_path / "google", weights)
    BertConfig(**{**TINY, "intermediate_size": 20}).to_json_file(folder / "bert_config.json")
    with pytest.raises(UserError, match=r"(?s)shape/dtype mismatches \(6\).*layer_1/output/dense/kernel: "
                                        r"expected \[20, 16\], found \[24, 16\]"):
        model_source.load(folder)


def write_original_final_model(path, weights, width=512, seed=8):
    """The original BertDML's `final.model` as Chainer's save_npz writes it: every param under its link
    path (`bert/...` as bert-chainer names them, `output/W` [out, in], `output/b`), compressed."""
    rng = np.random.default_rng(seed)
    head_w = rng.normal(0, 0.02, (width, TINY["hidden_size"])).astype(np.float32)
    head_b = rng.normal(0, 0.02, (width,)).astype(np.float32)
    arrays = {name: value for name, value in rename_like_bert_chainer(weights).items() if name.startswith("bert/")}
    with open(path, "wb") as handle:  # Chainer keeps the file name; np.savez_compressed would add .npz to a path
        np.savez_compressed(handle, **arrays, **{"output/W": head_w, "output/b": head_b})
    return head_w, head_b


def test_the_original_bert_dml_final_model(tmp_path, weights, expected):
    folder = google_folder(tmp_path / "uncased_L-2_H-16_A-2", weights)
    head_w, head_b = write_original_final_model(tmp_path / "final.model", weights)
    loaded = model_source.load(tmp_path / "final.model", bert_config_file=folder / "bert_config.json",
                               vocab_file=folder / "vocab.txt", heads=("output",))
    assert_reproduces(loaded, expected)
    assert loaded.weights.startswith("bert-chainer npz") and loaded.heads["output"].units == 512
    np.testing.assert_allclose(np.asarray(loaded.heads["output"](expected[1].astype(np.float32))),
                               expected[1] @ head_w.T + head_b, atol=1e-5)
    with pytest.raises(UserError, match="no output head"):
        model_source.load(folder, heads=("output",))


def test_model_folders_and_checkpoints_on_a_gfile_filesystem(tmp_path, weights, expected):
    """TensorFlow's in-memory ram:// filesystem stands in for gs://: a model folder, our checkpoint, Google's
    and bert-chainer's formats are written there, read back, and warm start a fresh encoder."""
    import uuid

    from common.checkpoints import read_model_folder, save_google_checkpoint, warm_start

    encoder = model_source.load(google_folder(tmp_path / "google", weights)).encoder
    folder = f"ram://checkpoints-{uuid.uuid4().hex}/run"
    write_model_folder(folder, BertConfig(**TINY), vocab_file=VOCAB, labels=["neg", "pos"], run_config={"kind": "x"})
    saved = make_checkpoint_manager(folder, model=BertClassifier(encoder, 2))[1].save()
    written = read_model_folder(folder)
    assert written.config == BertConfig(**TINY) and written.labels == ["neg", "pos"]
    assert written.run_config == {"kind": "x"} and written.checkpoint_path == saved
    sources = [folder, save_google_checkpoint(encoder, f"{folder}/google/bert_model.ckpt"),
               save_chainer_npz(encoder, f"{folder}/arrays_bert_model.ckpt.npz")]
    for source, kind in zip(sources, ["model checkpoint", "Google checkpoint", "bert-chainer npz"]):
        fresh = BertClassifier(BertEncoder(BertConfig(**TINY)), 2).encoder
        assert warm_start(source, fresh).startswith(f"warm start from {kind} ram://")
        np.testing.assert_allclose(run_encoder(fresh)["pooled_output"], expected[1], atol=1e-5)
