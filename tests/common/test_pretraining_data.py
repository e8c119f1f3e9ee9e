"""common/pretraining_data.py: Google BERT's pre-training instances, checked statistically over many instances."""

import collections
import os
import random
import re

import numpy as np
import pytest

from common import pretraining_data
from common.tokenization import write_vocab

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_DOCUMENTS = 40
WORDS_PER_DOCUMENT = 6
# Every document has its own words and "##" pieces, so a token names the document it came from.
VOCAB = SPECIAL + [f"d{d}_{k}" for d in range(NUM_DOCUMENTS) for k in range(WORDS_PER_DOCUMENT)] + \
    [f"##d{d}_{k}" for d in range(NUM_DOCUMENTS) for k in range(3)]
VOCAB_IDS = {word: index for index, word in enumerate(VOCAB)}


def _document_of(token):
    match = re.fullmatch(r"(?:##)?d(\d+)_\d+", token)
    return int(match.group(1)) if match else None


def _corpus(seed=0, num_documents=NUM_DOCUMENTS, sentences=(120, 200), unknown_share=0.02):
    """Long documents of short sentences (3-6 words, some followed by "##" pieces, a few unknown words)."""
    rng = random.Random(seed)
    documents = []
    for d in range(num_documents):
        document = []
        for _ in range(rng.randint(*sentences)):
            tokens = []
            for _ in range(rng.randint(3, 6)):
                tokens.append("oov" if rng.random() < unknown_share else f"d{d}_{rng.randrange(WORDS_PER_DOCUMENT)}")
                tokens.extend(f"##d{d}_{rng.randrange(3)}" for _ in range(rng.choice([0, 0, 0, 1, 2])))
            document.append(" ".join(tokens))
        documents.append(document)
    return documents


def _original_tokens(instance):
    tokens = list(instance.tokens)
    for position, label in zip(instance.masked_lm_positions, instance.masked_lm_labels):
        tokens[position] = label
    return tokens


def _segments(instance):
    """(A, B) token lists of an instance with its masked tokens restored, checking the [CLS] A [SEP] B [SEP] layout."""
    tokens = _original_tokens(instance)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    separators = [index for index, token in enumerate(tokens) if token == "[SEP]"]
    assert len(separators) == 2
    first = separators[0]
    assert instance.segment_ids == [0] * (first + 1) + [1] * (len(tokens) - first - 1)
    return tokens[1:first], tokens[first + 1:-1]


@pytest.fixture(scope="module")
def pair_instances():
    return pretraining_data.create_training_instances(
        _corpus(), VOCAB, max_seq_length=64, dupe_factor=8, short_seq_prob=0.0, masked_lm_prob=0.15,
        max_predictions_per_seq=12, random_seed=3)


def test_next_sentence_share_and_random_segments_come_from_other_documents(pair_instances):
    assert len(pair_instances) > 8000
    random_next = [instance.is_random_next for instance in pair_instances]
    assert abs(np.mean(random_next) - 0.5) <= 0.02
    lengths = [len(instance.tokens) for instance in pair_instances]
    assert max(lengths) == 64 and np.mean(lengths) > 55  # chunks are filled up to the target
    for instance in pair_instances:
        segment_a, segment_b = _segments(instance)
        assert segment_a and segment_b
        documents_a = {_document_of(token) for token in segment_a} - {None}
        documents_b = {_document_of(token) for token in segment_b} - {None}
        assert len(documents_a) == 1 and len(documents_b) == 1  # a segment is a span of one document
        assert (documents_a != documents_b) == instance.is_random_next


def test_masking_follows_google_counts_and_80_10_10(pair_instances):
    masked = kept = replaced = 0
    non_special = 0
    for instance in pair_instances:
        original = _original_tokens(instance)
        positions = instance.masked_lm_positions
        # Google's count, rounding as Python's round() does, and only over non-[CLS]/[SEP] tokens.
        assert len(positions) == min(12, max(1, int(round(len(instance.tokens) * 0.15))))
        assert positions == sorted(set(positions))
        assert all(original[position] not in ("[CLS]", "[SEP]") for position in positions)
        assert instance.masked_lm_labels == [original[position] for position in positions]
        for position in positions:
            token = instance.tokens[position]
            masked += token == "[MASK]"
            kept += token == original[position]
            replaced += token not in ("[MASK]", original[position])
        non_special += len(instance.tokens) - 3
    total = masked + kept + replaced
    assert abs(masked / total - 0.8) <= 0.02
    assert abs(kept / total - 0.1) <= 0.02
    assert abs(replaced / total - 0.1) <= 0.02
    all_tokens = sum(len(instance.tokens) for instance in pair_instances)
    # round(len(tokens) * p) counts [CLS]/[SEP] in len(tokens) and rounds 9.6 up: slightly over p.
    assert 0.15 < total / all_tokens < 0.16 and 0.155 < total / non_special < 0.17


def _words(tokens):
    """Position groups of whole words: a token and its following "##" pieces."""
    groups = []
    for index, token in enumerate(tokens):
        continues = groups and groups[-1][-1] == index - 1 and tokens[index - 1] not in ("[CLS]", "[SEP]")
        if token.startswith("##") and continues:
            groups[-1].append(index)
        elif token not in ("[CLS]", "[SEP]"):
            groups.append([index])
    return groups


def _split_words(instances):
    split = 0
    for instance in instances:
        masked = set(instance.masked_lm_positions)
        for group in _words(_original_tokens(instance)):
            split += 0 < len(masked & set(group)) < len(group)
    return split


def test_whole_word_masking_never_splits_a_word(pair_instances):
    documents = _corpus(seed=1, num_documents=10, sentences=(40, 60))
    instances = pretraining_data.create_training_instances(
        documents, VOCAB, max_seq_length=48, dupe_factor=4, max_predictions_per_seq=10, random_seed=5,
        do_whole_word_mask=True)
    assert _split_words(instances) == 0
    assert _split_words(pair_instances) > 100  # token-level masking does split words: the check can fail
    pieces = 0
    for instance in instances:
        limit = min(10, max(1, int(round(len(instance.tokens) * 0.15))))
        assert 1 <= len(instance.masked_lm_positions) <= limit  # words that would overshoot are skipped
        pieces += sum(label.startswith("##") for label in instance.masked_lm_labels)
    assert pieces > 100


def test_trim_counts_match_googles_truncation_loop():
    rng = random.Random(0)
    for _ in range(2000):
        length_a, length_b, limit = rng.randint(1, 90), rng.randint(1, 90), rng.randint(2, 70)
        a, b = length_a, length_b
        removed_a = removed_b = 0
        while a + b > limit:  # Google's truncate_seq_pair: trim the longer one (B on ties)
            if a > b:
                a, removed_a = a - 1, removed_a + 1
            else:
                b, removed_b = b - 1, removed_b + 1
        trim_a, trim_b = pretraining_data._trim_counts(np.array([length_a]), np.array([length_b]), limit)
        assert (int(trim_a[0]), int(trim_b[0])) == (removed_a, removed_b)


def test_short_seq_prob_and_front_and_back_truncation():
    short_sentences = [[f"d{d}_1 d{d}_2 d{d}_3 d{d}_4"] * 48 for d in range(8)]  # 3 chunks of 16 each

    def mean_length(short_seq_prob):
        instances = pretraining_data.create_training_instances(
            short_sentences, VOCAB, max_seq_length=64, dupe_factor=10, short_seq_prob=short_seq_prob, random_seed=2,
            next_sentence=False)
        return np.mean([len(instance.tokens) for instance in instances])

    assert mean_length(0.0) > 60  # chunks of whole sentences filled up to 62 tokens
    assert mean_length(1.0) < 45  # a target drawn from [2, 62] for every document

    long_sentences = [[" ".join(f"d{d}_{k % WORDS_PER_DOCUMENT}" for k in range(40))] * 6 for d in range(8)]
    instances = pretraining_data.create_training_instances(
        long_sentences, VOCAB, max_seq_length=32, dupe_factor=20, random_seed=2, next_sentence=False)
    assert all(len(instance.tokens) == 32 for instance in instances)
    # A 40-token sentence is trimmed to 30 token by token from a random end: its first word varies.
    first_words = collections.Counter(_original_tokens(instance)[1] for instance in instances)
    assert len(first_words) == WORDS_PER_DOCUMENT * 8


def test_mlm_only_instances_of_programme_ids(tmp_path):
    vocab = SPECIAL + [f"p{index}" for index in range(50)]
    rng = random.Random(4)
    # Viewers' programme-id streams; ids p50.. are outside the vocabulary and become [UNK].
    documents = [[" ".join(f"p{rng.randrange(55)}" for _ in range(rng.randint(5, 15)))
                  for _ in range(rng.randint(1, 8))] for _ in range(60)]
    instances = pretraining_data.create_training_instances(
        documents, vocab, max_seq_length=24, dupe_factor=3, max_predictions_per_seq=4, next_sentence=False,
        random_seed=9)
    assert instances
    streams = [" ".join(" ".join(sentence.split()) for sentence in document) for document in documents]
    unknown = 0
    for instance in instances:
        tokens = _original_tokens(instance)
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[SEP]" not in tokens[1:-1]
        assert instance.segment_ids == [0] * len(tokens) and not instance.is_random_next
        assert len(tokens) <= 24 and 1 <= len(instance.masked_lm_positions) <= 4
        unknown += tokens.count("[UNK]")
        # A contiguous run of one viewer's stream (unknown ids shown as [UNK]).
        words = (r"p\d+" if token == "[UNK]" else re.escape(token) for token in tokens[1:-1])
        pattern = r"(^| )" + " ".join(words) + r"( |$)"
        assert any(re.search(pattern, stream) for stream in streams)
    assert unknown > 0

    write_vocab(vocab, tmp_path / "vocab.txt")
    stats = pretraining_data.write_pretraining_data(
        documents, str(tmp_path / "ids"), str(tmp_path / "vocab.txt"), num_workers=1, progress=False,
        max_seq_length=24, dupe_factor=3, max_predictions_per_seq=4, next_sentence=False, random_seed=9)
    assert stats["instances"] == len(instances)
    masked_labels = [label for instance in instances for label in instance.masked_lm_labels]
    assert stats["masked_tokens"] == len(masked_labels)
    assert stats["masked_unk_share"] == pytest.approx(masked_labels.count("[UNK]") / len(masked_labels))
    assert 0 < stats["masked_unk_share"] < 0.3
    dataset = pretraining_data.make_pretraining_dataset(stats["files"], 1000, 24, 4, is_training=False,
                                                        next_sentence=False)
    batch = next(iter(dataset))
    assert "next_sentence_labels" not in batch and int(batch["segment_ids"].numpy().max()) == 0


def _rows(features):
    """Every instance's features as one hashable row, for comparing sets of instances whatever their order."""
    names = sorted(features)
    return collections.Counter(
        tuple(np.concatenate([np.asarray(features[name][row], dtype=np.float64).ravel() for name in names]).tolist())
        for row in range(len(features["input_ids"])))


def test_written_shards_are_worker_independent_streamed_and_parse_back(tmp_path):
    documents = _corpus(seed=6, num_documents=30, sentences=(5, 30))
    write_vocab(VOCAB, tmp_path / "vocab.txt")
    settings = dict(max_seq_length=40, dupe_factor=3, max_predictions_per_seq=6, random_seed=11,
                    documents_per_block=8, do_whole_word_mask=True)

    read_ahead = []

    def documents_fn():  # a corpus streamed from a generator: count what was read before the first block is done
        for index, document in enumerate(documents):
            read_ahead.append(index)
            yield document

    one = pretraining_data.write_pretraining_data(documents_fn, str(tmp_path / "one"), str(tmp_path / "vocab.txt"),
                                                  num_shards=3, num_workers=1, progress=False, **settings)
    two = pretraining_data.write_pretraining_data(documents, str(tmp_path / "two"), str(tmp_path / "vocab.txt"),
                                                  num_shards=3, num_workers=2, progress=True, **settings)
    assert [os.path.basename(path) for path in one["files"]] == [f"one-0000{i}-of-00003.tfrecord" for i in range(3)]
    for path_one, path_two in zip(one["files"], two["files"]):
        assert open(path_one, "rb").read() == open(path_two, "rb").read()
    assert {key: value for key, value in one.items() if key != "files"} == \
        {key: value for key, value in two.items() if key != "files"}
    assert one["documents"] == 30 and one["instances"] > 100
    assert len(read_ahead) == 30
    sizes = [os.path.getsize(path) for path in one["files"]]
    assert max(sizes) < 1.2 * min(sizes)  # instances are dealt evenly to the shards

    instances = pretraining_data.create_training_instances(documents, VOCAB, **settings)
    expected = pretraining_data.instances_to_features(instances, VOCAB_IDS, 40, 6)
    dataset = pretraining_data.make_pretraining_dataset(str(tmp_path / "one-*.tfrecord"), 64, 40, 6, is_training=False)
    batches = list(dataset.as_numpy_iterator())
    parsed = {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
    assert sorted(parsed) == sorted(expected)
    assert parsed["masked_lm_weights"].dtype == np.float32 and parsed["input_ids"].dtype == np.int32
    assert _rows(parsed) == _rows(expected)
    assert one["masked_tokens"] == int(expected["masked_lm_weights"].sum())
    assert one["random_next_share"] == pytest.approx(expected["next_sentence_labels"].mean())

    other_seed = pretraining_data.create_training_instances(documents, VOCAB, **dict(settings, random_seed=12))
    assert _rows(pretraining_data.instances_to_features(other_seed, VOCAB_IDS, 40, 6)) != _rows(expected)


def test_forked_workers_write_the_same_files(tmp_path):
    """Without TensorFlow loaded, workers are forked (here they were spawned): the same bytes either way."""
    import json
    import subprocess
    import sys

    documents = _corpus(seed=10, num_documents=24, sentences=(3, 8))
    write_vocab(VOCAB, tmp_path / "vocab.txt")
    (tmp_path / "corpus.json").write_text(json.dumps(documents))
    settings = dict(max_seq_length=32, dupe_factor=2, documents_per_block=6, num_shards=2, random_seed=4)
    script = (
        "import json, sys\n"
        "from common import parallel, pretraining_data\n"
        "assert parallel.fork_is_safe() and 'tensorflow' not in sys.modules\n"
        f"pretraining_data.write_pretraining_data(json.load(open({str(tmp_path / 'corpus.json')!r})), "
        f"{str(tmp_path / 'forked')!r}, {str(tmp_path / 'vocab.txt')!r}, num_workers=2, progress=False, "
        f"**{settings!r})\n")
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", script], cwd=repository, check=True, timeout=120)
    here = pretraining_data.write_pretraining_data(documents, str(tmp_path / "here"), str(tmp_path / "vocab.txt"),
                                                   num_workers=1, progress=False, **settings)
    for path in here["files"]:
        forked = tmp_path / os.path.basename(path).replace("here", "forked")
        assert open(path, "rb").read() == forked.read_bytes()


def test_streaming_reads_only_a_few_blocks_ahead(tmp_path):
    documents = _corpus(seed=7, num_documents=40, sentences=(3, 6))
    write_vocab(VOCAB, tmp_path / "vocab.txt")
    read = []
    read_when_tokenizing = []

    def documents_fn():
        for index, document in enumerate(documents):
            read.append(index)
            yield document

    def tokenize(sentence):
        read_when_tokenizing.append(len(read))
        return sentence.split()

    pretraining_data.write_pretraining_data(documents_fn, str(tmp_path / "s"), str(tmp_path / "vocab.txt"),
                                            tokenize=tokenize, num_workers=1, progress=False, max_seq_length=32,
                                            dupe_factor=1, documents_per_block=4)
    assert read_when_tokenizing[0] <= 12  # the first block is processed after reading at most three blocks
    assert len(read) == 40


def _first_documents(path):
    """The document of segment A of every record of a TFRecord file, in file order."""
    import tensorflow as tf

    documents = []
    for record in tf.data.TFRecordDataset(path):
        example = tf.train.Example.FromString(record.numpy())
        ids = example.features.feature["input_ids"].int64_list.value
        documents.append(next(_document_of(VOCAB[token_id]) for token_id in ids[1:]
                              if _document_of(VOCAB[token_id]) is not None))
    return documents


def test_shards_are_shuffled_as_a_whole_and_failures_leave_nothing(tmp_path):
    documents = _corpus(seed=8, num_documents=40, sentences=(8, 16))
    write_vocab(VOCAB, tmp_path / "vocab.txt")
    settings = dict(max_seq_length=32, dupe_factor=4, documents_per_block=4, num_shards=2, num_workers=1,
                    progress=False)
    in_blocks = pretraining_data.write_pretraining_data(documents, str(tmp_path / "plain"), str(tmp_path / "vocab.txt"),
                                                        shuffle=False, **settings)
    shuffled = pretraining_data.write_pretraining_data(documents, str(tmp_path / "mixed"), str(tmp_path / "vocab.txt"),
                                                       **settings)
    plain_order = _first_documents(in_blocks["files"][0])
    mixed_order = _first_documents(shuffled["files"][0])
    assert sorted(plain_order) == sorted(mixed_order)
    # Tasks take 4 documents of the seeded global document order at a time; without the final shuffle a file holds
    # them task after task, with it they are mixed.
    order = pretraining_data._document_order(pretraining_data._settings(), 40)
    task_of = np.empty(40, dtype=np.int64)
    task_of[order] = np.arange(40) // 4
    ranks = np.arange(len(plain_order))
    assert np.corrcoef(ranks, task_of[plain_order])[0, 1] > 0.9
    assert abs(np.corrcoef(ranks, task_of[mixed_order])[0, 1]) < 0.2
    assert abs(np.corrcoef(ranks, np.array(plain_order))[0, 1]) < 0.3  # the documents themselves were shuffled
    assert sorted(os.listdir(tmp_path)) == sorted(["vocab.txt"] + [os.path.basename(path) for path in
                                                                   in_blocks["files"] + shuffled["files"]])

    def failing_documents():
        yield from documents[:20]
        raise RuntimeError("corpus read error")

    with pytest.raises(RuntimeError, match="corpus read error"):
        pretraining_data.write_pretraining_data(failing_documents, str(tmp_path / "failed"),
                                                str(tmp_path / "vocab.txt"), **settings)
    assert not [name for name in os.listdir(tmp_path) if "failed" in name]


def test_blocks_of_documents_and_small_tasks_still_draw_random_next():
    blocks = list(pretraining_data._iter_blocks([[str(index)] for index in range(9)], 4))
    assert [len(block) for block in blocks] == [4, 4, 1]
    assert list(pretraining_data._iter_blocks(iter([]), 4)) == []
    documents = _corpus(seed=9, num_documents=5, sentences=(3, 5))
    instances = pretraining_data.create_training_instances(documents, VOCAB, max_seq_length=32, dupe_factor=2,
                                                           documents_per_block=2)
    assert any(instance.is_random_next for instance in instances)


def test_tasks_cover_every_document_and_pass_once_and_long_documents_split_their_passes(monkeypatch):
    documents = _corpus(seed=11, num_documents=30, sentences=(2, 60))
    monkeypatch.setattr(pretraining_data, "_TASK_TOKENS", 400)  # many documents alone, some split by passes
    settings = pretraining_data._settings(dupe_factor=5, documents_per_block=4)
    vocab = pretraining_data._Vocabulary(VOCAB)
    writer = pretraining_data._TokenStoreWriter(None)
    writer.append(*pretraining_data._tokenize_documents(documents, vocab, None))
    store = writer.finish()
    covered = collections.Counter()
    sizes = []
    for task_index, (index, document_ids, first_pass, end_pass) in enumerate(pretraining_data._tasks(store, settings)):
        assert index == task_index and 1 <= len(document_ids) <= 4
        tokens = sum(int(store.offsets[store.documents[d, 1]] - store.offsets[store.documents[d, 0]])
                     for d in document_ids)
        # Within the budget, or one document that alone exceeds it in a single pass.
        assert tokens * (end_pass - first_pass) <= 400 or (len(document_ids) == 1 and end_pass - first_pass == 1)
        sizes.append((len(document_ids), end_pass - first_pass))
        covered.update((int(d), p) for d in document_ids for p in range(first_pass, end_pass))
    assert covered == collections.Counter({(d, p): 1 for d in range(30) for p in range(5)})
    assert any(passes < 5 for _, passes in sizes) and any(count > 1 for count, _ in sizes)
    instances = pretraining_data.create_training_instances(documents, VOCAB, dupe_factor=5, documents_per_block=4,
                                                           max_seq_length=32)
    assert all(_segments(instance)[1] for instance in instances)


def test_random_next_segments_come_from_the_whole_corpus():
    """Google draws the random-next document from all documents: with 2,000 documents and tasks of 256, the share of
    random-next segments from the source document's own 256-document neighbourhood is about 256/2,000, not 1."""
    num_documents, block = 2000, 256
    vocab = SPECIAL + [f"d{d}" for d in range(num_documents)]
    documents = [[f"d{d} d{d}"] * 3 for d in range(num_documents)]  # 2-token sentences naming their document
    instances = pretraining_data.create_training_instances(
        documents, vocab, max_seq_length=8, dupe_factor=1, short_seq_prob=0.0, masked_lm_prob=0.01,
        max_predictions_per_seq=1, random_seed=5, documents_per_block=block)
    same = total = 0
    for instance in instances:
        if not instance.is_random_next:
            continue
        segment_a, segment_b = _segments(instance)
        source, other = (int(segment[0][1:]) for segment in (segment_a, segment_b))
        assert source != other
        total += 1
        same += source // block == other // block
    assert total > 1000
    expected = (block - 1) / (num_documents - 1)  # ~0.128 (the last neighbourhood is smaller)
    assert abs(same / total - expected) < 0.035
    # Documents are shuffled before the dupe passes, as Google's rng.shuffle(all_documents): the first instances
    # made (before the final shuffle) do not come from the first documents of the corpus.
    order = pretraining_data._document_order(pretraining_data._settings(random_seed=5), num_documents)
    assert sorted(order.tolist()) == list(range(num_documents)) and order[:block].max() > 4 * block


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="MASK"):
        pretraining_data.create_training_instances([["a b"]], ["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    with pytest.raises(ValueError, match="at least 2 non-empty documents"):
        pretraining_data.create_training_instances([["d0_1 d0_2", "d0_3"], [""]], VOCAB)
    with pytest.raises(TypeError, match="document 1 is a string"):
        pretraining_data.create_training_instances([["a"], "a b c"], VOCAB)
    with pytest.raises(ValueError, match="max_seq_length"):
        pretraining_data.create_training_instances([["a"]], VOCAB, max_seq_length=4)
    with pytest.raises(ValueError, match="picklable"):
        write_vocab(VOCAB, tmp_path / "vocab.txt")
        pretraining_data.write_pretraining_data([["a"]], str(tmp_path / "x"), str(tmp_path / "vocab.txt"),
                                                tokenize=lambda text: text.split(), num_workers=2)
    assert os.listdir(tmp_path) == ["vocab.txt"]
