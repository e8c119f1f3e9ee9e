"""The embedding map: terms files, and a before/after PNG from two local models."""

import matplotlib.image
import numpy as np
import pytest
from danmaku_helpers import make_model_folder

from common.cli import UserError
from danmaku.similarity import draw_similarity_map, local_encode_fn, read_terms


def test_terms_files_with_groups_duplicates_and_errors(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("\ufeff前方高能\t梗\n\nawsl\t梗\n草\n前方高能\t重复\n#弹幕\t梗\n", encoding="utf-8")
    terms, groups = read_terms(str(path))
    assert terms == ["前方高能", "awsl", "草", "#弹幕"]  # a leading '#' is part of a term, not a comment
    assert groups == ["梗", "梗", "(none)", "梗"]
    path.write_text("草\n泪目\n", encoding="utf-8")
    assert read_terms(str(path)) == (["草", "泪目"], None)
    path.write_text("草\n泪目\ta\tb\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{path}:2: expected 'term' or 'term<TAB>group'"):
        read_terms(str(path))
    path.write_text("草\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="at least 2 terms"):
        read_terms(str(path))


def test_before_after_map_is_one_png_with_two_panels(tmp_path, tiny_model_dir, corpus_lines):
    other_model = make_model_folder(str(tmp_path / "other"), corpus_lines, seed=1)
    terms = corpus_lines[:10]
    groups = ["梗", "梗", "笑", "笑", "梗", "感动", "感动", "打卡", "打卡", "梗"]
    out = tmp_path / "maps" / "map.png"
    first = local_encode_fn(tiny_model_dir, pooling_layer=[-1])
    second = local_encode_fn(other_model, pooling_layer=[-1])
    assert not np.allclose(first(terms), second(terms))
    # PCA only: t-SNE itself is common.plotting's (and tested there); it takes seconds on a busy machine.
    path = draw_similarity_map(terms, groups, str(out), [("before", first), ("after", second)], method="pca")
    image = matplotlib.image.imread(path)
    assert path == str(out) and image.ndim == 3 and image.shape[1] > 1.8 * image.shape[0]
    assert image[..., :3].std() > 0.05  # something was drawn
    assert not list((tmp_path / "maps").glob(".*"))  # no temp file left behind
