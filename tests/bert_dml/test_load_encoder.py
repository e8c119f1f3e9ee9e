"""Where the encoder comes from: Google checkpoint and bert-chainer npz (--init_checkpoint), or from scratch."""

import numpy as np
import pytest

from bert_dml.model import load_encoder
from common.checkpoints import save_chainer_npz, save_google_checkpoint
from common.cli import UserError
from common.config import BertConfig
from common.encoder import BertEncoder
from common.tokenization import write_vocab

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "."]


@pytest.fixture
def pretrained(tmp_path):
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    config_path, vocab_path = str(tmp_path / "bert_config.json"), str(tmp_path / "vocab.txt")
    config.to_json_file(config_path)
    write_vocab(VOCAB, vocab_path)
    source = BertEncoder(config)
    save_google_checkpoint(source, str(tmp_path / "bert_model.ckpt"))
    save_chainer_npz(source, str(tmp_path / "arrays_bert_model.ckpt.npz"))
    features = {"input_ids": np.array([[2, 5, 7, 8, 3, 0]], np.int32),
                "input_mask": np.array([[1, 1, 1, 1, 1, 0]], np.int32),
                "segment_ids": np.zeros((1, 6), np.int32)}
    expected = np.asarray(source(features, training=False)["pooled_output"])
    return tmp_path, config_path, vocab_path, features, expected


@pytest.mark.parametrize("checkpoint", ["bert_model.ckpt", "arrays_bert_model.ckpt.npz"])
def test_init_checkpoint_google_or_bert_chainer_gives_the_same_encoder(pretrained, checkpoint):
    folder, config_path, vocab_path, features, expected = pretrained
    setup = load_encoder(init_checkpoint=str(folder / checkpoint), bert_config_file=config_path,
                         vocab_file=vocab_path)
    assert setup.vocab == VOCAB
    np.testing.assert_allclose(np.asarray(setup.encoder(features, training=False)["pooled_output"]), expected,
                               rtol=1e-5, atol=1e-6)


def test_missing_sources_are_clear_errors(pretrained):
    folder, config_path, vocab_path, _, _ = pretrained
    with pytest.raises(UserError, match="--bert_config_file"):
        load_encoder()
    (folder / "vocab.txt").rename(folder / "words.txt")  # a vocab.txt beside the checkpoint would be used
    with pytest.raises(UserError, match="--vocab_file"):
        load_encoder(init_checkpoint=str(folder / "bert_model.ckpt"), bert_config_file=config_path)
    with pytest.raises(UserError, match="training text"):
        load_encoder(bert_config_file=config_path)
    scratch = load_encoder(bert_config_file=config_path, train_texts=["good film .", "bad film ."] * 3,
                           vocab_size=30)
    assert scratch.config.vocab_size == len(scratch.vocab) <= 30
