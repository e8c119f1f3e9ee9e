"""The embedding map: terms files, the seed's term list and t-SNE settings, a before/after PNG."""

import matplotlib.image
import numpy as np
import pytest
from danmaku_helpers import make_model_folder

from common.cli import UserError
from danmaku.similarity import SEED_TERMS_FILE, SEED_TSNE, draw_similarity_map, local_encode_fn, read_terms


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


def test_the_seed_term_list_is_shipped():
    terms, groups = read_terms(SEED_TERMS_FILE)
    assert len(terms) == 92 and groups is None
    assert terms[:3] == ["草", "哈哈哈", "待机"] and "哔哩哔哩 (゜-゜)つロ 干杯~" in terms and terms[-1] == "upd8"


def test_before_after_map_runs_t_sne_with_the_seed_settings(tmp_path, tiny_model_dir, corpus_lines, monkeypatch):
    import sklearn.manifold

    other_model = make_model_folder(str(tmp_path / "other"), corpus_lines, seed=1)
    terms = corpus_lines[:10]
    groups = ["梗", "梗", "笑", "笑", "梗", "感动", "感动", "打卡", "打卡", "梗"]
    out = tmp_path / "maps" / "map.png"
    first = local_encode_fn(tiny_model_dir, pooling_layer=[-1])
    second = local_encode_fn(other_model, pooling_layer=[-1])
    assert not np.allclose(first(terms), second(terms))
    settings = []

    class RecordingTSNE(sklearn.manifold.TSNE):
        def __init__(self, **kwargs):
            settings.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(sklearn.manifold, "TSNE", RecordingTSNE)
    # The seed's settings, but 250 iterations (scikit-learn's least) to keep the test quick.
    path = draw_similarity_map(terms, groups, str(out), [("before", first), ("after", second)],
                               tsne={"max_iter": 250})
    image = matplotlib.image.imread(path)
    assert path == str(out) and image.ndim == 3 and image.shape[1] > 1.8 * image.shape[0]
    assert image[..., :3].std() > 0.05  # something was drawn
    assert not list((tmp_path / "maps").glob(".*"))  # no temp file left behind
    assert len(settings) == 2
    assert {key: settings[0][key] for key in ("learning_rate", "init", "random_state")} == {
        "learning_rate": SEED_TSNE["learning_rate"], "init": "random", "random_state": 0}
    assert settings[0]["max_iter"] == 250 and settings[0]["perplexity"] == 3.0  # 45 >= 10 terms: a third of 9
    assert SEED_TSNE == {"perplexity": 45.0, "learning_rate": 100.0, "max_iter": 2000, "init": "random"}
