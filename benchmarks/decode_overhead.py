"""Decoding time per token: a plain loop against the speed task's own measurement, on one model and length.

    python benchmarks/decode_overhead.py                                  # SmolLM2-135M at 2048 tokens, Origin
    python benchmarks/decode_overhead.py --model tiny-random --length 512
    python benchmarks/decode_overhead.py --method mesa --length 8192 --max-ratio 1.10

Three numbers per round, on the same model, method and input (random token ids, as the speed task's):

* ``plain``: prefill, then ``--steps`` cached greedy steps, each timed by ``time.perf_counter``
  alone (CUDA synchronised) and nothing else: what decoding costs.
* ``task``: the speed task's ``decode_ms_per_token`` (``tasks/speed.py``: its prefill measured for
  memory, its decode steps timed, one more step measured for memory).
* ``per-step measure``: every step inside ``harness.measure.measure`` (garbage collection,
  ``malloc_trim`` and an RSS sampler per step), as the speed task timed decoding before: the
  overhead this benchmark exists to show. On SmolLM2 at 8k this read 184 ms/token against 138.

Each number is the median over its steps; the summary is the median over ``--rounds`` rounds,
which alternate the order of the loops. Target (the speed task's promise): ``task`` within 10% of
``plain``; ``--max-ratio 1.10`` exits 1 when it is not. CPU timings are noisy on a shared machine:
set ``OMP_WAIT_POLICY=PASSIVE`` (done here) and run nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(model_name: str, method: str | None, device: str):
    """The model as the harness loads it (conf/model/<name>.yaml with its defaults), the method applied."""
    from hydra import compose, initialize_config_dir

    from harness.methods import apply_method, method_settings
    from harness.models import load_model

    overrides = [f"model={model_name}"] + ([f"method={method}"] if method else [])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    model = load_model(cfg.model, device=device).model
    if method:
        apply_method(model, method, **method_settings(cfg.method)[1])
    return model


def _prefill(model, ids):
    return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def plain_loop(model, out, steps: int, device) -> float:
    """Median ms of ``steps`` cached greedy steps after the prefill ``out``: perf_counter only."""
    import time

    import torch

    cuda = device.type == "cuda"
    cache, token, times = out.cache, out.logits[:, -1:].argmax(-1), []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = model(input_ids=token, cache=cache, use_cache=True)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    return 1000 * statistics.median(times)


def measured_loop(model, out, steps: int, device) -> float:
    """Median ms of ``steps`` steps, each inside harness.measure.measure (the old per-step measurement)."""
    from harness.measure import measure

    cache, token, times = out.cache, out.logits[:, -1:].argmax(-1), []
    for _ in range(steps):
        with measure(device) as step:
            out = model(input_ids=token, cache=cache, use_cache=True)
        times.append(step.seconds)
        cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    return 1000 * statistics.median(times)


def compare(model, length: int, steps: int, rounds: int, seed: int = 0, log=print) -> dict:
    """Medians over rounds of the three decode timings (ms per token) on one input of ``length``."""
    import torch

    from tasks.speed import SpeedTask

    device = next(model.parameters()).device
    task = SpeedTask([length], 1, seed=seed, vocab_size=model.config.vocab_size, decode_steps=steps)
    task_input = task.build_input(length, 0)
    ids = torch.tensor([task_input.input_ids], device=device)
    results = {"plain": [], "task": [], "per-step measure": []}
    with torch.no_grad():
        _prefill(model, ids[:, :128])  # warm-up, as the task's first sample does
        for index in range(rounds):
            order = ["plain", "task", "per-step measure"]
            order = order if index % 2 == 0 else order[::-1]
            for name in order:
                if name == "task":
                    value = task.evaluate(model, task_input)["decode_ms_per_token"]
                else:
                    loop = plain_loop if name == "plain" else measured_loop
                    value = loop(model, _prefill(model, ids), steps, device)
                results[name].append(value)
            log(f"round {index + 1}: " + ", ".join(f"{name} {values[-1]:.2f}" for name, values in results.items()))
    summary = {name: statistics.median(values) for name, values in results.items()}
    summary["task / plain"] = summary["task"] / summary["plain"]
    summary["per-step measure / plain"] = summary["per-step measure"] / summary["plain"]
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model name (default: smollm2-135m)")
    parser.add_argument("--method", default=None, help="a conf/method name (default: none applied, the stock model)")
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens before decoding (default 2048)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per loop (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three loops (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="exit 1 when the task's ms/token exceeds this times the plain loop's (e.g. 1.10)")
    args = parser.parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    model = load(args.model, args.method, args.device)
    summary = compare(model, args.length, args.steps, args.rounds)
    print(f"{args.model}, {args.method or 'no method'}, {args.length} tokens, {args.steps} steps x {args.rounds} "
          f"rounds, ms/token: plain {summary['plain']:.2f}, task {summary['task']:.2f} "
          f"({summary['task / plain']:.3f}x), per-step measure {summary['per-step measure']:.2f} "
          f"({summary['per-step measure / plain']:.3f}x)")
    print(json.dumps({"model": args.model, "method": args.method, "length": args.length, **summary}))
    if args.max_ratio is not None and summary["task / plain"] > args.max_ratio:
        print(f"task decode is {summary['task / plain']:.3f}x the plain loop's: above {args.max_ratio}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
