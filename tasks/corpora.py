"""Where long documents come from: a directory of text files, or a Hugging Face dataset.

A corpus is a config dict (``task.corpus`` in ``conf/task/ppl.yaml``)::

    {source: local, path: data/corpora/janeausten}           # one UTF-8 .txt file per document
    {source: hf, path: monology/pile-uncopyrighted, split: test, streaming: true, max_documents: 5000}

:func:`iter_documents` yields ``(doc_id, text)`` in a fixed order (local: sorted file names, id =
file stem; hf: row order, id = row index), lazily, so a streamed dataset is read only as far as a
task needs. Relative local paths are relative to the repository root, not the working directory.

The offline default corpus is Jane Austen's six novels, shipped as R data in Debian's
``r-cran-janeaustenr`` (public-domain texts)::

    python -m tasks.corpora fetch janeausten [--dest data/corpora/janeausten]     # or: make corpus
"""

from __future__ import annotations

import argparse
import bz2
import itertools
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.validation import require_integer

SOURCES = ("local", "hf")
_KEYS = {
    "local": {"source", "path", "max_documents"},
    "hf": {"source", "path", "name", "data_files", "split", "streaming", "text_field", "max_documents"},
}

JANEAUSTEN_PACKAGE = "r-cran-janeaustenr"
JANEAUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
# The package's R object names; each becomes <name>.txt.
JANEAUSTEN_BOOKS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
JANEAUSTEN_DEST = REPO_ROOT / "data" / "corpora" / "janeausten"


# -- reading a corpus --------------------------------------------------------------------------

def resolve_path(path: str | os.PathLike) -> Path:
    """A config path: absolute, or relative to the repository root (not Hydra's run directory)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def check_corpus(corpus: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a corpus config (cheap: nothing is read) and return it as a plain dict."""
    corpus = dict(corpus or {})
    source = corpus.get("source")
    if source not in SOURCES:
        raise HarnessError(f"task.corpus.source must be one of {', '.join(SOURCES)}, got {source!r}")
    unknown = sorted(set(corpus) - _KEYS[source])
    if unknown:
        raise HarnessError(f"unknown key(s) {', '.join(unknown)} in task.corpus (source {source}); "
                           f"accepted: {', '.join(sorted(_KEYS[source]))}")
    if not corpus.get("path"):
        raise HarnessError(f"task.corpus.path is required for source {source!r}")
    require_integer(corpus.get("max_documents"), "task.corpus.max_documents", nullable=True)
    if source == "local":
        directory = resolve_path(corpus["path"])
        if not directory.is_dir():
            raise HarnessError(f"corpus directory {directory} does not exist; run `make corpus` to fetch the default "
                               "corpus, or set task.corpus.path to a directory of .txt files")
        if not any(directory.glob("*.txt")):
            raise HarnessError(f"corpus directory {directory} has no .txt files; "
                               "run `make corpus` or set task.corpus.path")
    return corpus


def corpus_label(corpus: Mapping[str, Any]) -> str:
    """A short human name for messages, e.g. ``data/corpora/janeausten`` or ``hf:monology/pile-uncopyrighted:test``."""
    if corpus.get("source") == "hf":
        name = f"/{corpus['name']}" if corpus.get("name") else ""
        return f"hf:{corpus['path']}{name}:{corpus.get('split', 'train')}"
    return str(corpus.get("path"))


def iter_documents(corpus: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` in corpus order, at most ``max_documents`` of them."""
    corpus = check_corpus(corpus)
    documents = _local_documents(corpus) if corpus["source"] == "local" else _hf_documents(corpus)
    return itertools.islice(documents, corpus.get("max_documents"))


def _local_documents(corpus: dict) -> Iterator[tuple[str, str]]:
    for file in sorted(resolve_path(corpus["path"]).glob("*.txt")):
        yield file.stem, file.read_text(encoding="utf-8")


def _hf_documents(corpus: dict) -> Iterator[tuple[str, str]]:
    import datasets  # slow to import; only this source needs it

    field = corpus.get("text_field", "text")
    try:
        rows = datasets.load_dataset(corpus["path"], name=corpus.get("name"), data_files=corpus.get("data_files"),
                                     split=corpus.get("split", "train"), streaming=bool(corpus.get("streaming", False)))
    except Exception as error:  # noqa: BLE001 - network, missing dataset, bad split: all reported as one line
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HarnessError(f"cannot load dataset {corpus_label(corpus)}: {first}") from None
    for index, row in enumerate(rows):
        if field not in row:
            raise HarnessError(f"dataset {corpus_label(corpus)} has no field {field!r} (fields: {', '.join(row)}); "
                               "set task.corpus.text_field")
        yield str(index), row[field] or ""


# -- the Jane Austen corpus: R lazy-load database -> text files --------------------------------

def read_lazyload_db(rdx: Path, rdb: Path) -> dict[str, Any]:
    """The objects of an R lazy-load database (``name.rdx`` index + ``name.rdb`` records).

    The index is an ordinary gzip-compressed RDS file (``rdata.read_rds`` reads it): a list with
    ``variables`` (name -> [offset, length] into the .rdb) and ``compressed``. Each record is a
    4-byte big-endian uncompressed length, then (compressed = TRUE) a zlib stream, or
    (2 / 3) a type byte ('2' bzip2, 'Z' xz, '0' stored) and the data; the result is an RDS stream.
    """
    import numpy as np
    import rdata

    index = rdata.read_rds(rdx)
    compressed = int(np.asarray(index["compressed"]).ravel()[0])
    blob = Path(rdb).read_bytes()
    objects = {}
    for name, (offset, size) in index["variables"].items():
        record = blob[int(offset): int(offset) + int(size)]
        if compressed == 0:
            data = record
        elif compressed == 1:
            data = zlib.decompress(record[4:])
        else:
            kind, payload = record[4:5], record[5:]
            data = {b"2": bz2.decompress, b"Z": lzma.decompress, b"0": bytes}[kind](payload)
        parsed = rdata.parser.parse_data(data, extension=".rds")
        objects[str(name)] = rdata.conversion.convert(parsed)
    return objects


def book_text(lines) -> str:
    """One novel's lines (the R character vector, one printed line each) as text.

    Lines are joined with newlines; trailing spaces are dropped and each run of empty lines
    (chapter spacing in the source) becomes one blank line, i.e. one paragraph break.
    """
    out: list[str] = []
    for line in lines:
        line = "" if line is None else str(line).rstrip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def read_janeausten(package_root: Path) -> dict[str, str]:
    """{book name: text} from an unpacked ``r-cran-janeaustenr`` (the directory holding ``usr/``)."""
    data = Path(package_root) / JANEAUSTEN_DATA
    books = read_lazyload_db(data / "Rdata.rdx", data / "Rdata.rdb")
    missing = sorted(set(JANEAUSTEN_BOOKS) - set(books))
    if missing:
        raise HarnessError(f"{JANEAUSTEN_PACKAGE} lacks the novel(s) {', '.join(missing)} "
                           f"(has {', '.join(sorted(books))})")
    return {name: book_text(books[name]) for name in JANEAUSTEN_BOOKS}


def _apt_download(package: str, directory: Path) -> Path:
    """``apt-get download`` into ``directory`` (after ``apt-get update`` if the first try fails,
    typically because the package lists are empty on a fresh machine); returns the .deb path."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise HarnessError(f"fetching {package} needs apt-get and dpkg (Debian/Ubuntu); "
                           "or put .txt files in a directory and set task.corpus.path")

    def download() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", package], cwd=directory, capture_output=True, text=True)

    result = download()
    if result.returncode != 0:
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if update.returncode != 0:
            raise HarnessError(f"apt-get download {package} failed and apt-get update failed too "
                               f"({_last_line(update.stderr)}); run `apt-get update` as root and retry")
        result = download()
    debs = sorted(directory.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise HarnessError(f"apt-get download {package} failed: {_last_line(result.stderr)}")
    return debs[0]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _is_complete(dest: Path) -> bool:
    return all((dest / f"{name}.txt").is_file() and (dest / f"{name}.txt").stat().st_size > 0
               for name in JANEAUSTEN_BOOKS)


def fetch_janeausten(dest: str | os.PathLike = JANEAUSTEN_DEST) -> Path:
    """Write the six novels as ``<dest>/<name>.txt``; a no-op when they are already there.

    Atomic: the files are written to a temporary sibling directory that is renamed to ``dest``,
    so an interrupted fetch never leaves a partial corpus behind.
    """
    dest = Path(dest).resolve()
    if _is_complete(dest):
        return dest
    if dest.exists():
        raise HarnessError(f"{dest} exists but does not hold the six novels ({', '.join(JANEAUSTEN_BOOKS)}); "
                           "remove it or choose another --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="janeaustenr-") as tmp:
        tmp = Path(tmp)
        deb = _apt_download(JANEAUSTEN_PACKAGE, tmp)
        unpacked = tmp / "root"
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True, capture_output=True)
        books = read_janeausten(unpacked)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))  # same filesystem: rename is atomic
        try:
            for name, text in books.items():
                (stage / f"{name}.txt").write_text(text, encoding="utf-8")
            stage.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary data
            stage.rename(dest)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return dest


FETCHERS = {"janeausten": (fetch_janeausten, JANEAUSTEN_DEST)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.corpora", description="Fetch an offline corpus.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and unpack a corpus into one .txt file per document")
    fetch.add_argument("corpus", choices=sorted(FETCHERS))
    fetch.add_argument("--dest", type=Path, default=None, help="target directory (default: data/corpora/<corpus>)")
    args = parser.parse_args(argv)
    fetcher, default = FETCHERS[args.corpus]
    dest = args.dest or default
    already = _is_complete(Path(dest).resolve())
    try:
        path = fetcher(dest)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.corpus}: {'already in' if already else 'written to'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
