"""Matrix rows of the KAN family (``kan``, ``kan_refine``, ``karat``): each basis and structure, both forms,
every init, and Fourier-KArAt on fixed-length attention."""

import surgeon
from surgeon.passes import KAN, KArAt, KANRefine

from pass_cases import PassCase

CASES = [
    PassCase("kan-kat-rational-residual-bert", "tiny-bert", (KAN(),)),
    PassCase("kan-kat-rational-pure-llama", "tiny-llama", (KAN(form="pure"),)),
    PassCase("kan-kat-bspline-pure-gpt2", "tiny-gpt2", (KAN(basis="bspline", form="pure"),)),
    PassCase("kan-kan-rational-distill-vit", "tiny-vit",
             (KAN(structure="kan", form="pure", init="distill", steps=20, samples=256),)),
    PassCase("kan-kan-bspline-residual-opt", "tiny-opt", (KAN(structure="kan", basis="bspline"),)),
    PassCase("kan-kan-bspline-scratch-qwen2", "tiny-qwen2",
             (KAN(structure="kan", basis="bspline", form="pure", init="scratch"),)),
    PassCase("kan-kat-fourier-pure-llama", "tiny-llama", (KAN(basis="fourier", form="pure"),)),
    PassCase("kan-kan-trukan-individual-distill-opt", "tiny-opt",
             (KAN(structure="kan", basis="trukan", knot_mode="individual", form="pure", init="distill", steps=10,
                  samples=128),)),
    PassCase("kan-kat-trukan-shared-residual-bert", "tiny-bert", (KAN(basis="trukan", knot_mode="shared"),)),
    PassCase("kan-kat-daruan-pure-gpt2", "tiny-gpt2", (KAN(basis="daruan", form="pure", reps=1),)),
    PassCase("kan-kan-daruan-residual-gpt2", "tiny-gpt2", (KAN(structure="kan", basis="daruan", reps=1),)),
    PassCase("kan-kat-selectable-pure-collapse-gpt2", "tiny-gpt2",
             (KAN(basis="selectable", form="pure"), KANRefine(collapse=True))),
    PassCase("kan-kan-selectable-residual-opt", "tiny-opt", (KAN(structure="kan", basis="selectable"),)),
    PassCase("kan-hqkan-daruan-fit-llama", "tiny-llama", (KAN(structure="hqkan", basis="daruan", form="pure", reps=1),)),
    PassCase("kan-refine-grid-gpt2", "tiny-gpt2",
             (KAN(structure="kan", basis="bspline", form="pure"), KANRefine(grid=10))),
    PassCase("kan-refine-reps-llama", "tiny-llama", (KAN(basis="daruan", form="pure", reps=1), KANRefine(reps=2))),
    PassCase("kan-kat-rational-pure-norm-group-numerators-bert", "tiny-bert",
             (KAN(form="pure", fit_weighting="norm", numerators="group"),)),
    PassCase("kan-hqkan-daruan-residual-bert", "tiny-bert",
             (KAN(structure="hqkan", basis="daruan", form="residual", reps=1),)),
    PassCase("karat-blockwise-fit-vit", "tiny-vit", (KArAt(),)),
    PassCase("karat-universal-scratch-vit", "tiny-vit", (KArAt(sharing="universal", init="scratch", rank=4, grid=1),)),
    # The matrix evaluates on 5-token batches, so BERT gets calibration batches of that fixed length.
    PassCase("karat-blockwise-bert-seq5", "tiny-bert", (KArAt(seq_len=5, rank=4),),
             calibration=lambda m: [surgeon.example_inputs(m, batch=3, seq=5, seed=s) for s in (1, 2)]),
]
