"""INPUT arguments (files, directories, ``-``) → Documents, never a traceback.

Every input is read as bytes, checked (size, strict UTF-8, no NUL), registered
as a diagnostics source under its display name, and parsed by its format:
``*.kspec`` by the kspec language, ``*.json`` and ``*.yaml``/``*.yml`` by the
manifest loaders.  Each file's problems are collected and reading goes on, so
one broken file does not hide the errors of the others.

Standard input (``-``) and files with another suffix are sniffed: JSON when
the first non-blank character is ``{`` or ``[``; kspec when the first line
that is not blank, a comment or ``---`` starts with a kspec top-level key
(``cluster:``, ``nodes:``, ``workloads:``, ``pods:``, ``services:``,
``endpoints:``) and no line starts with ``apiVersion:`` or ``kind:``;
otherwise YAML manifests.

Manifests of ``kind: List`` (and typed lists such as ``PodList``) are split
into one Document per item, each with the item's own span and locator.
"""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TextIO

from kspec.gcpause import paused_gc
from kspec.diagnostics import Diagnostic, InputError, Span, error, register_source
from kspec.frontend.document import Document, Path
from kspec.frontend.json_load import load_json
from kspec.frontend.yaml_load import load_yaml

MAX_BYTES = 2 * 1024 ** 3
STDIN_NAME = "<stdin>"
SUFFIXES = {".kspec": "kspec", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
KSPEC_KEYS = ("cluster", "nodes", "workloads", "pods", "services", "endpoints")
_FIRST_LINE = re.compile(r"^(?!#|---|\.\.\.|%)[^\s].*$", re.M)
_KSPEC_START = re.compile(r"(?:%s)\s*:" % "|".join(KSPEC_KEYS))
_MANIFEST_KEY = re.compile(r"^(?:apiVersion|kind)\s*:", re.M)


def read_inputs(paths: Sequence[str], stdin: TextIO | BinaryIO | None
                ) -> tuple[list[Document], list[Diagnostic]]:
    """Read every INPUT; return all documents and all problems, in input order.

    Directories are read recursively in sorted path order, taking ``*.kspec``,
    ``*.yaml``, ``*.yml`` and ``*.json`` and skipping hidden files and
    directories (symlinked directories are not followed).  The cyclic garbage
    collector is paused while reading (see :mod:`kspec.gcpause`).
    """
    docs: list[Document] = []
    problems: list[Diagnostic] = []
    with paused_gc():
        for arg in paths:
            for name, fmt, read in _expand(arg, stdin, problems):
                data = read()
                if data is None:
                    continue
                try:
                    text = decode(data, name)
                    del data  # keep only the text: bytes and text together would double the footprint
                    docs.extend(parse(text, name, fmt or sniff(text)))
                except InputError as failure:
                    problems.extend(failure.diagnostics)
    return docs, problems


def _expand(arg: str, stdin: TextIO | BinaryIO | None, problems: list[Diagnostic]
            ) -> Iterator[tuple[str, str | None, Callable[[], bytes | str | None]]]:
    """(display name, format or None to sniff, reader) for each file of one INPUT.

    Readers return the content, or None after recording why it cannot be read;
    reading lazily keeps one file's bytes in memory at a time.
    """
    if arg == "-":
        if stdin is None:
            problems.append(error("no standard input to read for '-'", Span.whole(STDIN_NAME),
                                  "pipe the manifests in, or name the files instead of '-'"))
            return
        yield STDIN_NAME, None, lambda: _read_stream(stdin, STDIN_NAME, problems)
        return
    if os.path.isdir(arg):
        found = False
        for rel in _walk_directory(arg, problems):
            found = True
            name = os.path.join(arg, rel)
            yield name, SUFFIXES[os.path.splitext(rel)[1].lower()], partial(_read_file, name, problems)
        if not found:
            problems.append(error(f"directory {arg!r} holds no input files", Span.whole(arg),
                                  "inputs end in .kspec, .yaml, .yml or .json (hidden files are skipped)"))
        return
    if not os.path.exists(arg):
        problems.append(error(f"no such file or directory: {arg!r}", Span.whole(arg),
                              "check the path; use '-' to read standard input"))
        return
    yield arg, SUFFIXES.get(os.path.splitext(arg)[1].lower()), partial(_read_file, arg, problems)


def _walk_directory(root: str, problems: list[Diagnostic]) -> list[str]:
    """Relative paths of the input files under ``root``, sorted component-wise."""
    found: list[str] = []

    def failed(exc: OSError) -> None:
        where = exc.filename or root
        problems.append(error(f"cannot read directory {where!r}: {exc.strerror or exc}", Span.whole(where),
                              "check its permissions"))

    for directory, subdirs, files in os.walk(root, onerror=failed):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel_dir = os.path.relpath(directory, root)
        for file in files:
            if not file.startswith(".") and os.path.splitext(file)[1].lower() in SUFFIXES:
                found.append(file if rel_dir == os.curdir else os.path.join(rel_dir, file))
    return sorted(found, key=lambda rel: rel.split(os.sep))


def _too_big(name: str) -> Diagnostic:
    return error(f"input is larger than {MAX_BYTES // 1024 ** 3} GiB", Span.whole(name),
                 "split the input into several files or filter it first")


def _read_file(path: str, problems: list[Diagnostic]) -> bytes | None:
    try:
        with open(path, "rb") as stream:
            if os.fstat(stream.fileno()).st_size > MAX_BYTES:
                problems.append(_too_big(path))
                return None
            data = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        problems.append(error(f"cannot read {path!r}: {exc.strerror or exc}", Span.whole(path),
                              "check that the file exists and is readable"))
        return None
    if len(data) > MAX_BYTES:
        problems.append(_too_big(path))
        return None
    return data


def _read_stream(stream: Any, name: str, problems: list[Diagnostic]) -> bytes | str | None:
    source = getattr(stream, "buffer", stream)
    try:
        data = source.read(MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(error(f"cannot read standard input: {exc}", Span.whole(name),
                              "pipe UTF-8 text into kspec"))
        return None
    if len(data) > MAX_BYTES:
        problems.append(_too_big(name))
        return None
    return data


def decode(data: bytes | str, name: str) -> str:
    """Strict UTF-8 (a leading BOM is dropped), no NUL; register the text as a source."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            register_source(name, data.decode("utf-8", "replace"))
            raise InputError(_bad_utf8(data, exc.start, name)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    register_source(name, text)
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - text.rfind("\n", 0, nul)
        raise InputError(error("NUL character in the input", Span(name, line, col, line, col + 1),
                               "this looks like a binary file; inputs are UTF-8 text"))
    return text


def _bad_utf8(data: bytes, start: int, name: str) -> Diagnostic:
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    col = len(data[line_start:start].decode("utf-8", "replace")) + 1
    hint = "save the file as UTF-8"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        hint = "the file looks like UTF-16; save it as UTF-8"
    return error(f"invalid UTF-8 (byte 0x{data[start]:02X})", Span(name, line, col, line, col + 1), hint)


def sniff(text: str) -> str:
    """The format of text that has no telling file name: "json", "kspec" or "yaml"."""
    stripped = text.lstrip(" \t\r\n")
    if stripped[:1] in ("{", "["):
        return "json"
    first = _FIRST_LINE.search(text)
    if first and _KSPEC_START.match(first.group()) and not _MANIFEST_KEY.search(text):
        return "kspec"
    return "yaml"


def parse(text: str, name: str, fmt: str) -> list[Document]:
    """Parse one registered text in the given format; raise InputError on problems."""
    if fmt == "kspec":
        try:
            from kspec.frontend.kspec_lang import parse_kspec
        except ImportError:
            raise InputError(error("reading .kspec files needs kspec.frontend.kspec_lang, which is missing",
                                   Span.whole(name), "reinstall kspec")) from None
        return [parse_kspec(text, name)]
    docs = load_json(text, name) if fmt == "json" else load_yaml(text, name)
    return split_lists(docs)


def list_items(data: Any) -> list[Any] | None:
    """The items of a ``kind: List`` or typed list (``PodList``...) object, else None."""
    if not isinstance(data, dict):
        return None
    kind, items = data.get("kind"), data.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        return items
    return None


class _Prefixed:
    """Locator of a list item for loaders that cannot narrow to the item's text."""

    __slots__ = ("doc", "prefix")

    def __init__(self, doc: Document, prefix: Path) -> None:
        self.doc = doc
        self.prefix = prefix

    def __call__(self, path: Path) -> Span | None:
        return self.doc.locate(self.prefix + tuple(path))


def split_lists(docs: list[Document]) -> list[Document]:
    """Replace each manifest List document by one Document per item.

    An item keeps its own span (``key_spans[("items", i)]`` recorded by the
    loader, else located) and a locator for paths inside the item: the
    loader's ``within`` when it has one (re-reads only the item's text),
    else the List's locator with the ``("items", i)`` prefix.
    """
    out: list[Document] = []
    for doc in docs:
        items = list_items(doc.data) if doc.kind == "manifest" else None
        if items is None:
            out.append(doc)
            continue
        within = getattr(doc.locator, "within", None)
        for i, item in enumerate(items):
            path = ("items", i)
            span = doc.key_spans.get(path) or doc.locate(path)
            locator = (within(path) if within is not None else None) or _Prefixed(doc, path)
            out.append(Document(item, span, doc.kind, locator, doc.index))
    return out
