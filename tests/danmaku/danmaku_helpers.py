"""Helpers of the danmaku tests: a tiny corpus and a tiny Google-layout model folder."""

import os

CORPUS_TEXT = """前方高能
awsl
哈哈哈哈
草

名场面
泪目
这就是青春啊

打卡
来了来了
下次一定
"""

TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)


def make_model_folder(folder, corpus_lines, seed=0, config_overrides=None, with_heads=True):
    """A Google-layout folder (bert_config.json, bert_model.ckpt, vocab.txt) with random weights; like
    chinese_L-12_H-768_A-12 the checkpoint holds the pre-training heads (cls/...) too unless told not to."""
    import keras

    from common.checkpoints import save_google_checkpoint
    from common.config import BertConfig
    from common.encoder import BertEncoder
    from common.heads import BertPretrainer
    from common.tokenization import compute_char_vocabulary

    os.makedirs(folder, exist_ok=True)
    vocab = compute_char_vocabulary(lines=corpus_lines, output_path=os.path.join(folder, "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), **{**TINY_CONFIG, **(config_overrides or {})})
    config.to_json_file(os.path.join(folder, "bert_config.json"))
    keras.utils.set_random_seed(seed)
    model = BertPretrainer(BertEncoder(config))
    heads = dict(masked_lm_head=model.masked_lm, next_sentence_head=model.next_sentence) if with_heads else {}
    save_google_checkpoint(model.encoder, os.path.join(folder, "bert_model.ckpt"), **heads)
    return folder
