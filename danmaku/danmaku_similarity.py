r"""The embedding map of danmaku terms as the seed draws it: PCA to 50 dimensions, then t-SNE (perplexity 45,
learning rate 100, 2,000 iterations) to 2-D, one labelled scatter per model, side by side.

    python -m danmaku.danmaku_similarity --terms terms.txt --out map.png --model_dir chinese_L-12_H-768_A-12 \
        --compare_model_dir danmaku_model          # before / after continued pre-training, side by side
    python -m danmaku.danmaku_similarity --terms terms.txt --out map.png --port 8125   # via a running server

`terms.txt`: one term a line, optionally `term<TAB>group` (groups get colours and a legend); blank
lines are skipped. Without `--terms`: the seed's 92 terms (`danmaku/seed_terms.txt`). Without `--model_dir` the terms are encoded by the server at `--ip:--port`
(`danmaku.serve`, whatever pooling it was started with). With `--model_dir` they are encoded here
with bert-as-service's pooling (`--pooling_strategy`, `--pooling_layer`, default the seed's -1).
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python danmaku/danmaku_similarity.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags  # noqa: E402

from common.cli import UserError  # noqa: E402
from danmaku.similarity import (SEED_TERMS_FILE, client_encode_fn, draw_similarity_map,  # noqa: E402
                                local_encode_fn, read_terms)

FLAGS = flags.FLAGS

flags.DEFINE_string("terms", None, "Terms file: one term a line, optionally 'term<TAB>group' (default: the "
                    "seed's 92 terms, danmaku/seed_terms.txt).")
flags.DEFINE_string("out", "danmaku_similarity.png", "Output PNG.")
flags.DEFINE_string("model_dir", None, "Model folder to encode with here (else: the server at --ip:--port).")
flags.DEFINE_string("tuned_model_dir", None, "As danmaku.serve: weights from here, config and vocab from --model_dir.")
flags.DEFINE_string("ckpt_name", None, "As danmaku.serve.")
flags.DEFINE_string("compare_model_dir", None, "Second model folder, drawn beside the first (e.g. after "
                    "continued pre-training).")
flags.DEFINE_string("compare_tuned_model_dir", None, "tuned_model_dir of the second model.")
flags.DEFINE_string("compare_ckpt_name", None, "ckpt_name of the second model.")
flags.DEFINE_string("title", None, "Title of the (first) map; default: the model folder's name.")
flags.DEFINE_string("compare_title", None, "Title of the second map.")
flags.DEFINE_enum("pooling_strategy", "REDUCE_MEAN",
                  ["REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "SEP_TOKEN"], "Pooling (local models).")
flags.DEFINE_list("pooling_layer", ["-1"], "Pooled layer(s) (local models); -1 the last.")
flags.DEFINE_integer("max_seq_len", 25, "Maximum tokens per term, [CLS]/[SEP] included (local models).")
flags.DEFINE_string("ip", "localhost", "Server address when no --model_dir is given.")
flags.DEFINE_integer("port", 8125, "Server port when no --model_dir is given.")
flags.DEFINE_integer("timeout", 60000, "Client timeout in milliseconds.")
flags.DEFINE_enum("method", "tsne", ["tsne", "pca"], "2-D projection: t-SNE after PCA, or PCA only.")
flags.DEFINE_integer("pca_dims", 50, "PCA dimensions before t-SNE.")
flags.DEFINE_integer("random_seed", 0, "Seed of the projection.")
flags.DEFINE_float("perplexity", 45.0, "t-SNE perplexity (the seed's 45).")
flags.DEFINE_float("learning_rate", 100.0, "t-SNE learning rate (the seed's 100).")
flags.DEFINE_integer("max_iter", 2000, "t-SNE iterations (the seed's 2,000).")


def main(argv):
    del argv
    terms, groups = read_terms(FLAGS.terms or SEED_TERMS_FILE)
    panels = []
    if FLAGS.model_dir:
        layers = [int(layer) for layer in FLAGS.pooling_layer]
        comparing = bool(FLAGS.compare_model_dir)
        for model_dir, tuned, ckpt, title, role in (
                (FLAGS.model_dir, FLAGS.tuned_model_dir, FLAGS.ckpt_name, FLAGS.title, "before"),
                (FLAGS.compare_model_dir, FLAGS.compare_tuned_model_dir, FLAGS.compare_ckpt_name,
                 FLAGS.compare_title, "after")):
            if model_dir:
                name = os.path.basename(os.path.normpath(tuned or model_dir))
                title = title or (f"{role}: {name}" if comparing else name)
                panels.append((title, local_encode_fn(model_dir, tuned, ckpt, FLAGS.pooling_strategy, layers,
                                                      FLAGS.max_seq_len)))
    else:
        if FLAGS.compare_model_dir:
            raise UserError("--compare_model_dir needs --model_dir (the first model) as well")
        panels.append((FLAGS.title or f"server {FLAGS.ip}:{FLAGS.port}",
                       client_encode_fn(FLAGS.ip, FLAGS.port, FLAGS.timeout)))
    tsne = dict(perplexity=FLAGS.perplexity, learning_rate=FLAGS.learning_rate, max_iter=FLAGS.max_iter)
    path = draw_similarity_map(terms, groups, FLAGS.out, panels, FLAGS.method, FLAGS.pca_dims, FLAGS.random_seed,
                               tsne)
    print(f"wrote {path} ({len(terms)} terms, {len(panels)} map(s))")


if __name__ == "__main__":
    cli.run(main)
