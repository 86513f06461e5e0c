"""Prefill time, peak memory and per-token decode time of every method, as ratios to Origin.

    python benchmarks/bench_methods.py                       # ~30M random LLaMA, T = 2048, 4k/8k/16k
    python benchmarks/bench_methods.py --lengths 2048 4096 --methods origin mesa --decode-steps 8

Each (method, length) cell runs in its own subprocess, so one cell's memory never counts towards
another's and an out-of-memory cell does not end the run. Inside a cell: build the model, apply
the method, warm up on a short input, then time one prefill of random tokens (logits for the last
position only, as ``generate`` does) while sampling peak memory (harness.measure), then time
``--decode-steps`` cached greedy decode steps and report their median. Ratios compare cells of the
same run on the same machine; absolute seconds on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def method_params(name: str) -> dict:
    from omegaconf import OmegaConf

    from harness.methods import method_settings

    return method_settings(OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml"))[1]


def run_cell(model_name: str, method: str, length: int, decode_steps: int, device: str, seed: int) -> dict:
    """One cell, measured by the speed task's own evaluate() (one prefill, then decode steps)."""
    from hydra import compose, initialize_config_dir

    from harness.methods import apply_method
    from harness.models import load_model
    from tasks.speed import SpeedTask

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # with conf/model_defaults.yaml
        model_cfg = compose("config", overrides=[f"model={model_name}"]).model
    loaded = load_model(model_cfg, device=device)
    model = apply_method(loaded.model, method, **method_params(method))
    task = SpeedTask([length], 1, seed=seed, vocab_size=model.config.vocab_size, repeats=1,
                     decode_steps=decode_steps, warmup_tokens=256)
    result = task.evaluate(model, task.build_input(length, 0))
    keep = ("prefill_s", "peak_mb", "baseline_mb", "decode_ms_per_token")
    return {"method": method, "length": length, "status": "ok", **{k: result[k] for k in keep}}


# glibc serves allocations >= 32 MiB with fresh mmaps, so at 16k tokens every activation-sized
# temporary pays page faults on first touch (measured here: a 32 MiB torch.cat took 18 ms instead
# of 3 ms). That inflates every method and hides differences; raising the thresholds makes glibc
# reuse its heap. Applied to every cell alike; --default-malloc measures without it.
HEAP_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def spawn_cell(args, method: str, length: int) -> dict:
    command = [sys.executable, __file__, "--cell", method, str(length), "--model", args.model,
               "--decode-steps", str(args.decode_steps), "--device", args.device, "--seed", str(args.seed)]
    env = dict(os.environ, **({} if args.default_malloc else HEAP_MALLOC))
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.cell_timeout, env=env)
    if proc.returncode != 0:
        status = "oom" if "out of memory" in proc.stderr.lower() or proc.returncode == -9 else "error"
        last = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"method": method, "length": length, "status": status, "message": last[:200],
                "wall_s": time.time() - started}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows: list[dict], lengths: list[int], methods: list[str], baseline: str) -> str:
    """A markdown table of every cell, with ratios to the ``baseline`` method's cell of the same length."""
    from harness.methods import METHODS

    by = {(r["method"], r["length"]): r for r in rows}
    x_base = f"x {METHODS[baseline].label}"
    lines = [
        f"| method | length | prefill s | {x_base} | peak MB | {x_base} | decode ms/token | {x_base} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in lengths:
        origin = by.get((baseline, length), {})
        for method in methods:
            r = by.get((method, length))
            if r is None:
                continue
            if r["status"] != "ok":
                lines.append(f"| {method} | {length} | {r['status']}: {r.get('message', '')} | | | | | |")
                continue

            def ratio(key):
                return f"{r[key] / origin[key]:.2f}" if origin.get("status") == "ok" and origin[key] else "-"

            lines.append(
                f"| {method} | {length} | {r['prefill_s']:.2f} | {ratio('prefill_s')} | {r['peak_mb']:.0f} | "
                f"{ratio('peak_mb')} | {r['decode_ms_per_token']:.1f} | {ratio('decode_ms_per_token')} |"
            )
    growth = []
    for method in methods:
        pairs = [(a, b) for a, b in zip(lengths, lengths[1:]) if by.get((method, a), {}).get("status") == "ok"
                 and by.get((method, b), {}).get("status") == "ok"]
        if pairs:
            growth.append(f"{method}: " + ", ".join(
                f"{b // 1024}k/{a // 1024}k {by[(method, b)]['prefill_s'] / by[(method, a)]['prefill_s']:.2f}x"
                for a, b in pairs))
    return "\n".join(lines) + "\n\nPrefill time growth: " + "; ".join(growth)


def main() -> None:
    from harness.methods import method_names

    methods = method_names()  # every method, in the methods' own order (the unchanged model first)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-30m-random", help="a config name in conf/model/")
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192, 16384])
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default mmap threshold")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds before a cell is abandoned")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "methods.jsonl")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cell:
        print(json.dumps(run_cell(args.model, args.cell[0], int(args.cell[1]), args.decode_steps, args.device,
                                  args.seed)))
        return

    import torch

    print(f"# {args.model}, {args.device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; methods {args.methods}; lengths {args.lengths}; "
          f"malloc {'default' if args.default_malloc else 'heap (MALLOC_MMAP_THRESHOLD_=2^32)'}", flush=True)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for length in args.lengths:
        for method in args.methods:
            row = spawn_cell(args, method, length)
            row.update(model=args.model, device=args.device, torch=torch.__version__,
                       malloc="default" if args.default_malloc else "heap")
            rows.append(row)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print()
    print(report(rows, args.lengths, args.methods, baseline=method_names()[0]))  # ordered first: the unchanged model


if __name__ == "__main__":
    main()
