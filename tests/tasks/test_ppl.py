"""The perplexity task: corpora, window selection, chunked NLL scoring, and the Jane Austen reader."""

import json
import lzma
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.byte_tokenizer import ByteTokenizer
from harness.errors import HarnessError
from harness.methods import apply_method
from tasks import corpora
from tasks.ppl import PplTask, token_nll
from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


class BosByteTokenizer(ByteTokenizer):
    """Bytes plus a BOS (id 1, never in the test text) that encode() adds, as LLaMA's tokenizer does."""

    bos_token_id = 1

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + super().encode(text)


class SilentBosByteTokenizer(ByteTokenizer):
    """Has a BOS id but never adds it (like SmolLM2's <|im_start|>)."""

    bos_token_id = 1


def doc_text(n: int, seed: int) -> str:
    """n printable ASCII characters (= n byte tokens), different per seed."""
    rng = np.random.default_rng(seed)
    return "".join(chr(c) for c in rng.integers(32, 127, n))


def write_corpus(directory: Path, sizes: dict[str, int]) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    for i, (stem, n) in enumerate(sizes.items()):
        (directory / f"{stem}.txt").write_text(doc_text(n, i), encoding="utf-8")
    return {"source": "local", "path": str(directory)}


def make_task(corpus, tokenizer=None, **params) -> PplTask:
    return PplTask(lengths=[30], samples=1, tokenizer=tokenizer or ByteTokenizer(), corpus=corpus, **params)


# Written in file order d, a, c, b on purpose: documents are read in sorted file-name order.
SIZES = {"d": 30, "a": 50, "c": 120, "b": 10}


# -- window selection -----------------------------------------------------------------------------

def test_windows_follow_corpus_order_then_wrap_around_to_next_windows(tmp_path):
    corpus = write_corpus(tmp_path / "docs", SIZES)
    task = make_task(corpus)
    texts = {stem: (tmp_path / "docs" / f"{stem}.txt").read_text() for stem in SIZES}
    got = [task.window(30, i) for i in range(6)]
    # round 0: every document with >= 30 tokens (a, c, d; not b); then c's 2nd, 3rd, 4th windows
    assert [(doc, off) for doc, off, _ in got] == [("a", 0), ("c", 0), ("d", 0), ("c", 30), ("c", 60), ("c", 90)]
    for doc, off, ids in got:
        assert ids == list(texts[doc][off:off + 30].encode())
    with pytest.raises(HarnessError, match="only 6 windows of 30 tokens"):
        task.window(30, 6)


def test_selection_is_deterministic_whatever_the_call_order(tmp_path):
    corpus = write_corpus(tmp_path / "docs", SIZES)
    forward = make_task(corpus)
    a = [forward.build_input(length, i) for length in (20, 40) for i in range(3)]
    backward = make_task(corpus)
    b = [backward.build_input(length, i) for length in (40, 20) for i in reversed(range(3))]
    assert sorted(map(repr, a)) == sorted(map(repr, b))
    assert [x.tokens for x in a] == [20] * 3 + [40] * 3
    assert a[0].info == {"doc_id": "a", "offset": 0, "bos": False}


def test_bos_is_prepended_and_counted_in_the_length(tmp_path):
    corpus = write_corpus(tmp_path / "docs", SIZES)
    with_bos = make_task(corpus, BosByteTokenizer())
    sample = with_bos.build_input(30, 2)
    # With BOS a window needs only 29 document tokens, so d (30 tokens) still qualifies at length 31.
    assert sample.tokens == 30 and sample.input_ids[0] == 1 and sample.info == {"doc_id": "d", "offset": 0, "bos": True}
    assert with_bos.window(31, 2)[0] == "d" and make_task(corpus).window(31, 2)[0] != "d"
    assert with_bos.window(30, 3)[1] == 29  # the next window starts right after the previous one's 29 tokens
    assert sample.input_ids[1:] == make_task(corpus).build_input(29, 2).input_ids
    # A BOS the tokenizer never adds itself (SmolLM2) is only prepended on request.
    assert make_task(corpus, SilentBosByteTokenizer()).build_input(30, 0).info["bos"] is False
    assert make_task(corpus, SilentBosByteTokenizer(), bos=True).build_input(30, 0).input_ids[0] == 1
    assert make_task(corpus, BosByteTokenizer(), bos=False).build_input(30, 0).info["bos"] is False


def test_a_streamed_corpus_is_read_only_as_far_as_needed(tmp_path):
    corpus = write_corpus(tmp_path / "docs", SIZES)
    task = make_task(corpus)
    task.window(30, 0)
    assert [doc for doc, _ in task._docs] == ["a"]
    task.window(30, 1)
    assert [doc for doc, _ in task._docs] == ["a", "b", "c"]


# -- errors ---------------------------------------------------------------------------------------

def test_no_long_enough_document_is_one_line_that_says_what_to_do(tmp_path):
    task = make_task(write_corpus(tmp_path / "docs", SIZES))
    with pytest.raises(HarnessError) as error:
        task.build_input(500, 0)
    message = str(error.value)
    assert "\n" not in message
    assert "no document in" in message and "has 500 tokens; the longest has 120" in message
    assert "task.lengths" in message


def test_missing_directory_is_one_line_that_says_to_run_make_corpus(tmp_path):
    task = make_task({"source": "local", "path": str(tmp_path / "nowhere")})
    with pytest.raises(HarnessError) as error:
        task.build_input(30, 0)  # checked on first use, where the runner reports it as one line
    message = str(error.value)
    assert "\n" not in message and "make corpus" in message and "task.corpus.path" in message


def test_relative_corpus_paths_are_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as under a Hydra run directory
    assert corpora.resolve_path("data/corpora/x") == REPO_ROOT / "data" / "corpora" / "x"
    with pytest.raises(HarnessError, match=str(REPO_ROOT / "data" / "no-such-corpus")):
        corpora.check_corpus({"source": "local", "path": "data/no-such-corpus"})


@pytest.mark.parametrize("corpus,match", [
    ({"source": "s3", "path": "x"}, "source must be one of"),
    ({"source": "local", "path": "x", "split": "test"}, "unknown key"),
    ({"source": "hf", "path": "json", "max_documents": 0}, "max_documents"),
])
def test_bad_corpus_configs_are_refused(corpus, match):
    with pytest.raises(HarnessError, match=match):
        corpora.check_corpus(corpus)


# -- scoring --------------------------------------------------------------------------------------

def reference_nll(model, ids: list[int]) -> torch.Tensor:
    """Independent: the stock forward's full logits, then cross-entropy."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]), reduction="none")


@pytest.mark.parametrize("method", ["origin", "mesa"])
def test_chunked_nll_equals_full_logits_cross_entropy(tmp_path, method):
    length = TRAIN_LENGTH + 72  # past the training length, so Mesa really chunks and weaves
    task = make_task(write_corpus(tmp_path / "docs", {"doc": 400}), score_chunk=7)  # 199 / 7: a ragged last chunk
    sample = task.build_input(length, 0)
    model = apply_method(tiny_model(), method, **TINY_PARAMS[method])
    expected = reference_nll(model, sample.input_ids)
    torch.testing.assert_close(token_nll(model, sample.input_ids, score_chunk=7), expected, rtol=1e-4, atol=1e-4)
    row = task.evaluate(model, sample)
    assert row["scored_tokens"] == length - 1
    assert row["score"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert row["ppl"] == pytest.approx(float(expected.mean().exp()), rel=1e-4)


def test_methods_differ_past_the_training_length(tmp_path):
    """Guards the test above against passing vacuously: Mesa really changes the NLL there."""
    ids = make_task(write_corpus(tmp_path / "docs", {"doc": 400})).build_input(TRAIN_LENGTH + 72, 0).input_ids
    origin = token_nll(tiny_model(), ids)
    mesa = token_nll(apply_method(tiny_model(), "mesa", **TINY_PARAMS["mesa"]), ids)
    assert (origin - mesa).abs().max() > 1e-2


@pytest.mark.parametrize("buckets,sizes", [(4, [50, 50, 50, 49]), (3, [67, 66, 66]), (1, [199])])
def test_bucket_means_average_back_to_the_overall_mean(tmp_path, buckets, sizes):
    task = make_task(write_corpus(tmp_path / "docs", {"doc": 400}), buckets=buckets, score_chunk=64)
    sample = task.build_input(200, 0)
    model = tiny_model()
    row = task.evaluate(model, sample)
    nll = reference_nll(model, sample.input_ids)
    bounds = np.cumsum([0] + sizes)
    for i in range(buckets):  # each bucket is a consecutive run of scored positions, in order
        assert row[f"nll_q{i + 1}"] == pytest.approx(float(nll[bounds[i]:bounds[i + 1]].mean()), abs=1e-4)
    weighted = sum(size * row[f"nll_q{i + 1}"] for i, size in enumerate(sizes)) / sum(sizes)
    assert weighted == pytest.approx(row["score"], abs=1e-5)
    assert set(row) <= {"score", *task.columns}


def test_bad_bucket_count_is_refused(tmp_path):
    with pytest.raises(HarnessError, match="buckets"):
        make_task(write_corpus(tmp_path / "docs", SIZES), buckets=0)


# -- the hf source, on a local jsonl stand-in -----------------------------------------------------

@pytest.mark.parametrize("streaming", [True, False])
def test_hf_source_reads_rows_in_order_through_load_dataset(tmp_path, streaming):
    path = tmp_path / "rows.jsonl"
    texts = [doc_text(n, i) for i, n in enumerate([40, 5, 60, 45])]
    path.write_text("".join(json.dumps({"text": t, "meta": {"i": i}}) + "\n" for i, t in enumerate(texts)))
    corpus = {"source": "hf", "path": "json", "data_files": str(path), "split": "train", "streaming": streaming}
    assert list(corpora.iter_documents(corpus)) == [(str(i), t) for i, t in enumerate(texts)]
    assert [doc for doc, _ in corpora.iter_documents({**corpus, "max_documents": 2})] == ["0", "1"]
    task = make_task(corpus)
    assert [task.build_input(40, i).info["doc_id"] for i in range(3)] == ["0", "2", "3"]
    with pytest.raises(HarnessError, match="no field 'body'.*text_field"):
        list(corpora.iter_documents({**corpus, "text_field": "body"}))


# -- the Jane Austen reader (R lazy-load database), on a synthetic package -----------------------

def rds_bytes(tmp_path: Path, value) -> bytes:
    """R serialization (an uncompressed RDS stream, as a lazy-load record holds it)."""
    import rdata

    file = tmp_path / "value.rds"
    rdata.write_rds(file, value, compression=None)
    return file.read_bytes()


def write_lazyload_db(tmp_path: Path, directory: Path, objects: dict, compressed: int) -> None:
    """Write ``Rdata.rdx`` / ``Rdata.rdb`` as R's makeLazyLoadDB does (compress = TRUE (1) or xz (3))."""
    import rdata

    directory.mkdir(parents=True)
    blob, variables = b"", {}
    for name, value in objects.items():
        data = rds_bytes(tmp_path, value)
        packed = zlib.compress(data) if compressed == 1 else b"Z" + lzma.compress(data)
        record = len(data).to_bytes(4, "big") + packed
        variables[name] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
    (directory / "Rdata.rdb").write_bytes(blob)
    flag = np.array([True]) if compressed == 1 else np.array([compressed], dtype=np.int32)
    rdata.write_rds(directory / "Rdata.rdx", {"variables": variables, "references": {}, "compressed": flag})


@pytest.mark.parametrize("compressed", [1, 3])
def test_janeausten_reader_on_a_synthetic_package(tmp_path, compressed):
    books = {name: np.array([name.upper(), "", "By Jane Austen  ", "", "", "", "Chapter 1", "", "Line one", "line two",
                             "", ""]) for name in corpora.JANEAUSTEN_BOOKS}
    write_lazyload_db(tmp_path, tmp_path / "pkg" / corpora.JANEAUSTEN_DATA, books, compressed)
    texts = corpora.read_janeausten(tmp_path / "pkg")
    assert list(texts) == list(corpora.JANEAUSTEN_BOOKS)
    # trailing spaces dropped, runs of empty lines -> one paragraph break, no trailing blank lines
    assert texts["emma"] == "EMMA\n\nBy Jane Austen\n\nChapter 1\n\nLine one\nline two\n"


def test_fetch_is_a_no_op_when_the_novels_are_there(tmp_path, monkeypatch):
    def no_apt(*args):
        raise AssertionError("must not download")

    monkeypatch.setattr(corpora, "_apt_download", no_apt)
    write_corpus(tmp_path / "ja", {name: 10 for name in corpora.JANEAUSTEN_BOOKS})
    assert corpora.fetch_janeausten(tmp_path / "ja") == (tmp_path / "ja").resolve()
    (tmp_path / "ja" / "emma.txt").unlink()
    with pytest.raises(HarnessError, match="does not hold the six novels"):
        corpora.fetch_janeausten(tmp_path / "ja")


JANEAUSTEN = REPO_ROOT / "data" / "corpora" / "janeausten"


@pytest.mark.skipif(not JANEAUSTEN.is_dir(), reason="data/corpora/janeausten absent (run `make corpus`)")
def test_the_fetched_janeausten_corpus():
    docs = dict(corpora.iter_documents({"source": "local", "path": "data/corpora/janeausten"}))
    assert list(docs) == sorted(corpora.JANEAUSTEN_BOOKS)
    assert docs["prideprejudice"].startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen\n\nChapter 1\n\nIt is a truth")
    assert all(400_000 < len(text) < 1_000_000 and "\n\n\n" not in text for text in docs.values())


# -- the config -----------------------------------------------------------------------------------

def test_the_task_config_builds_the_task(tmp_path):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "task" / "ppl.yaml")
    assert cfg.corpus.source == "local" and cfg.corpus.path == "data/corpora/janeausten"
    cfg.corpus.path = str(tmp_path / "docs")
    write_corpus(tmp_path / "docs", SIZES)
    params = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "name"}
    task = instantiate(params, tokenizer=ByteTokenizer(), seed=0, _convert_="all")
    assert isinstance(task, PplTask) and (task.name, task.metric) == (cfg.name, "nll")
    assert task.build_input(30, 0).tokens == 30
