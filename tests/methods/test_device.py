"""Device-clean methods: no tensor is created without the device of the tensors it meets.

The model and its inputs stay on the CPU while torch's default device is ``meta``: a tensor made
without an explicit device (``torch.arange(n)``, ``torch.ones(...)``) lands on ``meta`` and the
first operation mixing it with a CPU tensor fails. On a GPU the same slip is a "cuda:0 and cpu"
error at every sample, which a CPU-only suite would otherwise never see.
"""

import pytest
import torch

from harness.methods import METHODS, apply_method
from tests.conftest import TINY_PARAMS, TRAIN_LENGTH, archs_for, random_ids, tiny_model, tiny_params
from tests.methods.test_parity import prefill_and_decode

TINY_MESA = tiny_params("mesa")

# Past the training length (Mesa chunks, ReRoPE's far part, Dynamic-NTK's scaled base), and
# enough decode steps for Mesa's stair to move (its chunk width here is a few dozen tokens).
LENGTH = 3 * TRAIN_LENGTH + 5
CASES = [(m, TINY_PARAMS[m]) for m in METHODS] + [("mesa-paper", dict(TINY_MESA, variant="paper")),
                                                   ("leaky-rerope-auto", dict(window=32, leaky_k="auto")),
                                                   ("mesa-last-leaky", dict(TINY_MESA, last_chunk_rule="leaky-rerope"))]


def method_of(case: str) -> str:
    return case.replace("-paper", "").replace("-auto", "").replace("-last-leaky", "")


CASE_ARCHS = [(case, arch) for case in CASES for arch in archs_for(method_of(case[0]))]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("case,arch", CASE_ARCHS, ids=[f"{c[0]}-{a}" for c, a in CASE_ARCHS])
def test_no_tensor_is_created_off_device(arch, case, implementation):
    name, params = case
    method = method_of(name)
    model = apply_method(tiny_model(arch, attn_implementation=implementation), method, **params)
    ids = random_ids(LENGTH)
    with torch.device("meta"):
        logits = prefill_and_decode(model, ids, steps=3)
    assert all(step.device.type == "cpu" and torch.isfinite(step).all() for step in logits)


def test_the_check_catches_a_tensor_made_without_a_device():
    """Guard: the mechanism above really fails on a device slip."""
    x = torch.ones(3)
    with torch.device("meta"), pytest.raises((RuntimeError, NotImplementedError)):
        _ = x * torch.arange(3)
