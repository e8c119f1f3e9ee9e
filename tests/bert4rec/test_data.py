"""bert4rec/data.py: reading `user item` files, MovieLens conversion, vocabulary and history files."""

import json
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from bert4rec import data


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------- reading


def test_read_groups_users_in_order_of_first_appearance(tmp_path):
    path = _write(tmp_path / "toy.txt", "7 10\n3 11\n7 12\n\n3 10\n7 10\n")
    sequences = data.read_user_item_file(path)
    assert sequences.users.tolist() == [7, 3]
    assert sequences.offsets.tolist() == [0, 3, 5]
    assert sequences.sequence(0).tolist() == [10, 12, 10]  # file order kept within a user
    assert sequences.sequence(1).tolist() == [11, 10]


@pytest.mark.parametrize("text, line, fragment", [
    ("1 2\n1 x\n", 2, "two integers"),
    ("1 2\n1 2 3\n", 2, "2 columns"),
    ("1 2\n1\n", 2, "2 columns"),
    ("", 1, "empty file"),
    ("\n \n", 1, "empty file"),
    ("1 2\n1 99999999999999999999\n", 2, "64 bits"),
    ("5 1\n5 2\n9 3\n6 4\n6 5\n", 3, "user 9 has 1 item"),
])
def test_read_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(data.DataError) as error:
        data.read_user_item_file(path)
    assert f"{path}:{line}:" in str(error.value)
    assert fragment in str(error.value)


def test_short_user_error_points_at_the_line_where_that_user_starts(tmp_path):
    path = _write(tmp_path / "bad.txt", "1 1\n1 2\n2 1\n3 5\n3 6\n")
    with pytest.raises(data.DataError, match=r"bad\.txt:3: user 2 has 1 item"):
        data.read_user_item_file(path)


def test_fast_and_line_by_line_parsers_agree(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    lines = [f"{user}{' ' * int(rng.integers(1, 3))}{item}" for user, item in
             zip(np.repeat(np.arange(1, 60), 5), rng.integers(0, 10**12, size=295))]
    path = _write(tmp_path / "big.txt", "\r\n".join(lines) + "\n\n")
    fast = data.read_user_item_file(path)
    monkeypatch.setattr(data, "_parse_user_item_bytes_fast", lambda raw: None)
    slow = data.read_user_item_file(path)
    for field in ("users", "offsets", "items"):
        assert np.array_equal(getattr(fast, field), getattr(slow, field))
    assert len(fast) == 59


def test_negative_ids_are_read_by_the_exact_parser(tmp_path):
    sequences = data.read_user_item_file(_write(tmp_path / "neg.txt", "-1 5\n-1 -6\n"))
    assert sequences.users.tolist() == [-1] and sequences.items.tolist() == [5, -6]


# ---------------------------------------------------------------------------------------------- vocabulary


def test_vocab_orders_items_by_frequency_ties_by_first_appearance(tmp_path):
    #   counts: 30 -> 3, 20 -> 2, 10 -> 2, 40 -> 1;  20 is seen before 10.
    path = _write(tmp_path / "toy.txt", "1 20\n1 30\n1 10\n2 30\n2 40\n2 20\n3 10\n3 30\n")
    sequences = data.read_user_item_file(path)
    vocab = data.build_vocab(sequences)
    assert vocab.item_ids.tolist() == [30, 20, 10, 40]
    assert vocab.item_counts.tolist() == [0, 3, 2, 2, 1, 0, 0, 0]  # over all vocab_size ids
    assert (vocab.num_items, vocab.mask_id, vocab.vocab_size) == (4, 5, 8)
    assert vocab.to_model_ids([40, 30]).tolist() == [4, 1]
    assert vocab.to_original_items([1, 4]).tolist() == [30, 40]
    assert vocab.item_to_model_id[20] == 2 and vocab.model_id_to_item[2] == 20
    with pytest.raises(KeyError):
        vocab.to_model_ids([99])

    vocab_path = tmp_path / "toy.vocab"
    data.save_vocab(vocab_path, vocab)
    loaded = data.load_vocab(vocab_path)
    assert loaded.item_ids.tolist() == vocab.item_ids.tolist() and loaded.vocab_size == 8 and loaded.mask_id == 5
    assert json.loads(vocab_path.read_text())["special_tokens"]["[MASK]"] == 5


def test_vocab_size_matches_the_original_ml1m_config():
    vocab = data.Vocab(item_ids=np.arange(1, 3417), counts=np.ones(3416, dtype=np.int64))
    assert vocab.vocab_size == 3420  # bert_config_ml-1m_64.json


def test_histories_round_trip(tmp_path):
    path = tmp_path / "toy.his"
    data.save_histories(path, np.array([7, 3]), np.array([0, 3, 5]), np.array([1, 2, 3, 4, 5]))
    assert data.load_histories(path) == {7: [1, 2, 3], 3: [4, 5]}
    (tmp_path / "broken.his").write_text("{\n  oops")
    with pytest.raises(data.DataError, match=r"broken\.his:2:"):
        data.load_histories(tmp_path / "broken.his")


def test_feature_spec_has_the_original_names_and_shapes():
    spec = data.bert4rec_feature_spec(200, 40)
    assert spec["input_ids"].shape == [200] and spec["masked_lm_positions"].shape == [40]
    assert spec["info"].shape == [1] and spec["masked_lm_weights"].dtype == tf.float32
    assert sorted(spec) == sorted(["info", "input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids",
                                   "masked_lm_weights"])


# ---------------------------------------------------------------------------------------------- conversion


def _fake_ml1m_zip(path):
    # Movies 50 and 60 have fewer than 5 ratings (dropped) and so does user 9 (dropped); user 1 keeps 4 ratings since
    # the filter counts raw ratings in one pass, like SASRec; ties at time 100 are broken by movie id.
    ratings = []
    for movie in (30, 10, 20):
        for user in (5, 6, 7, 8, 1):
            ratings.append((user, movie, 4, 100 if movie != 30 else 90 + user))
    ratings += [(user, 50, 3, 50) for user in (5, 6, 7, 8)]
    ratings += [(9, movie, 5, 10) for movie in (10, 20, 30)] + [(1, 60, 5, 1)]
    ratings += [(user, movie, 1, 5) for user in (5, 6) for movie in (40,)] + [(user, 40, 2, 200) for user in (7, 8, 1)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings))
        archive.writestr("ml-1m/movies.dat", "10::Alpha (1990)::Drama\n20::B\xe9ta (1991)::Comedy\n"
                         "30::Gamma (1992)::War\n40::Delta (1993)::Horror\n50::Epsilon (1994)::Drama\n".encode("latin-1"))
    return ratings


def test_movielens_1m_zip_conversion(tmp_path):
    _fake_ml1m_zip(tmp_path / "ml-1m.zip")
    path = data.prepare_dataset("ml-1m", tmp_path)
    lines = open(path).read().splitlines()
    # Users by first appearance (5, 6, 7, 8, 1) -> 1..5; items by first appearance (30, 10, 20, 40) -> 1..4.
    assert lines[:4] == ["1 4", "1 1", "1 2", "1 3"]  # user 5: 40@5, 30@95, then 10@100 and 20@100 by movie id
    assert lines[-4:] == ["5 1", "5 2", "5 3", "5 4"]  # user 1: 30@91, 10@100, 20@100, 40@200
    assert len(lines) == 20 and {line.split()[0] for line in lines} == {"1", "2", "3", "4", "5"}
    titles = json.loads((tmp_path / "ml-1m.titles.json").read_text(encoding="utf-8"))
    assert titles == {"1": "Gamma (1992)", "2": "Alpha (1990)", "3": "B\xe9ta (1991)", "4": "Delta (1993)"}
    assert data.prepare_dataset("ml-1m", tmp_path) == path  # a ready .txt is used as is


def test_movielens_20m_csv_zip_conversion(tmp_path):
    rows = [(user, movie, 100 * movie + user) for movie in (3, 1, 5, 7, 9) for user in (2, 4, 6, 8, 10)]
    with zipfile.ZipFile(tmp_path / "ml-20m.zip", "w") as archive:
        archive.writestr("ml-20m/ratings.csv", "userId,movieId,rating,timestamp\n" +
                         "".join(f"{u},{m},3.5,{t}\n" for u, m, t in rows))
        archive.writestr("ml-20m/movies.csv", 'movieId,title,genres\n1,"One, The (2000)",Drama\n3,Three (2001),War\n')
    path = data.prepare_dataset("ml-20m", tmp_path)
    lines = open(path).read().splitlines()
    assert lines[:5] == ["1 2", "1 1", "1 3", "1 4", "1 5"]  # user 2 saw movie 1 (time 102) before movie 3 (302)
    assert json.loads((tmp_path / "ml-20m.titles.json").read_text()) == {"1": "Three (2001)", "2": "One, The (2000)"}


def test_missing_movielens_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MOVIELENS_URLS, "ml-1m", (tmp_path / "unreachable" / "ml-1m.zip").as_uri())
    with pytest.raises(data.DataError) as error:
        data.prepare_dataset("ml-1m", tmp_path / "data")
    message = str(error.value)
    assert "ml-1m.zip" in message and "ml-1m.txt" in message and str(tmp_path / "data") in message
    assert not (tmp_path / "data").exists() or os.listdir(tmp_path / "data") == []


def test_unknown_dataset_names_the_expected_file(tmp_path):
    with pytest.raises(data.DataError, match=r"Beauty\.txt: no such file"):
        data.prepare_dataset("Beauty", tmp_path)


def test_ml100k_conversion_reproduces_the_shared_file(tmp_path, shared_data):
    wheel = data.recbole_wheel_path()
    if not os.path.isfile(wheel):
        pytest.skip(f"{wheel} is not cached (tests never download it)")
    path = data.prepare_dataset("ml-100k", tmp_path, cache_dir=os.path.dirname(wheel))  # cached: no download
    with open(path, "rb") as ours, open(os.path.join(shared_data, "ml-100k.txt"), "rb") as reference:
        assert ours.read() == reference.read()
    sequences = data.read_user_item_file(path)
    assert (len(sequences), data.build_vocab(sequences).num_items, len(sequences.items)) == (943, 1349, 99287)
    titles = json.loads((tmp_path / "ml-100k.titles.json").read_text(encoding="utf-8"))
    assert len(titles) == 1349 and titles["1"] == "Kolya (1996)"
