"""Memory and speed (paper Figure 5): prefill time, per-token decode time and peak memory.

Inputs are random token ids (seeded), so any model works, including random-weight models of a
7B shape on a GPU (``model=llama2-7b model.random_weights=true``). Per sample: one warm-up
prefill on a short input (first sample of the task object only), then ``repeats`` timed prefills
(logits of the last position only, as ``generate`` does), ``decode_steps`` timed cached greedy
steps after the last one, and one more step whose memory is measured.

* ``prefill_s`` (the ``score``), ``peak_mb``, ``baseline_mb``: measured around each prefill
  (harness.measure: peak allocated after a reset on CUDA; sampled RSS above the level before the
  prefill on CPU, after freed heap memory has been returned to the OS, so every sample of a job is
  measured alike). Median time, largest peak.
* ``decode_ms_per_token``: the median of the ``decode_steps`` steps, each timed by wall clock alone
  (harness.measure.stopwatch; CUDA synchronised). Before 2026-12 every step was also measured for
  memory, and the heap trim before each step made a CPU step fault its pages in again (SmolLM2 at
  8k: 184 ms/token instead of a plain loop's 138): CPU rows written before then read high.
* ``decode_peak_mb``: the peak of one more decoding step (after the timed ones, so the timing is
  not disturbed), measured like a prefill: memory one step adds above the level before it.
  Empty with ``decode_steps: 0``.
"""

from __future__ import annotations

import random
import statistics

import torch

from harness.measure import measure, stopwatch
from tasks.base import Figure, Task, TaskInput, check_integer


class SpeedTask(Task):
    name = "speed"
    metric = "prefill_s"
    columns = {"prefill_s": float, "prefill_tokens_per_s": float, "decode_ms_per_token": float, "peak_mb": float,
               "baseline_mb": float, "decode_peak_mb": float, "repeats": int}
    timing_columns = ("prefill_s", "prefill_tokens_per_s", "decode_ms_per_token", "peak_mb", "baseline_mb",
                      "decode_peak_mb")
    figures = (Figure("speed_memory", "memory_and_latency", "Memory and prefill latency",
                      caption="Peak memory during prefill (bars), prefill time (lines) and per-token decode time vs "
                              "length (Figure 5), log2 length axis."),)
    needs_tokenizer = False

    @classmethod
    def check_params(cls, params: dict) -> None:
        """At least one timed prefill (there is no median of none) and a warm-up of at least one token;
        decode_steps 0 times no decoding (its column is left empty)."""
        check_integer(params, "repeats")
        check_integer(params, "decode_steps", minimum=0)
        check_integer(params, "warmup_tokens")

    def __init__(self, *args, repeats: int = 1, decode_steps: int = 8, warmup_tokens: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        if self.vocab_size is None:
            raise ValueError("the speed task needs the model's vocab_size")
        self.check_params(dict(repeats=repeats, decode_steps=decode_steps, warmup_tokens=warmup_tokens))
        self.repeats, self.decode_steps, self.warmup_tokens = int(repeats), int(decode_steps), int(warmup_tokens)
        self._warm = False

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        """The timed decoding steps and the one measured for memory."""
        steps = int(params["decode_steps"])
        return steps + 1 if steps else 0

    def build_input(self, length: int, index: int) -> TaskInput:
        rng = random.Random(f"speed/{self.seed}/{length}/{index}")
        return TaskInput([rng.randrange(self.vocab_size) for _ in range(length)])

    def evaluate(self, model, task_input: TaskInput) -> dict:
        device = next(model.parameters()).device
        ids = torch.tensor([task_input.input_ids], device=device)
        times, peaks = [], []
        with torch.no_grad():
            if not self._warm:
                model(input_ids=ids[:, : self.warmup_tokens], logits_to_keep=1)
                self._warm = True
            for _ in range(self.repeats):
                out = None  # free the previous repeat's cache before measuring the next
                with measure(device) as prefill:
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                times.append(prefill.seconds)
                peaks.append(prefill.peak_bytes)
                baseline = prefill.baseline_bytes
            steps, decode_peak = [], None
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
            for _ in range(self.decode_steps):
                with stopwatch(device) as step:
                    out = model(input_ids=token, cache=cache, use_cache=True)
                cache, token = out.cache, out.logits[:, -1:].argmax(-1)
                steps.append(step.seconds)
            if self.decode_steps:  # memory of one more step, apart from the timed ones
                with measure(device) as step:
                    out = model(input_ids=token, cache=cache, use_cache=True)
                decode_peak = step.peak_bytes
        prefill_s = statistics.median(times)
        return {
            "score": prefill_s, "prefill_s": prefill_s, "prefill_tokens_per_s": task_input.tokens / prefill_s,
            "decode_ms_per_token": 1000 * statistics.median(steps) if steps else None,
            "peak_mb": max(peaks) / 2**20, "baseline_mb": baseline / 2**20,
            "decode_peak_mb": decode_peak / 2**20 if decode_peak is not None else None,
            "repeats": self.repeats,
        }
