r"""Serve sentence embeddings over HTTP with bert-as-service's command line.

    python -m danmaku.serve -model_dir chinese_L-12_H-768_A-12/ -tuned_model_dir=danmaku_model \
        -ckpt_name=model.ckpt-12000 -num_worker=1 -pooling_layer=-1
    python -m danmaku.serve --model_dir=... --pooling_strategy=REDUCE_MEAN --pooling_layer -4 -3 -2 -1 \
        --max_seq_len=25 --max_batch_size=256 --port=8125

Single- and double-dash flags both work; `-pooling_layer -4 -3` (bert-as-service's space-separated
list) is accepted as well as `-pooling_layer=-4,-3`. The server listens on 127.0.0.1 unless `-ip`
says otherwise: `POST /encode {"texts": [...]}` -> `{"embeddings": [...]}`, `GET /status`.
"""

from __future__ import annotations

import signal
import sys

if __package__ in (None, ""):  # run as a file, `python danmaku/serve.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

from absl import flags, logging  # noqa: E402

from common.cli import UserError  # noqa: E402
from danmaku.server import build_server, normalize_argv  # noqa: E402

FLAGS = flags.FLAGS

# bert-as-service's server flags (names, defaults and meanings).
flags.DEFINE_string("model_dir", None, "Folder of the pretrained BERT model (Google, ours, Hugging Face).")
flags.DEFINE_string("tuned_model_dir", None, "Folder of a further trained model (e.g. danmaku.run_pretraining's).")
flags.DEFINE_string("ckpt_name", None, "Checkpoint file name (default: bert_model.ckpt in -model_dir, the "
                    "newest model.ckpt-N in -tuned_model_dir).")
flags.DEFINE_string("config_name", "bert_config.json", "Config file name inside -model_dir.")
flags.DEFINE_string("max_seq_len", "25", "Maximum sequence length (tokens, [CLS]/[SEP] included); NONE: the "
                    "model's maximum.")
flags.DEFINE_enum("pooling_strategy", "REDUCE_MEAN",
                  ["REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "FIRST_TOKEN", "SEP_TOKEN",
                   "LAST_TOKEN", "NONE"], "Pooling of the token vectors into one sentence vector.")
flags.DEFINE_list("pooling_layer", ["-2"], "Layer(s) pooled: -1 the last, -2 the one before (default); several "
                  "are concatenated.")
flags.DEFINE_bool("mask_cls_sep", False, "Leave [CLS] and [SEP] out of the pooling.")
flags.DEFINE_integer("max_batch_size", 256, "Most sentences the model runs at once (requests are batched).")
flags.DEFINE_integer("num_worker", 1, "Encoding worker threads.")
flags.DEFINE_integer("port", 8125, "HTTP port.")
flags.DEFINE_integer("http_port", None, "Alias of -port (bert-as-service's HTTP port flag).")
flags.DEFINE_integer("port_out", None, "Accepted for compatibility; unused (one HTTP port serves both ways).")
flags.DEFINE_bool("cpu", False, "Run on the CPU even if a GPU is visible.")
flags.DEFINE_bool("cased_tokenization", False, "Keep case and accents (default: per the model folder).")
# Ours.
flags.DEFINE_string("ip", "127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
flags.DEFINE_integer("max_texts_per_request", 10000, "Larger requests get HTTP 413.")
flags.DEFINE_integer("max_request_bytes", 16 * 1024 * 1024, "Larger bodies get HTTP 413.")

def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise UserError("-model_dir is required")
    if FLAGS.cpu:
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
    try:
        server = build_server(
            FLAGS.model_dir, FLAGS.tuned_model_dir, FLAGS.ckpt_name, FLAGS.config_name, FLAGS.max_seq_len,
            FLAGS.pooling_strategy, FLAGS.pooling_layer, FLAGS.mask_cls_sep, FLAGS.max_batch_size,
            FLAGS.num_worker, FLAGS.ip, FLAGS.http_port or FLAGS.port,
            lowercase=False if FLAGS.cased_tokenization else None,
            max_texts_per_request=FLAGS.max_texts_per_request, max_request_bytes=FLAGS.max_request_bytes)
    except OSError as error:
        raise UserError(f"cannot listen on {FLAGS.ip}:{FLAGS.http_port or FLAGS.port}: {error}") from None
    status = server.status()
    logging.info("serving %s", {key: status[key] for key in ("weights", "pooling_strategy", "pooling_layer",
                                                            "max_seq_len", "width")})
    print(f"ready: {server.url}  (POST /encode, GET /status; Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, _stop)  # `kill` shuts down as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)


if __name__ == "__main__":
    cli.run(main, argv=normalize_argv(sys.argv))
