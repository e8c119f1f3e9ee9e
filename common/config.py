"""`BertConfig`: Google's `bert_config.json`, read, validated and written back unchanged."""

from __future__ import annotations

import dataclasses
import json
import os

from common.io_utils import atomic_write_text, read_json


class BertConfigError(ValueError):
    """A `bert_config.json` that cannot describe a model; the message names the file and key."""


# Activation names accepted in `hidden_act`: Google's own names plus the Hugging Face spellings.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_approximate", "relu", "tanh", "swish", "silu")


@dataclasses.dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02

    # Keys every Google `bert_config.json` carries; all are required when reading a file.
    REQUIRED_KEYS = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
    )

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "BertConfig") -> None:
        def fail(key, why):
            raise BertConfigError(f"{source}: key '{key}' {why} (got {getattr(self, key)!r})")

        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(key, "must be a positive integer")
        if isinstance(self.type_vocab_size, bool) or not isinstance(self.type_vocab_size, int) \
                or self.type_vocab_size < 0:
            fail("type_vocab_size", "must be a non-negative integer")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                fail(key, "must be a number in [0, 1)")
        if isinstance(self.initializer_range, bool) or not isinstance(self.initializer_range, (int, float)) \
                or self.initializer_range <= 0:
            fail("initializer_range", "must be a positive number")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            fail("hidden_act", f"must be one of {', '.join(SUPPORTED_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"must be a multiple of num_attention_heads={self.num_attention_heads}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- dict / JSON -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "BertConfig") -> "BertConfig":
        if not isinstance(values, dict):
            raise BertConfigError(f"{source}: expected a JSON object, got {type(values).__name__}")
        missing = [key for key in cls.REQUIRED_KEYS if key not in values]
        if missing:
            raise BertConfigError(f"{source}: missing key(s) {', '.join(repr(k) for k in missing)}")
        # Extra keys (e.g. Hugging Face's `model_type`) are ignored so users' files still load.
        config = cls.__new__(cls)
        for field in dataclasses.fields(cls):
            setattr(config, field.name, values[field.name])
        config.validate(source)
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        path = os.fspath(path)
        return cls.from_dict(read_json(path, BertConfigError), source=path)

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.REQUIRED_KEYS}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json_string())

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)
