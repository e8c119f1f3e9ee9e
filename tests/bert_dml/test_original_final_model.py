"""`--model final.model` (the original's Chainer save_npz of BertDML) with `--bert_config_file`, `--vocab_file`:
the features are the loaded model's pooled output -> 512-wide `output` (model_source's test checks the loader
against a NumPy BERT)."""

import numpy as np

from bert_dml import data as dml_data
from bert_dml.features import extract_features
from bert_dml.model import BertDML
from common import model_source
from common.checkpoints import save_chainer_npz
from common.config import BertConfig
from common.encoder import BertEncoder
from common.tokenization import write_vocab

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "."]


def test_extraction_reads_the_originals_final_model(tmp_path):
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    network = BertDML(BertEncoder(config))
    save_chainer_npz(network.encoder, tmp_path / "final.model", output_head=network.output_dense)
    config.to_json_file(tmp_path / "bert_config.json")
    write_vocab(VOCAB, tmp_path / "vocab.txt")
    texts = ["good film .", "bad plot .", "good plot good film ."]
    (tmp_path / "04-test.txt").write_text("".join(f"{i % 2}\t{text}\n" for i, text in enumerate(texts)))

    labels, features = extract_features("dml", str(tmp_path / "04-test.txt"), batchsize=2,
                                        model=str(tmp_path / "final.model"),
                                        bert_config_file=str(tmp_path / "bert_config.json"),
                                        vocab_file=str(tmp_path / "vocab.txt"))
    assert labels == ["0", "1", "0"] and features.shape == (3, 512)
    loaded = model_source.load(tmp_path / "final.model", heads=("output",))  # config and vocab beside it
    encoded = dml_data.encode_texts(loaded.tokenizer, texts, 128, trailing_sep=False)  # the original: [CLS] text
    np.testing.assert_allclose(features, np.asarray(network(encoded, training=False)), atol=1e-5)
