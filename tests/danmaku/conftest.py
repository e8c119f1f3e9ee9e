"""Fixtures of the danmaku tests: a tiny corpus, a character vocabulary and a tiny Google-layout model."""

import pytest
from danmaku_helpers import CORPUS_TEXT, make_model_folder


@pytest.fixture(scope="session")
def corpus_lines():
    return [line for line in CORPUS_TEXT.splitlines() if line.strip()] + list("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_lines):
    return make_model_folder(str(tmp_path_factory.mktemp("tiny_bert")), corpus_lines)
