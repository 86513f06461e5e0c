"""Every method's logits on a device equal the CPU's, in prefill and in cached decoding (fp32).

    python benchmarks/device_parity.py --device cuda                      # llama-30m-random, 6144 tokens
    python benchmarks/device_parity.py --device cpu --model tiny-random --length 400   # the script itself, on CPU

For each method and attention implementation (sdpa: fused kernels; eager: explicit ones), the same
random-weight model is built on the CPU and on the device, the same random tokens are prefilled,
then ``--decode-steps`` greedy steps are decoded with the KV cache, feeding both models the CPU's
tokens so the two runs stay comparable. One row per (method, implementation, step) goes to
``--out`` (CSV): the largest absolute logit difference and whether it is within ``--atol``.
Exit status 1 if any step is not, or a method fails on the device.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build(model_name: str, method: str, implementation: str, device: str, overrides=(), weights_from=None):
    """The model and method as ``python -m harness model=... method=...`` composes them (per-model
    method settings from conf/model_method/ included). ``weights_from``: a model whose weights are
    copied in first, because a seeded random init draws other numbers on another device."""
    from hydra import compose, initialize_config_dir

    from harness.methods import apply_method, method_settings
    from harness.models import load_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model_name}", f"method={method}",
                                           f"model.attn_implementation={implementation}", *overrides])
    loaded = load_model(cfg.model, device=device, dtype="float32")
    if weights_from is not None:
        loaded.model.load_state_dict(weights_from.state_dict())
    name, params = method_settings(cfg.method)
    return apply_method(loaded.model, name, **params)


def run(model, ids, steps: int, tokens=None):
    """Logits (on the CPU) of the prefill's last position and of each decoding step."""
    import torch

    device = next(model.parameters()).device
    out_logits, fed = [], []
    with torch.no_grad():
        out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
        for step in range(steps + 1):
            logits = out.logits[0, -1].float().cpu()
            out_logits.append(logits)
            if step == steps:
                break
            token = logits.argmax().view(1, 1) if tokens is None else tokens[step]
            fed.append(token)
            out = model(input_ids=token.to(device), cache=out.cache, use_cache=True)
    return out_logits, fed


def main() -> int:
    from harness.errors import UnsupportedModelError
    from harness.methods import method_names

    methods = method_names()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="llama-30m-random", help="a random-weight config in conf/model/")
    parser.add_argument("--length", type=int, default=6144, help="prompt tokens (past the training length)")
    parser.add_argument("--decode-steps", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--implementations", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--override", nargs="*", default=[],
                        help="config overrides, e.g. model.random_weights=true model.architecture.n_layers=2")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-h100" / "parity.csv")
    args = parser.parse_args()

    import torch

    ids = torch.randint(0, 256, (1, args.length), generator=torch.Generator().manual_seed(0))
    rows, failed = [], False
    columns = ["model", "method", "attn_implementation", "device", "length", "step", "status", "max_abs_diff",
               "max_abs_logit", "message", "torch"]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every method, so a run cut off by a time limit keeps its rows
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    for method in args.methods:
        for implementation in args.implementations:
            base = dict(model=args.model, method=method, attn_implementation=implementation, device=args.device,
                        length=args.length, torch=torch.__version__)
            try:
                reference = build(args.model, method, implementation, "cpu", args.override)
                expected, tokens = run(reference, ids, args.decode_steps)
                on_device = build(args.model, method, implementation, args.device, args.override,
                                  weights_from=reference)
                got, _ = run(on_device, ids, args.decode_steps, tokens)
            except UnsupportedModelError as error:  # a pair the method refuses (e.g. YaRN on ALiBi): not a failure
                rows.append(dict(base, step="prefill", status="unsupported", message=str(error)[:200]))
                save()
                continue
            except Exception as error:  # noqa: BLE001 - report every method, then fail
                traceback.print_exc()
                rows.append(dict(base, step="prefill", status="error", message=str(error).splitlines()[0][:200]))
                failed = True
                save()
                continue
            for step, (g, e) in enumerate(zip(got, expected)):
                diff = float((g - e).abs().max())
                ok = diff <= args.atol
                failed |= not ok
                rows.append(dict(base, step="prefill" if step == 0 else f"decode{step}",
                                 status="ok" if ok else "mismatch", max_abs_diff=diff,
                                 max_abs_logit=float(e.abs().max())))
            worst = max(r.get("max_abs_diff", 0.0) for r in rows[-len(got):])
            print(f"{method:>13} {implementation:>5}: max |logits({args.device}) - logits(cpu)| = {worst:.2e}",
                  flush=True)
            save()
    print(f"{'FAILED' if failed else 'ok'}: {len(rows)} rows -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
