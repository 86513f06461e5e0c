"""Perplexity on long documents versus input length (paper Figure 4, the Pile; Figure 6 for MPT).

Protocol (the paper states none; this one is deterministic and the same for every method):

* documents come from a corpus (``tasks.corpora``), tokenized whole without special tokens;
* a sample of ``length`` tokens is a window from a document's START (no random offset): sample
  ``index`` is the index-th document, in corpus order, with at least ``length`` tokens; past the
  last such document it wraps around to each document's next non-overlapping window;
* when the model's tokenizer starts its inputs with a BOS token (``bos: auto``), the window is
  BOS + the first ``length - 1`` document tokens (BOS counts in ``length`` and is never scored);
* one forward of the decoder over the whole window, then every token after the first is scored
  (position p predicts token p + 1): ``score`` is the mean NLL in nats, and ``nll_q1..nll_qK`` the
  mean NLL over K equal consecutive parts of the scored positions, which shows where a method
  breaks down (e.g. past the training length).

The full-vocabulary logits are never built at once: the LM head runs ``score_chunk`` positions at
a time (16k positions x 49k vocabulary x 4 bytes would be 3.2 GB).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from tasks.base import Figure, Task, TaskInput
from tasks.corpora import corpus_label, iter_documents

BOS_CHOICES = ("auto", True, False)


class PplTask(Task):
    name = "ppl"
    metric = "nll"
    score_kind = "continuous"
    higher_is_better = False  # NLL
    # and nll_q1..nll_qK (floats), K = ``buckets``: see __init__
    columns = {"doc_id": str, "offset": int, "bos": bool, "ppl": float, "scored_tokens": int}
    figures = (Figure("ppl_nll", "mean_std", "Perplexity", "NLL (nats/token, mean +- std over documents)",
                      "Mean NLL per token vs input length (paper Figure 4), log2 length axis; band = +- one std over "
                      "documents; n above the panel = documents per point; dashed line = training length."),)

    @classmethod
    def logits_positions(cls, params: dict) -> int:
        """``score_chunk`` positions' logits and their log-softmax."""
        return 2 * int(params["score_chunk"])

    @classmethod
    def writes_column(cls, column: str) -> bool:
        return super().writes_column(column) or re.fullmatch(r"nll_q[1-9][0-9]*", column) is not None

    def __init__(self, *args, corpus: dict, score_chunk: int = 1024, buckets: int = 4, bos: str | bool = "auto",
                 **kwargs):
        super().__init__(*args, **kwargs)
        # The corpus is checked when first read (by build_input), not here: Hydra's instantiate would
        # wrap a HarnessError raised here in its own exception, and the user would get a traceback.
        self.corpus = dict(corpus or {})
        self.score_chunk = int(score_chunk)
        self.buckets = int(buckets)
        if self.score_chunk <= 0:
            raise HarnessError(f"task.score_chunk must be a positive integer, got {score_chunk!r}")
        if self.buckets < 1:
            raise HarnessError(f"task.buckets must be a positive integer, got {buckets!r}")
        self.columns = {**PplTask.columns, **{f"nll_q{i + 1}": float for i in range(self.buckets)}}
        if bos not in BOS_CHOICES:
            raise HarnessError(f"task.bos must be auto, true or false, got {bos!r}")
        self.bos_id = self._bos_id(bos)
        # Tokenized documents, filled lazily in corpus order, so a streamed corpus is read only as far as needed.
        self._docs: list[tuple[str, torch.Tensor]] = []  # (doc_id, token ids (n,) int32)
        self._source: Iterator[tuple[str, str]] | None = None
        self._exhausted = False

    def _bos_id(self, bos: str | bool) -> int | None:
        """The BOS id to prepend, or None. ``auto``: only if the tokenizer itself starts inputs with BOS
        (LLaMA, Mistral do; SmolLM2 has a bos_token, <|im_start|>, but does not add it)."""
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        if bos is False or bos_id is None:
            return None
        if bos is True:
            return int(bos_id)
        return int(bos_id) if self.tokenizer.encode("a", add_special_tokens=True)[:1] == [bos_id] else None

    # -- documents ------------------------------------------------------------------------------
    def _documents(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Tokenized documents in corpus order; each is tokenized once per task object."""
        yield from self._docs
        if self._source is None and not self._exhausted:
            self._source = iter_documents(self.corpus)
        while not self._exhausted:
            try:
                doc_id, text = next(self._source)
            except StopIteration:
                self._exhausted, self._source = True, None
                return
            ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.int32)
            self._docs.append((doc_id, ids))
            yield doc_id, ids

    def window(self, length: int, index: int) -> tuple[str, int, list[int]]:
        """(doc_id, offset in the document, token ids) of sample ``index`` at ``length`` tokens.

        Round 0 is the first window of every long-enough document, round k its (k+1)-th
        non-overlapping window (documents too short for it are left out), and so on.
        """
        if length < 2:
            raise HarnessError(f"ppl length must be at least 2 tokens (one scored), got {length}")
        bos = [] if self.bos_id is None else [self.bos_id]
        need = length - len(bos)  # document tokens per window
        qualifying = []
        for doc_id, ids in self._documents():
            if ids.shape[0] >= need:
                qualifying.append((doc_id, ids))
                if len(qualifying) > index:  # round 0: stop reading as soon as the sample is known
                    return doc_id, 0, bos + ids[:need].tolist()
        if not qualifying:
            longest = max((ids.shape[0] for _, ids in self._docs), default=0) + len(bos)
            raise HarnessError(f"no document in {corpus_label(self.corpus)} has {length} tokens; the longest has "
                               f"{longest}; use shorter task.lengths or a corpus with longer documents")
        remaining, total = index, 0
        for k in itertools.count():
            in_round = [(doc_id, ids) for doc_id, ids in qualifying if ids.shape[0] >= (k + 1) * need]
            if not in_round:
                raise HarnessError(f"{corpus_label(self.corpus)} has only {total} windows of {length} tokens, sample "
                                   f"{index} asks for more; lower task.samples or add documents")
            if remaining < len(in_round):
                doc_id, ids = in_round[remaining]
                return doc_id, k * need, bos + ids[k * need:(k + 1) * need].tolist()
            remaining -= len(in_round)
            total += len(in_round)
        raise AssertionError("unreachable")

    def build_input(self, length: int, index: int) -> TaskInput:
        doc_id, offset, ids = self.window(length, index)
        return TaskInput(ids, {"doc_id": doc_id, "offset": offset, "bos": self.bos_id is not None})

    # -- scoring --------------------------------------------------------------------------------
    def evaluate(self, model, task_input: TaskInput) -> dict:
        nll = token_nll(model, task_input.input_ids, self.score_chunk)
        mean = float(nll.mean())
        parts = torch.tensor_split(nll, min(self.buckets, nll.shape[0]))
        row = {"score": mean, "ppl": math.exp(mean), "scored_tokens": int(nll.shape[0])}
        row.update({f"nll_q{i + 1}": float(part.mean()) for i, part in enumerate(parts)})
        return row


def token_nll(model: torch.nn.Module, input_ids: list[int], score_chunk: int = 1024) -> torch.Tensor:
    """Per-token NLL (nats) of ``input_ids`` (L,) under ``model``: a float32 tensor (L - 1,), entry p
    the NLL of token p + 1 given tokens 0..p.

    One forward of the decoder (whatever attention the method installed there) gives the hidden
    states (1, L, H); the LM head then maps ``score_chunk`` positions at a time to logits
    (score_chunk, V), log-softmaxed in float32, so at most score_chunk x V logits exist at once.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 style, applied by the stock forward
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    targets = ids[0, 1:]
    nll = torch.empty(targets.shape[0], dtype=torch.float32, device=device)
    with torch.no_grad():
        # (L - 1, H): the last position predicts nothing
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        for start in range(0, targets.shape[0], score_chunk):
            end = min(start + score_chunk, targets.shape[0])
            logits = head(hidden[start:end]).float()  # (c, V)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logprobs = F.log_softmax(logits, dim=-1)
            nll[start:end] = -logprobs.gather(1, targets[start:end, None]).squeeze(1)
    return nll.cpu()
