"""Tests of the training library: corpus split, tokenizers, baseline, model causality, resume."""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.training import corpus as corpus_lib
from attention_jax.training.batches import evaluation_windows, pad_to_batches, training_batch
from attention_jax.training.config import TrainConfig
from attention_jax.training.errors import UserInputError
from attention_jax.training.metrics import unigram_cross_entropy_bits
from attention_jax.training.model import ModelConfig, TransformerLM
from attention_jax.training.run import train
from attention_jax.training.tokenizers import ByteTokenizer, CharTokenizer


def _attention_jax_importable() -> bool:
    try:
        from attention_jax.nn import MultiHeadAttention  # noqa: F401
    except ImportError:
        return False
    return True


ATTENTION_KINDS = [
    "flax",
    pytest.param(
        "attention_jax",
        marks=pytest.mark.skipif(
            not _attention_jax_importable(), reason="attention_jax.nn.MultiHeadAttention is not importable"
        ),
    ),
]


def write_corpus(folder, count: int, lines_per_file: int = 30) -> list[str]:
    """Write `count` small Python-like files into `folder` and return their names."""
    names = []
    for index in range(count):
        name = f"module_{index:02d}.py"
        lines = [f"def function_{index}_{line}(value):\n    return value * {line} + {index}\n" for line in range(lines_per_file)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
        names.append(name)
    return names


def tiny_config(data, output, **overrides) -> TrainConfig:
    options = dict(
        data=str(data),
        output=str(output),
        attention="flax",
        width=16,
        num_layers=2,
        num_heads=2,
        mlp_ratio=2,
        seq_len=24,
        batch_size=4,
        steps=6,
        warmup_steps=1,
        learning_rate=1e-2,
        min_learning_rate=1e-3,
        eval_every=3,
        eval_windows=8,
        log_every=1,
        checkpoint_every=2,
        snippet_len=12,
        sample_tokens=4,
        validation_fraction=0.3,
    )
    options.update(overrides)
    return TrainConfig(**options)


# Corpus and split.


def test_split_is_by_file_and_deterministic(tmp_path):
    names = write_corpus(tmp_path, 20)
    first = corpus_lib.load_corpus(str(tmp_path), validation_fraction=0.3)
    second = corpus_lib.load_corpus(str(tmp_path), validation_fraction=0.3)

    train_names = {document.name for document in first.train}
    validation_names = {document.name for document in first.validation}
    assert train_names.isdisjoint(validation_names)
    assert train_names | validation_names == set(names)
    assert validation_names
    assert train_names
    assert [document.name for document in second.validation] == [document.name for document in first.validation]
    for document in first.train + first.validation:
        assert document.text == (tmp_path / document.name).read_text(encoding="utf-8")


def test_split_ignores_other_files(tmp_path):
    write_corpus(tmp_path, 20)
    before = {document.name for document in corpus_lib.load_corpus(str(tmp_path), validation_fraction=0.3).validation}
    (tmp_path / "zzz_extra.py").write_text("x = 1\n", encoding="utf-8")
    after = {document.name for document in corpus_lib.load_corpus(str(tmp_path), validation_fraction=0.3).validation}
    assert before == after - {"zzz_extra.py"}


def test_split_keeps_both_sides_nonempty(tmp_path):
    write_corpus(tmp_path, 2)
    for fraction in (0.01, 0.99):
        corpus = corpus_lib.load_corpus(str(tmp_path), validation_fraction=fraction)
        assert len(corpus.train) == 1
        assert len(corpus.validation) == 1


def test_single_file_splits_by_text(tmp_path):
    write_corpus(tmp_path, 1, lines_per_file=50)
    path = tmp_path / "module_00.py"
    corpus = corpus_lib.load_corpus(str(path), validation_fraction=0.2)
    text = path.read_text(encoding="utf-8")
    assert corpus.train_text + corpus.validation_text == text
    assert corpus.train_text.endswith("\n")
    assert 0.1 < len(corpus.validation_text) / len(text) < 0.3


def test_corpus_skips_binary_and_hidden_files(tmp_path):
    write_corpus(tmp_path, 3)
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "notes.txt").write_text("secret", encoding="utf-8")
    corpus = corpus_lib.load_corpus(str(tmp_path), validation_fraction=0.3)
    names = {document.name for document in corpus.train + corpus.validation}
    assert names == {"module_00.py", "module_01.py", "module_02.py"}
    assert corpus.skipped_files == 2


def test_corpus_rejects_missing_and_empty(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        corpus_lib.load_corpus(str(tmp_path / "missing"))
    with pytest.raises(UserInputError, match="no text found"):
        corpus_lib.load_corpus(str(tmp_path))


def test_stdlib_files_exclude_tests_and_packages():
    root = corpus_lib.stdlib_folder()
    paths = corpus_lib.list_files(root, suffixes=(".py",), skip_folders=corpus_lib._STDLIB_SKIPPED_FOLDERS)
    relative = [os.path.relpath(path, root).split(os.sep) for path in paths]
    assert relative
    assert ["os.py"] in relative
    assert all("site-packages" not in parts and "test" not in parts for parts in relative)
    assert paths == sorted(paths)


# Tokenizers, batches and the baseline.


def test_byte_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("héllo\n")
    assert ids.tolist() == list("héllo\n".encode("utf-8"))
    assert tokenizer.decode(ids) == "héllo\n"
    assert tokenizer.token_text(ord("a")) == "a"
    assert tokenizer.token_text(0xC3) == "\\xc3"


def test_char_tokenizer_maps_unknown_to_reserved_id():
    tokenizer = CharTokenizer.from_text("banana")
    assert tokenizer.vocab_size == 4
    assert tokenizer.encode("abnz").tolist() == [1, 2, 3, CharTokenizer.unknown_id]
    assert tokenizer.decode(tokenizer.encode("nab")) == "nab"
    assert tokenizer.decode([0]) == "\ufffd"
    assert CharTokenizer(tokenizer.to_dict()["alphabet"]).alphabet == tokenizer.alphabet


def test_unigram_baseline_matches_hand_computed_entropy():
    # Training "aab" over the vocabulary {a, b, c} with add-one smoothing gives
    # p(a) = 3/6, p(b) = 2/6, p(c) = 1/6; validation is "abc".
    train_ids = np.array([0, 0, 1])
    validation_ids = np.array([0, 1, 2])
    expected = -(math.log2(3 / 6) + math.log2(2 / 6) + math.log2(1 / 6)) / 3
    assert unigram_cross_entropy_bits(train_ids, validation_ids, vocab_size=3) == pytest.approx(expected)


def test_unigram_baseline_of_uniform_bytes_is_eight_bits():
    ids = np.arange(256).repeat(1000)
    assert unigram_cross_entropy_bits(ids, ids, vocab_size=256) == pytest.approx(8.0)


def test_training_batch_depends_on_seed_and_step():
    tokens = np.arange(1000, dtype=np.int32)
    batch = training_batch(tokens, batch_size=3, window=7, seed=1, step=5)
    assert batch.shape == (3, 7)
    assert np.array_equal(batch, training_batch(tokens, batch_size=3, window=7, seed=1, step=5))
    assert not np.array_equal(batch, training_batch(tokens, batch_size=3, window=7, seed=1, step=6))
    assert np.all(np.diff(batch, axis=1) == 1)


def test_evaluation_windows_cover_and_pad():
    tokens = np.arange(100, dtype=np.int32)
    windows = evaluation_windows(tokens, count=50, window=11)
    assert windows.shape == (9, 11)
    assert windows[0, 0] == 0
    assert windows[-1, -1] == 99
    batches, weights = pad_to_batches(windows, batch_size=4)
    assert batches.shape == (3, 4, 11)
    assert weights.sum() == 9
    assert weights[-1].tolist() == [1.0, 0.0, 0.0, 0.0]


# Model.


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_model_is_causal(attention):
    config = ModelConfig(vocab_size=11, max_len=13, width=12, num_layers=2, num_heads=3, attention=attention)
    model = TransformerLM(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, 11)
    changed_position = 7
    changed = tokens.at[:, changed_position].set((tokens[:, changed_position] + 1) % 11)

    forward = nnx.jit(lambda model, tokens: model(tokens))
    logits = forward(model, tokens)
    changed_logits = forward(model, changed)
    assert logits.shape == (2, 13, 11)
    np.testing.assert_array_equal(logits[:, :changed_position], changed_logits[:, :changed_position])
    assert not np.allclose(logits[:, changed_position:], changed_logits[:, changed_position:])


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_attention_weights_are_causal_distributions(attention):
    config = ModelConfig(vocab_size=11, max_len=13, width=12, num_layers=2, num_heads=3, attention=attention)
    model = TransformerLM(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, 11)
    weights = nnx.jit(lambda model, tokens: model.attention_weights(tokens))(model, tokens)
    assert len(weights) == 2
    for layer_weights in weights:
        assert layer_weights.shape == (2, 3, 13, 13)
        np.testing.assert_allclose(layer_weights.sum(-1), 1.0, rtol=1e-5)
        assert float(jnp.abs(jnp.triu(layer_weights, k=1)).max()) == 0.0


def test_model_config_rejects_heads_not_dividing_width():
    with pytest.raises(UserInputError, match="num_heads=5 must divide width=12"):
        ModelConfig(vocab_size=11, max_len=13, width=12, num_heads=5)


def test_model_config_round_trips_through_json(tmp_path):
    config = ModelConfig(vocab_size=11, max_len=13, width=12, num_layers=2, num_heads=3, attention="flax")
    config.save(str(tmp_path / "model_config.json"))
    assert ModelConfig.load(str(tmp_path / "model_config.json")) == config


# Training runs.


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data, 12)
    config = tiny_config(data, tmp_path / "out")
    uninterrupted = train(config)
    checkpoints = tmp_path / "out" / "checkpoints"
    saved_steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
    assert saved_steps == [4, 6]

    # Deleting the last checkpoint leaves the folder as a run stopped after step 4 would.
    shutil.rmtree(checkpoints / "6")
    resumed = train(config)

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert resumed.step == 6
    assert metrics["steps_this_run"] == 2
    assert [entry["step"] for entry in metrics["history"]["train"]] == [1, 2, 3, 4, 5, 6]
    assert resumed.validation_bits_per_token == pytest.approx(uninterrupted.validation_bits_per_token, rel=1e-5)


def test_resume_rejects_different_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data, 12)
    train(tiny_config(data, tmp_path / "out"))
    with pytest.raises(UserInputError, match="different model"):
        train(tiny_config(data, tmp_path / "out", width=24))


@pytest.mark.parametrize("steps, expected", [(400, 50), (1000, 50), (200, 25), (20, 2), (3, 0)])
def test_default_warmup_fits_short_runs(steps, expected):
    config = TrainConfig(steps=steps)
    config.validate()
    assert config.effective_warmup_steps == expected


def test_explicit_warmup_is_kept():
    assert TrainConfig(steps=20, warmup_steps=7).effective_warmup_steps == 7
    with pytest.raises(UserInputError, match="warmup_steps=20 must be less than steps=20"):
        TrainConfig(steps=20, warmup_steps=20).validate()


@pytest.mark.parametrize("seq_len, expected", [(128, 64), (64, 64), (32, 32), (2, 2)])
def test_default_snippet_fits_short_windows(seq_len, expected):
    config = TrainConfig(seq_len=seq_len)
    config.validate()
    assert config.effective_snippet_len == expected


def test_explicit_snippet_is_checked():
    assert TrainConfig(seq_len=32, snippet_len=10).effective_snippet_len == 10
    with pytest.raises(UserInputError, match="snippet_len must be between 2 and seq_len=32, but got 64"):
        TrainConfig(seq_len=32, snippet_len=64).validate()
