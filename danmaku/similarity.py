"""The embedding map of terms (`python -m danmaku.danmaku_similarity`): terms files, encoders, the figure."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from absl import logging

from common.cli import UserError

# The seed's term list (Danmaku_similarity.py `return_message_list`) and its projection: PCA to 50
# dimensions, then scikit-learn's TSNE(learning_rate=100, perplexity=45, n_iter=2000, random_state=0)
# with that release's default random initialisation.
SEED_TERMS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seed_terms.txt")
SEED_TSNE = dict(perplexity=45.0, learning_rate=100.0, max_iter=2000, init="random")


def read_terms(path: str) -> tuple[list[str], list[str] | None]:
    """terms file -> (terms, groups or None); duplicates keep their first line."""
    terms, groups, seen = [], [], {}
    try:
        handle = open(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such terms file") from None
    with handle:
        try:
            lines = list(enumerate(handle, start=1))
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not valid UTF-8 ({error.reason})") from None
    for line_number, line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0].strip() or (len(fields) == 2 and not fields[1].strip()):
            raise UserError(f"{path}:{line_number}: expected 'term' or 'term<TAB>group', got {line!r}")
        term = fields[0].strip()
        if term in seen:
            logging.warning("%s:%d: %r already on line %d; skipped", path, line_number, term, seen[term])
            continue
        seen[term] = line_number
        terms.append(term)
        groups.append(fields[1].strip() if len(fields) == 2 else None)
    if len(terms) < 2:
        raise UserError(f"{path}: needs at least 2 terms, found {len(terms)}")
    if all(group is None for group in groups):
        return terms, None
    return terms, [group or "(none)" for group in groups]


def local_encode_fn(model_dir: str, tuned_model_dir: str | None = None, ckpt_name: str | None = None,
                    pooling_strategy: str = "REDUCE_MEAN", pooling_layer: Sequence[int] = (-1,),
                    max_seq_len: int = 25) -> Callable[[list[str]], np.ndarray]:
    from common.embeddings import SentenceEncoder
    from common import model_source

    loaded = model_source.load(model_dir, weights=tuned_model_dir, ckpt_name=ckpt_name)
    try:
        encoder = SentenceEncoder(loaded.encoder, loaded.tokenizer, pooling=pooling_strategy,
                                  layers=tuple(int(layer) for layer in pooling_layer), layer_indexing="encoder_blocks",
                                  max_seq_length=min(max_seq_len, loaded.config.max_position_embeddings))
    except ValueError as error:
        raise UserError(str(error)) from None
    return encoder.encode


def client_encode_fn(ip: str, port: int, timeout_ms: int) -> Callable[[list[str]], np.ndarray]:
    from danmaku.client import BertClient, BertClientError

    client = BertClient(ip=ip, port=port, timeout=timeout_ms, check_length=False)

    def encode(texts):
        try:
            return client.encode(texts)
        except BertClientError as error:
            raise UserError(str(error)) from None
    return encode


def draw_similarity_map(terms: Sequence[str], groups: Sequence[str] | None, out: str,
                        panels: Sequence[tuple[str, Callable[[list[str]], np.ndarray]]], method: str = "tsne",
                        pca_dims: int = 50, random_seed: int = 0, tsne: dict | None = None) -> str:
    """One scatter per (title, encode_fn) panel, side by side, in one PNG; returns its path. `tsne`:
    t-SNE settings (default the seed's, `SEED_TSNE`; a perplexity not below the number of terms is
    lowered to a third of them, as scikit-learn refuses it)."""
    tsne = {**SEED_TSNE, **(tsne or {})}
    from common.plotting import new_figure, project_2d, save_figure, scatter_2d

    figure, axes = new_figure(1, len(panels), size=(8.0 * len(panels), 7.5))
    axes = np.atleast_1d(axes)
    for ax, (title, encode) in zip(axes, panels):
        vectors = np.asarray(encode(list(terms)), dtype=np.float32)
        if vectors.ndim != 2:
            raise UserError(f"{title}: expected one vector per term, got shape {vectors.shape} "
                            "(pooling NONE gives one per token)")
        points = project_2d(vectors, method=method, pca_dims=pca_dims, random_seed=random_seed,
                            cap_perplexity=False, **tsne)
        scatter_2d(points, labels=groups, texts=list(terms), ax=ax, title=title)
    return save_figure(figure, out)
