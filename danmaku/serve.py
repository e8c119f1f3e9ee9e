r"""Serve sentence embeddings over HTTP with bert-as-service's command line.

    python -m danmaku.serve -model_dir chinese_L-12_H-768_A-12/ -tuned_model_dir=danmaku_model \
        -ckpt_name=model.ckpt-12000 -num_worker=1 -pooling_layer=-1
    python -m danmaku.serve --model_dir=... --pooling_strategy=REDUCE_MEAN --pooling_layer -4 -3 -2 -1 \
        --max_seq_len=25 --max_batch_size=256 --port=8125

Every flag of bert-serving-start is accepted (`-port_in`, `-port_data`, `-port_result` too); the few
that have no effect here say so in one line each. Single- and double-dash flags both work;
`-pooling_layer -4 -3` (bert-as-service's space-separated list) is accepted as well as
`-pooling_layer=-4,-3`. The server listens on 127.0.0.1 unless `-ip` says otherwise:
`POST /encode {"id": 1, "texts": [...]}` -> `{"id": 1, "result": [...]}` (bert-as-service's HTTP
proxy), `GET /status`.
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

# bert-as-service's server flags (`bert-serving-start`, version 1.10: names, defaults and meanings).
flags.DEFINE_string("model_dir", None, "Folder of the pretrained BERT model (Google, ours, Hugging Face).")
flags.DEFINE_string("tuned_model_dir", None, "Folder of a further trained model (e.g. danmaku.run_pretraining's).")
flags.DEFINE_string("ckpt_name", None, "Checkpoint file name (default: bert_model.ckpt in -model_dir, the "
                    "newest model.ckpt-N in -tuned_model_dir).")
flags.DEFINE_string("config_name", "bert_config.json", "Config file name inside -model_dir.")
flags.DEFINE_string("graph_tmp_dir", None, "Ignored: no frozen graph file is written.")
flags.DEFINE_string("max_seq_len", "25", "Maximum sequence length (tokens, [CLS]/[SEP] included; > 3); NONE: "
                    "each request's longest text.")
flags.DEFINE_bool("cased_tokenization", False, "Keep case and accents (default: per the model folder).")
flags.DEFINE_list("pooling_layer", ["-2"], "Encoder block(s) pooled: -1 the last, -2 the one before (default), "
                  "0 the first; several are concatenated.")
flags.DEFINE_enum("pooling_strategy", "REDUCE_MEAN",
                  ["REDUCE_MEAN", "REDUCE_MAX", "REDUCE_MEAN_MAX", "CLS_TOKEN", "FIRST_TOKEN", "SEP_TOKEN",
                   "LAST_TOKEN", "NONE"], "Pooling of the token vectors into one sentence vector.")
flags.DEFINE_bool("mask_cls_sep", False, "Zero the input mask of [CLS] and [SEP]: hidden from attention and "
                  "left out of the pooling.")
flags.DEFINE_bool("show_tokens_to_client", False, "Send the tokens of each text to clients that ask.")
flags.DEFINE_integer("port", 8125, "HTTP port (-port_in and -port_data are aliases).")
flags.DEFINE_integer("port_out", None, "Ignored: one HTTP port serves both ways (-port_result is an alias).")
flags.DEFINE_integer("http_port", None, "Alias of -port (bert-as-service's HTTP port).")
flags.DEFINE_integer("http_max_connect", 10, "Most requests worked on at once; more get HTTP 503.")
flags.DEFINE_string("cors", "*", "Access-Control-Allow-Origin of every answer ('' for none).")
flags.DEFINE_integer("num_worker", 1, "Encoding worker threads (they share one model).")
flags.DEFINE_integer("max_batch_size", 256, "Most sentences the model runs at once; larger requests are split.")
flags.DEFINE_integer("priority_batch_size", 16, "Requests of at most this many texts go before larger ones.")
flags.DEFINE_bool("cpu", False, "Run on the CPU even if a GPU is visible.")
flags.DEFINE_bool("xla", False, "Compile the model with XLA (jit_compile; batch lengths padded to multiples of 8).")
flags.DEFINE_bool("fp16", False, "Ignored: the model computes and answers in float32.")
flags.DEFINE_float("gpu_memory_fraction", 0.5, "Ignored: TensorFlow grows GPU memory as needed.")
flags.DEFINE_list("device_map", [], "GPU ids to use (the model runs on the first; workers share it).")
flags.DEFINE_integer("prefetch_size", 10, "Ignored: HTTP threads tokenize requests while the model runs.")
flags.DEFINE_bool("fixed_embed_length", False, "With -max_seq_len NONE and pooling NONE, answer "
                  "max_position_embeddings positions instead of the request's longest text.")
flags.DEFINE_bool("verbose", False, "Log every request (debug level).")
flags.DEFINE_bool("version", False, "Print the version and exit.")
# Ours.
flags.DEFINE_string("ip", "127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
flags.DEFINE_integer("max_texts_per_request", 10000, "Larger requests get HTTP 413.")
flags.DEFINE_integer("max_request_bytes", 16 * 1024 * 1024, "Larger bodies get HTTP 413.")
flags.DEFINE_integer("max_response_bytes", 512 * 1024 * 1024, "Answers estimated larger get HTTP 413.")
flags.DEFINE_integer("http_max_open", 256, "Most open connections; the longest-idle one is closed for a new one.")
flags.DEFINE_float("http_idle_timeout", 15.0, "Seconds an idle keep-alive connection stays open.")
flags.DEFINE_float("http_read_timeout", 30.0, "Seconds a client has to send a whole request.")
flags.DEFINE_float("request_timeout", 600.0, "Seconds a request may wait for its vectors; then 503 and dropped.")
flags.DEFINE_float("max_batch_seconds", 0.5, "Large requests are cut into chunks that take about this long "
                   "(measured), at most -max_batch_size texts: a small request waits at most that; 0: chunks of "
                   "-max_batch_size, as bert-as-service.")
flags.DEFINE_bool("merge_requests", False, "Encode waiting requests together, up to -max_batch_size texts (small "
                  "ones only with small ones); off: one request's chunk a batch, as bert-as-service.")

IGNORED = {  # bert-serving-start flags that have no effect here, and why
    "graph_tmp_dir": "no frozen graph file is written (the model runs in TensorFlow 2 directly)",
    "port_out": "one HTTP port serves requests and answers",
    "fp16": "the model computes and answers in float32 (the original's fp16 graph targets GPUs)",
    "gpu_memory_fraction": "TensorFlow 2 grows GPU memory as needed",
    "prefetch_size": "HTTP threads tokenize requests while the model runs; there is no prefetch queue",
}


def ignored_flag_lines() -> list[str]:
    """One line per bert-serving-start flag given that has no effect here."""
    return [f"-{name} is ignored: {why}" for name, why in IGNORED.items() if FLAGS[name].present]


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    del argv
    from danmaku.client import __version__

    if FLAGS.version:
        print(f"danmaku.serve {__version__} (bert-as-service {__version__} semantics over HTTP)")
        return
    if not FLAGS.model_dir:
        raise UserError("-model_dir is required")
    if FLAGS.verbose:
        logging.set_verbosity(logging.DEBUG)
    for line in ignored_flag_lines():
        logging.warning("%s", line)
    import tensorflow as tf
    if FLAGS.cpu:
        tf.config.set_visible_devices([], "GPU")
    elif FLAGS.device_map:
        if not all(index.isdigit() for index in FLAGS.device_map):
            raise UserError(f"-device_map takes GPU ids (0, 1, ...), got {' '.join(FLAGS.device_map)}")
        gpus = tf.config.list_physical_devices("GPU")
        chosen = [gpus[int(index)] for index in FLAGS.device_map if int(index) < len(gpus)]
        if chosen:
            tf.config.set_visible_devices(chosen[:1], "GPU")
        else:
            logging.warning("-device_map %s names no visible GPU (%d visible); running where TensorFlow "
                            "places it", ",".join(FLAGS.device_map), len(gpus))
    settings = {name: FLAGS[name].value for name in ("model_dir", "tuned_model_dir", "ckpt_name", "config_name",
                                                       "cased_tokenization", "port", "http_port", "cpu",
                                                       "device_map", "verbose", "ip")}
    try:
        server = build_server(
            FLAGS.model_dir, FLAGS.tuned_model_dir, FLAGS.ckpt_name, FLAGS.config_name, FLAGS.max_seq_len,
            FLAGS.pooling_strategy, FLAGS.pooling_layer, FLAGS.mask_cls_sep, FLAGS.max_batch_size,
            FLAGS.num_worker, FLAGS.ip, FLAGS.http_port or FLAGS.port,
            lowercase=False if FLAGS.cased_tokenization else None,
            show_tokens_to_client=FLAGS.show_tokens_to_client, fixed_embed_length=FLAGS.fixed_embed_length,
            xla=FLAGS.xla, info=settings, priority_batch_size=FLAGS.priority_batch_size,
            merge_requests=FLAGS.merge_requests, batch_seconds=FLAGS.max_batch_seconds or None,
            http_max_connect=FLAGS.http_max_connect, cors=FLAGS.cors,
            max_texts_per_request=FLAGS.max_texts_per_request, max_request_bytes=FLAGS.max_request_bytes,
            max_response_bytes=FLAGS.max_response_bytes, max_open_connections=FLAGS.http_max_open,
            idle_timeout=FLAGS.http_idle_timeout, read_timeout=FLAGS.http_read_timeout,
            request_timeout=FLAGS.request_timeout)
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
