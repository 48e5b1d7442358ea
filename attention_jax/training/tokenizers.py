"""Byte and character tokenizers for the training corpus.

`ByteTokenizer` maps UTF-8 bytes to ids 0-255. `CharTokenizer` maps each
character seen in the training split to its own id and every other
character to the reserved unknown id 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from attention_jax.training.errors import UserInputError

TOKENIZER_CHOICES = ("bytes", "chars")


class Tokenizer(Protocol):
    kind: str
    # The unit of one token in reports: "byte" or "character".
    unit: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...

    def token_text(self, token_id: int) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens, with a vocabulary of 256."""

    kind = "bytes"
    unit = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        """Return the UTF-8 bytes of `text` as int32 ids."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """Return the text of byte ids; invalid UTF-8 sequences become U+FFFD."""
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """Return the character of one byte id; a byte that is not ASCII is written as `\\xNN`."""
        if token_id < 128:
            return chr(token_id)
        return f"\\x{token_id:02x}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class CharTokenizer:
    """Characters as tokens: id 0 is unknown, ids 1.. are the characters of `alphabet` in order."""

    kind = "chars"
    unit = "character"
    unknown_id = 0
    unknown_text = "\ufffd"

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("`alphabet` should contain each character once")
        self.alphabet = "".join(sorted(alphabet))
        self._codepoints = np.array([ord(char) for char in self.alphabet], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from the distinct characters of `text`."""
        return cls("".join(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> np.ndarray:
        """Return the ids of the characters of `text`; characters outside the alphabet get id 0."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if len(self._codepoints) == 0:
            return np.zeros(len(codepoints), dtype=np.int32)
        positions = np.searchsorted(self._codepoints, codepoints)
        clipped = np.minimum(positions, len(self._codepoints) - 1)
        known = self._codepoints[clipped] == codepoints
        return np.where(known, clipped + 1, self.unknown_id).astype(np.int32)

    def decode(self, ids) -> str:
        """Return the text of character ids; the unknown id becomes U+FFFD."""
        return "".join(self.token_text(int(token_id)) for token_id in np.asarray(ids).ravel())

    def token_text(self, token_id: int) -> str:
        if token_id == self.unknown_id or not 0 < token_id <= len(self.alphabet):
            return self.unknown_text
        return self.alphabet[token_id - 1]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphabet": self.alphabet}


def build_tokenizer(kind: str, train_text: str) -> Tokenizer:
    """Return a tokenizer of `kind` ("bytes" or "chars"); "chars" takes its alphabet from `train_text`."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "chars":
        return CharTokenizer.from_text(train_text)
    raise UserInputError(f"tokenizer must be one of {', '.join(TOKENIZER_CHOICES)}, but got {kind!r}")


def tokenizer_from_dict(values: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict` output."""
    kind = values.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "chars":
        return CharTokenizer(values["alphabet"])
    raise UserInputError(f"tokenizer kind must be one of {', '.join(TOKENIZER_CHOICES)}, but got {kind!r}")
