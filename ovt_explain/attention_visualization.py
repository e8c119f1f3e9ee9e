r"""Explains a fine-tuned viewed/not_viewed model's predictions with raw attention, rollout and attention flow.

    python -m ovt_explain.attention_visualization --checkpoint=out/cls --users=out/cls/viewed.txt \
        --out=figs/ [--programs=programs.json] [--max_users=5] [--methods=raw,rollout,flow] \
        [--graph_tokens=0] [--top_edges=5] [--dump_json]

For each user (a users file: the original's plain text, one history a line, or the JSON samples
bert_cls writes, viewed.txt / not_viewed.txt / predict_missed.txt; the first max_seq_length - 2
programmes are the input), in `--out`:
- `images/<label>/<method>/<user>_{raw_attention,attention_rollout,attention_flow}_graph.png` (a), as
  the original: the layered attention graph, nodes = tokens per layer, edge width = weight, each
  node's 5 (`--top_edges`) strongest edges, the strongest dark red, edges touching [CLS]/[SEP] left
  out; `--graph_tokens=N` draws only [CLS] + the N - 1 most important programmes;
- `<user>_heatmap.png` (b): per-layer heatmaps of the [CLS] row for each method;
- `<user>_importance.png` (c): bar charts of the programmes' importance to [CLS] at the last layer,
  labelled "channel time title" when `--programs` gives the programme table;
- `<user>_prediction.png` (d): the predicted probabilities;
- `explanations.html`: one self-contained page (data and script inline, no network) to pick a user,
  method and layer and hover the programmes;
- with `--dump_json`, `datas/<user>_<name>.json`: `{"tokens": [...], "data": {"L1_to_L0": matrix, ...}}`
  as the original's `save_datas` writes them (rows: that layer's tokens, columns: input tokens; for
  flow only the rows in "rows" are computed, others are null).
Flow is exact max-flow (`ovt_explain.attention.attention_flow`), for the [CLS] row unless
`--flow_rows=all`.
"""

from __future__ import annotations

import os

if __package__ in (None, ""):  # run as a file, `python ovt_explain/attention_visualization.py`
    import _run_as_file  # noqa: F401

from common import cli  # noqa: E402

cli.quiet_tensorflow()

import dataclasses  # noqa: E402
import html  # noqa: E402
from importlib import resources  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from typing import Mapping, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from common.io_utils import read_json  # noqa: E402
from ovt_explain import attention as attention_lib  # noqa: E402

METHOD_TITLES = {"raw": "raw attention", "rollout": "attention rollout", "flow": "attention flow"}
# The original's file names: images/{label}/{method}/{user}_{name}_graph.png, datas/{user}_{name}.json.
ORIGINAL_NAMES = {"raw": "raw_attention", "rollout": "attention_rollout", "flow": "attention_flow"}


@dataclasses.dataclass
class Explanation:
    user_id: str
    tokens: list[str]                 # [CLS] programmes [SEP] as the model saw them
    probabilities: list[float]        # per label
    labels: list[str]
    # method -> [layers, n, n] per-layer attribution to the INPUT tokens of layer l+1's tokens
    # (raw: the layer's own attention); rows not computed are NaN (flow: only `flow_rows`).
    layers: dict[str, np.ndarray]
    flow_rows: list[int]

    def importance(self, method: str, row: int = 0) -> np.ndarray:
        return self.layers[method][-1, row]


def explain_attention(attention, methods: Sequence[str] = attention_lib.METHODS,
                      flow_rows: Sequence[int] | None = (0,), num_workers: int | None = None
                      ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per-layer matrices of each method for one example's attention `[layers, heads, n, n]`."""
    raw = attention_lib.raw_attention(attention)
    layers_count, n, _ = raw.shape
    result: dict[str, np.ndarray] = {}
    rows = list(range(n)) if flow_rows is None else sorted(set(int(r) for r in flow_rows if r < n))
    for method in methods:
        if method == "raw":
            result[method] = raw
        elif method == "rollout":
            result[method] = attention_lib.attention_rollout(attention, all_layers=True)
        elif method == "flow":
            matrices = np.full((layers_count, n, n), np.nan)
            matrices[:, rows, :] = attention_lib.attention_flow_all_layers(attention, rows, num_workers=num_workers)
            result[method] = matrices
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(attention_lib.METHODS)}")
    return result, rows


def explain_users(classifier, histories: Mapping[str, Sequence[str]], methods=attention_lib.METHODS,
                  flow_rows: Sequence[int] | None = (0,), batch_size: int = 32,
                  num_workers: int | None = None) -> list[Explanation]:
    """Runs the model on each user's history and explains the prediction."""
    from ovt_explain.modeling import predict

    users = list(histories)
    features = classifier.encode([histories[user] for user in users])
    probabilities, attentions = predict(classifier.model, features, batch_size, return_attention=True)
    explanations = []
    for index, user in enumerate(users):
        tokens = classifier.input_tokens(histories[user])
        layers, rows = explain_attention(attentions[index], methods, flow_rows, num_workers)
        explanations.append(Explanation(user, tokens, probabilities[index].tolist(), list(classifier.labels),
                                        layers, rows))
    return explanations


# ---- readable labels -----------------------------------------------------------------------------------

def read_program_table(path: str | None) -> dict[str, dict]:
    if not path:
        return {}
    return read_json(path, cli.UserError, expect=dict)


def token_label(token: str, programs: Mapping[str, dict], short: bool = False) -> str:
    entry = programs.get(token)
    if not isinstance(entry, dict):
        return token
    if short:
        return f"{entry.get('channel', '')} {str(entry.get('time', ''))[-5:]}".strip() or token
    parts = [str(entry.get(key, "")) for key in ("channel", "time", "title")]
    return " ".join(part for part in parts if part) or token


def _safe_name(user_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", user_id)[:80] or "user"


# ---- pictures ----------------------------------------------------------------------------------------------

def _label_font(labels: Sequence[str]):
    """A CJK-capable font when a programme title needs one (real programme tables are Japanese)."""
    from common.plotting import font_for

    return font_for(labels)


def _programme_positions(tokens: Sequence[str]) -> list[int]:
    return [i for i, token in enumerate(tokens) if token not in ("[CLS]", "[SEP]")]


def graph_positions(explanation: Explanation, method: str, graph_tokens: int) -> list[int]:
    """All tokens when they fit (or `graph_tokens` is 0, the original), else [CLS] + the most important
    programmes, in input order."""
    n = len(explanation.tokens)
    if graph_tokens <= 0 or n <= graph_tokens:
        return list(range(n))
    programmes = _programme_positions(explanation.tokens)
    importance = np.nan_to_num(explanation.importance(method))
    top = sorted(programmes, key=lambda i: -importance[i])[: max(1, graph_tokens - 1)]
    return sorted([0] + top)


def plot_attention_graph(explanation: Explanation, method: str, path: str, programs: Mapping[str, dict],
                         graph_tokens: int = 0, top_edges: int = 5, cls_edges: bool = False) -> None:
    """(a) the layered graph: node (l, i) at x = l, y = -position; edges from layer l to l-1, each
    node's `top_edges` strongest (the original: 5, edges touching [CLS] or [SEP] left out; `cls_edges`
    keeps [CLS]'s own row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from common.plotting import save_figure

    matrices = explanation.layers[method]
    layers_count = matrices.shape[0]
    shown = graph_positions(explanation, method, graph_tokens)
    special = {0, len(explanation.tokens) - 1}
    # [CLS] keeps its edges (its row is what the classifier reads); [SEP] and edges into them are left out.
    graph = nx.DiGraph()
    positions = {}
    for layer in range(layers_count + 1):
        for rank, token_index in enumerate(shown):
            node = (layer, token_index)
            graph.add_node(node)
            positions[node] = (layer * 2.0, -rank)
    red, blue = [], []
    for layer in range(1, layers_count + 1):
        for source in shown:
            row = matrices[layer - 1, source]
            if source == len(explanation.tokens) - 1 or (source == 0 and not cls_edges) or np.all(np.isnan(row)):
                continue
            targets = [t for t in shown if t not in special]
            ranked = sorted(targets, key=lambda t: -np.nan_to_num(row[t]))[:top_edges]
            for rank, target in enumerate(ranked):
                weight = float(np.nan_to_num(row[target]))
                graph.add_edge((layer, source), (layer - 1, target), weight=weight)
                (red if rank == 0 else blue).append(((layer, source), (layer - 1, target), weight))
    height = max(4.0, 0.35 * len(shown) + 1.5)
    figure, axes = plt.subplots(figsize=(2.2 * layers_count + 5, height))
    nx.draw_networkx_nodes(graph, positions, node_size=40, node_color="seagreen", ax=axes)
    for edges, color, scale in ((blue, "darkblue", 5.0), (red, "darkred", 10.0)):
        if edges:
            nx.draw_networkx_edges(graph, positions, edgelist=[(u, v) for u, v, _ in edges],
                                   width=[max(0.3, w * scale) for *_, w in edges], edge_color=color,
                                   arrows=False, ax=axes)
    labels = [token_label(explanation.tokens[token_index], programs) for token_index in shown]
    font = _label_font(labels)
    for rank, label in enumerate(labels):
        axes.text(-0.3, -rank, label, ha="right", va="center", fontsize=7, fontproperties=font)
    for layer in range(layers_count + 1):
        axes.text(layer * 2.0, 1.0, "input" if layer == 0 else f"L{layer}", ha="center", fontsize=8)
    axes.set_xlim(-7.0, layers_count * 2.0 + 0.5)
    axes.set_ylim(-len(shown), 1.8)
    axes.axis("off")
    axes.set_title(f"{explanation.user_id}: {METHOD_TITLES[method]} graph "
                   f"(dark red: each node's strongest edge)", fontsize=9)
    save_figure(figure, path)
    plt.close(figure)


def plot_cls_heatmaps(explanation: Explanation, methods: Sequence[str], path: str,
                      programs: Mapping[str, dict], row: int = 0) -> None:
    """(b) per method, the [CLS] row at every layer (top: last layer) over the programmes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plotting import save_figure

    columns = _programme_positions(explanation.tokens)
    labels = [token_label(explanation.tokens[i], programs, short=True) for i in columns]
    layers_count = explanation.layers[methods[0]].shape[0]
    figure, axes = plt.subplots(len(methods), 1, squeeze=False,
                                figsize=(max(6.0, 0.28 * len(columns) + 2.5), 1.0 + (0.35 * layers_count + 1.2) * len(methods)))
    for axis, method in zip(axes[:, 0], methods):
        values = explanation.layers[method][:, row, columns][::-1]
        image = axis.imshow(np.nan_to_num(values), aspect="auto", cmap="YlOrRd", interpolation="nearest")
        axis.set_yticks(range(layers_count), [f"L{layers_count - i}" for i in range(layers_count)], fontsize=7)
        axis.set_xticks(range(len(columns)), labels, rotation=90, fontsize=6, fontproperties=_label_font(labels))
        axis.set_title(f"{METHOD_TITLES[method]}: [CLS] row per layer", fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.025)
    figure.suptitle(explanation.user_id, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_importance(explanation: Explanation, methods: Sequence[str], path: str, programs: Mapping[str, dict],
                    top_tokens: int = 15, row: int = 0) -> None:
    """(c) the programmes' last-layer importance to [CLS], the top ones per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plotting import save_figure

    programmes = _programme_positions(explanation.tokens)
    figure, axes = plt.subplots(1, len(methods), squeeze=False, figsize=(5.5 * len(methods), 0.3 * top_tokens + 1.8))
    for axis, method in zip(axes[0], methods):
        importance = np.nan_to_num(explanation.importance(method, row))
        top = sorted(programmes, key=lambda i: -importance[i])[:top_tokens][::-1]
        axis.barh(range(len(top)), [importance[i] for i in top], color="tab:orange")
        labels = [f"{i}: {token_label(explanation.tokens[i], programs)}" for i in top]
        axis.set_yticks(range(len(top)), labels, fontsize=7, fontproperties=_label_font(labels))
        axis.set_title(METHOD_TITLES[method], fontsize=9)
        axis.set_xlabel("importance to [CLS] (last layer)", fontsize=8)
    figure.suptitle(explanation.user_id, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_prediction(explanation: Explanation, path: str) -> None:
    """(d) the predicted probability of each label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plotting import save_figure

    figure, axis = plt.subplots(figsize=(3.0, 3.2))
    colors = ["tab:blue", "tab:red"][: len(explanation.labels)]
    axis.bar(explanation.labels, explanation.probabilities, color=colors)
    for index, value in enumerate(explanation.probabilities):
        axis.text(index, value + 0.02, f"{value:.3f}", ha="center", fontsize=8)
    axis.set_ylim(0, 1.1)
    axis.set_title(f"{explanation.user_id}: prediction", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


# ---- JSON dumps and the HTML page ----------------------------------------------------------------------

def _rounded(matrix: np.ndarray, digits: int = 5) -> list:
    return [[None if np.isnan(v) else round(float(v), digits) for v in row] for row in matrix]


def dump_json(explanation: Explanation, method: str, path: str) -> None:
    """The original's format: {"tokens": [...], "data": {"L{i}_to_L{i-1}": matrix}} (+ computed "rows")."""
    from common.io_utils import atomic_write_text

    matrices = explanation.layers[method]
    document = {"tokens": explanation.tokens, "method": method,
                "rows": explanation.flow_rows if method == "flow" else list(range(len(explanation.tokens))),
                "data": {f"L{layer}_to_L{layer - 1}": _rounded(matrices[layer - 1])
                         for layer in range(1, matrices.shape[0] + 1)}}
    atomic_write_text(path, json.dumps(document, separators=(",", ":")) + "\n")


def write_html(explanations: Sequence[Explanation], methods: Sequence[str], path: str,
               programs: Mapping[str, dict], title: str = "Attention explanations") -> None:
    """One self-contained page: data as inline JSON, plain inline script, no network."""
    from common.io_utils import atomic_write_text

    users = []
    for explanation in explanations:
        users.append({
            "user_id": explanation.user_id, "tokens": explanation.tokens,
            "short_labels": [token_label(t, programs, short=True) for t in explanation.tokens],
            "labels_full": [token_label(t, programs) for t in explanation.tokens],
            "labels": explanation.labels, "probabilities": explanation.probabilities,
            "layers": {method: [[None if np.all(np.isnan(r)) else [round(float(v), 4) for v in r] for r in m]
                                for m in explanation.layers[method]] for method in methods},
        })
    payload = json.dumps({"users": users, "methods": list(methods),
                          "method_titles": {m: METHOD_TITLES[m] for m in methods}}, separators=(",", ":"))
    # "</" inside the JSON would end the script element early.
    payload = payload.replace("</", "<\\/")
    # The page (package data): __TITLE__ and __DATA__ are its placeholders.
    template = resources.files("ovt_explain").joinpath("attention_page.html").read_text(encoding="utf-8")
    page = template.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    atomic_write_text(path, page)


def visualize(checkpoint: str, users_path: str, out_dir: str, programs_path: str | None = None,
              methods: Sequence[str] = attention_lib.METHODS, max_users: int = 5, flow_rows: str = "cls",
              graph_tokens: int = 0, top_edges: int = 5, top_tokens: int = 15, dump: bool = False,
              num_workers: int | None = None, label: str | None = None, cls_edges: bool = False) -> dict:
    """Everything the CLI does, with plain arguments; returns the written paths. Graph pictures go to
    `out_dir/images/{label}/{method}/` and JSON dumps to `out_dir/datas/` as the original's; `label`
    defaults to the users file's name without extension (viewed, not_viewed, predict_missed)."""
    from common.checkpoints import CheckpointMismatchError
    from ovt_explain.logs import read_logs
    from ovt_explain.modeling import LoadedClassifier

    for method in methods:
        if method not in attention_lib.METHODS:
            raise cli.UserError(f"unknown method {method!r}; expected some of {', '.join(attention_lib.METHODS)}")
    histories = {user: history for user, history in read_logs(users_path).items() if history}
    if not histories:
        raise cli.UserError(f"{users_path}: no users with a history")
    histories = dict(list(histories.items())[:max_users])
    programs = read_program_table(programs_path)
    try:
        classifier = LoadedClassifier(checkpoint)
    except CheckpointMismatchError as error:
        raise cli.UserError(str(error)) from None
    rows = None if flow_rows == "all" else (0,)
    explanations = explain_users(classifier, histories, methods, rows, num_workers=num_workers)
    os.makedirs(out_dir, exist_ok=True)
    label = label or os.path.splitext(os.path.basename(users_path))[0]
    written = []
    for explanation in explanations:
        unknown = explanation.tokens.count("[UNK]")
        if unknown * 2 > len(explanation.tokens) - 2:
            logging.warning("%s: %d of %d programmes are not in the model's vocabulary ([UNK]): was the model "
                            "trained on logs of this period?", explanation.user_id, unknown,
                            len(explanation.tokens) - 2)
        name = _safe_name(explanation.user_id)
        stem = os.path.join(out_dir, name)
        for method in methods:
            folder = os.path.join(out_dir, "images", label, method)
            os.makedirs(folder, exist_ok=True)
            graph = os.path.join(folder, f"{name}_{ORIGINAL_NAMES[method]}_graph.png")
            plot_attention_graph(explanation, method, graph, programs, graph_tokens, top_edges, cls_edges)
            written.append(graph)
            if dump:
                os.makedirs(os.path.join(out_dir, "datas"), exist_ok=True)
                dump_path = os.path.join(out_dir, "datas", f"{name}_{ORIGINAL_NAMES[method]}.json")
                dump_json(explanation, method, dump_path)
                written.append(dump_path)
        plot_cls_heatmaps(explanation, methods, f"{stem}_heatmap.png", programs)
        plot_importance(explanation, methods, f"{stem}_importance.png", programs, top_tokens)
        plot_prediction(explanation, f"{stem}_prediction.png")
        written += [f"{stem}_heatmap.png", f"{stem}_importance.png", f"{stem}_prediction.png"]
        viewed = explanation.labels.index("viewed") if "viewed" in explanation.labels else 0
        logging.info("%s: P(%s) %.3f; top programme by %s", explanation.user_id, explanation.labels[viewed],
                     explanation.probabilities[viewed], ", ".join(
                         f"{m} {token_label(explanation.tokens[int(np.nanargmax(explanation.importance(m)[1:-1])) + 1], programs)}"
                         for m in methods))
    html_path = os.path.join(out_dir, "explanations.html")
    write_html(explanations, methods, html_path, programs,
               title=f"Attention explanations: {os.path.basename(users_path)}")
    written.append(html_path)
    return {"files": written, "explanations": explanations, "html": html_path}


FLAGS = flags.FLAGS


def define_flags():
    """Flags only when run as a script, so importing the module defines none."""
    flags.DEFINE_string("checkpoint", None, "bert_cls output_dir (or a checkpoint prefix inside it).")
    flags.DEFINE_string("users", None, "Logs file of the users to explain (e.g. bert_cls' viewed.txt).")
    flags.DEFINE_string("out", None, "Output folder for the PNGs, the HTML page and the JSON dumps.")
    flags.DEFINE_string("programs", None, "Programme table JSON: slot id -> {channel, time, title}.")
    flags.DEFINE_list("methods", list(attention_lib.METHODS), "Methods: raw, rollout, flow.")
    flags.DEFINE_integer("max_users", 5, "Explain at most this many users of the file (in file order).")
    flags.DEFINE_enum("flow_rows", "cls", ["cls", "all"], "Attention flow for the [CLS] row only, or every token.")
    flags.DEFINE_integer("graph_tokens", 0, "Tokens drawn in the layered graph: 0 = all (the original), else "
                         "[CLS] + the most important.")
    flags.DEFINE_integer("top_edges", 5, "Edges drawn per node in the layered graph (the original: 5).")
    flags.DEFINE_bool("cls_edges", False, "Also draw [CLS]'s own edges (the original leaves out every edge "
                      "touching [CLS] or [SEP]).")
    flags.DEFINE_string("label", None, "Picture folder images/<label>/<method>/ (default: the users file's name).")
    flags.DEFINE_integer("top_tokens", 15, "Programmes in the importance bar charts.")
    flags.DEFINE_bool("dump_json", False, "Also write each method's matrices as JSON, like the original.")
    flags.DEFINE_integer("num_workers", None, "Threads for attention flow (default: all cores).")
    flags.DEFINE_enum("mixed_precision", "none", ["none", "bfloat16", "float16"],
                      "Run the model in this precision (attention is cast to float64 before rollout and flow).")


def main(argv):
    del argv
    from ovt_explain.run_config import require_flags
    from common.optimization import set_mixed_precision

    require_flags(FLAGS, "checkpoint", "users", "out")
    set_mixed_precision(FLAGS.mixed_precision)
    result = visualize(FLAGS.checkpoint, FLAGS.users, FLAGS.out, FLAGS.programs, FLAGS.methods, FLAGS.max_users,
                       FLAGS.flow_rows, FLAGS.graph_tokens, FLAGS.top_edges, FLAGS.top_tokens, FLAGS.dump_json,
                       FLAGS.num_workers, FLAGS.label, FLAGS.cls_edges)
    logging.info("wrote %d files; open %s", len(result["files"]), result["html"])


if __name__ == "__main__":
    define_flags()
    cli.run(main)
