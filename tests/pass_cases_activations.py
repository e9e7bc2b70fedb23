"""Matrix rows of the PolyCom and CRReLU activations through ``swap_activation``."""

from pass_cases import PassCase

from surgeon.passes import SwapActivation

CASES = [
    PassCase("swap-polynorm-llama", "tiny-llama", (SwapActivation(to="polynorm"),)),
    PassCase("swap-polyrelu-gpt2", "tiny-gpt2", (SwapActivation(to="polyrelu"),)),
    PassCase("swap-crrelu-bert", "tiny-bert", (SwapActivation(to="crrelu"),)),
]
