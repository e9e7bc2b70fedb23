"""Matrix rows of the FFN → experts passes (``moefy``, ``mofme``, ``mohd``)."""

from pass_cases import PassCase

import surgeon
from surgeon.passes import FoldNorm, Moefy, Mofme, Mohd


def _calibration(model):
    return [surgeon.example_inputs(model, batch=4, seq=8, seed=s) for s in (11, 12)]


CASES = [
    PassCase("moefy-llama-exact", "tiny-llama", (Moefy(num_experts=4, top_k=4),)),
    PassCase("moefy-bert-coact-centroid", "tiny-bert",
             (Moefy(num_experts=4, top_k=2, clustering="coactivation", router="centroid"),),
             calibration=_calibration),
    PassCase("fold+moefy-qwen2", "tiny-qwen2", (FoldNorm(), Moefy(num_experts=8, top_k=3)),
             calibration=_calibration),
    PassCase("mofme-gpt2", "tiny-gpt2", (Mofme(num_experts=4, top_k=2),)),
    PassCase("mofme-llama-uar", "tiny-llama", (Mofme(num_experts=3, top_k=1, uncertainty_samples=3),)),
    PassCase("mohd-llama-exact", "tiny-llama", (Mohd(num_groups=8, num_shared=2, top_k=6),)),
    PassCase("mohd-bert-routed", "tiny-bert", (Mohd(num_groups=8, num_shared=2, top_k=2, dispatch="masked"),),
             calibration=_calibration),
    PassCase("fold+mohd-qwen2-ratio", "tiny-qwen2",
             (FoldNorm(), Mohd(num_groups=4, num_shared=0, top_k=2, scaling="ratio", fusion="none",
                               grouping="contiguous")), calibration=_calibration),
]
