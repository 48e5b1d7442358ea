"""Find, read and split the text files that make up a training corpus.

The default corpus is the `.py` source of the running Python's standard
library. Any text file, or folder searched recursively for text files, can
be used instead. The split into training and validation is by file, so no
validation text appears in training, and deterministic: it depends only on
each file's path relative to the corpus root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sysconfig

from attention_jax.training.errors import UserInputError

logger = logging.getLogger(__name__)

# Folders of the standard library that contain installed packages or tests, not library source.
_STDLIB_SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
# Cache and dependency folders, skipped in every corpus; hidden folders such as .git are skipped too.
_SKIPPED_FOLDERS = frozenset({"__pycache__", "node_modules"})
# A file whose first block contains a NUL byte is treated as binary.
_BINARY_PROBE_BYTES = 8192


@dataclasses.dataclass(frozen=True)
class Document:
    """One text file of the corpus: its path relative to the corpus root, and its text."""

    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Training and validation documents, split by file."""

    source: str
    train: tuple[Document, ...]
    validation: tuple[Document, ...]
    skipped_files: int = 0

    @property
    def train_text(self) -> str:
        return "".join(document.text for document in self.train)

    @property
    def validation_text(self) -> str:
        return "".join(document.text for document in self.validation)


def stdlib_folder() -> str:
    """Return the folder of the running Python's standard library."""
    return sysconfig.get_paths()["stdlib"]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(root: str, *, suffixes: tuple[str, ...] | None = None, skip_folders=frozenset()) -> list[str]:
    """Return the files under `root` in sorted order, skipping hidden and cache folders.

    `suffixes` keeps only names ending with one of them. Symbolic links to
    folders are not followed.
    """
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not _is_hidden(name) and name not in _SKIPPED_FOLDERS and name not in skip_folders
        )
        for name in files:
            if _is_hidden(name):
                continue
            if suffixes is not None and not name.endswith(suffixes):
                continue
            found.append(os.path.join(folder, name))
    return sorted(found)


def read_text_file(path: str) -> str | None:
    """Return the file's text decoded as UTF-8, or None for a binary or non-UTF-8 file."""
    with open(path, "rb") as file:
        data = file.read()
    if b"\0" in data[:_BINARY_PROBE_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_validation_file(name: str, validation_fraction: float) -> bool:
    """Return whether the file with relative path `name` belongs to the validation split.

    The choice hashes the path with SHA-256, so it is the same on every run
    and adding or removing other files leaves it unchanged.
    """
    return _split_key(name) < validation_fraction


def _split_key(name: str) -> float:
    digest = hashlib.sha256(name.replace(os.sep, "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(
    documents: list[Document], validation_fraction: float
) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """Split documents by file into (train, validation).

    Each split gets at least one file when there are two or more. A single
    document is split by text instead: its last `validation_fraction` of
    characters, moved forward to the next line start, becomes validation.
    """
    if len(documents) == 1:
        (document,) = documents
        cut = int(len(document.text) * (1.0 - validation_fraction))
        line_start = document.text.find("\n", cut)
        if line_start != -1 and line_start + 1 < len(document.text):
            cut = line_start + 1
        logger.info("Only one file (%s): using its last %d characters as validation", document.name, len(document.text) - cut)
        return (
            (Document(document.name, document.text[:cut]),),
            (Document(document.name + " (end)", document.text[cut:]),),
        )

    train = [document for document in documents if not is_validation_file(document.name, validation_fraction)]
    validation = [document for document in documents if is_validation_file(document.name, validation_fraction)]
    if not validation:
        first = min(train, key=lambda document: _split_key(document.name))
        train.remove(first)
        validation.append(first)
    elif not train:
        last = max(validation, key=lambda document: _split_key(document.name))
        validation.remove(last)
        train.append(last)
    return tuple(train), tuple(validation)


def load_corpus(
    path: str | None = None,
    *,
    validation_fraction: float = 0.08,
    max_bytes: int | None = None,
) -> Corpus:
    """Read a corpus and split it by file into training and validation.

    `path` is a text file or a folder searched recursively for text files
    (UTF-8 without NUL bytes; hidden files and folders are skipped). None
    means the `.py` files of the standard library, without its tests and
    installed packages. Files are read in sorted order until `max_bytes` is
    reached. Raises UserInputError for a missing path or a corpus without text.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise UserInputError(f"validation_fraction must be between 0 and 1, but got {validation_fraction}")

    if path is None:
        root = stdlib_folder()
        source = f"Python standard library ({root})"
        paths = list_files(root, suffixes=(".py",), skip_folders=_STDLIB_SKIPPED_FOLDERS)
    else:
        root = os.path.abspath(os.path.expanduser(path))
        source = root
        if not os.path.exists(root):
            raise UserInputError(f"data path not found: {path}; pass an existing text file or folder")
        if os.path.isfile(root):
            paths = [root]
            root = os.path.dirname(root)
        else:
            paths = list_files(root)

    documents = []
    total_bytes = 0
    skipped = 0
    for index, file_path in enumerate(paths):
        if max_bytes is not None and total_bytes >= max_bytes:
            logger.warning(
                "Stopped reading the corpus at %.1f MiB; %d more files were not read (raise the size limit to use them)",
                total_bytes / 2**20,
                len(paths) - index,
            )
            break
        try:
            text = read_text_file(file_path)
        except OSError as error:
            logger.warning("Skipped unreadable file %s: %s", file_path, error)
            skipped += 1
            continue
        if text is None:
            skipped += 1
            continue
        if text:
            documents.append(Document(os.path.relpath(file_path, root), text))
            total_bytes += len(text.encode("utf-8"))

    if not documents:
        raise UserInputError(
            f"no text found in {source}: it contains no non-empty UTF-8 text files; pass a file or folder with text"
        )
    train, validation = split_documents(documents, validation_fraction)
    logger.info(
        "Corpus %s: %s for training, %s for validation, %d binary or unreadable files skipped",
        source,
        _count_files(len(train)),
        _count_files(len(validation)),
        skipped,
    )
    return Corpus(source=source, train=train, validation=validation, skipped_files=skipped)


def _count_files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
