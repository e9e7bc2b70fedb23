"""Matrix rows of the neuron-gating passes (``dopamine``, ``dopamine_harden``)."""

from pass_cases import PassCase

from surgeon.passes import Dopamine, DopamineHarden, Wina

CASES = [
    PassCase("dopamine-gpt2", "tiny-gpt2", (Dopamine(),)),
    PassCase("dopamine+harden+wina-llama", "tiny-llama", (Dopamine(), DopamineHarden(), Wina(sparsity=0.4))),
]
