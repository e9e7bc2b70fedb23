"""``karat``: the Fourier-KArAt operator against the formula, its gradients and fit, the pass, save/load, errors."""

from __future__ import annotations

import math

import pytest
import torch

import surgeon
from surgeon.errors import RecipeError, SurgeonError
from surgeon.passes import FourierKArAt, KArAt
from surgeon.passes.kan.karat_layers import fit_karat


def _random_op(heads=2, n=5, rank=3, grid=2, seed=0, dtype=torch.float64) -> FourierKArAt:
    op = FourierKArAt(heads, n, rank, grid).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    return op


def _formula(op: FourierKArAt, scores: torch.Tensor) -> torch.Tensor:
    """σ̂(a)_n = Σ_p W[h,n,p] Σ_q Σ_m a_pqm cos(m a_q) + b_pqm sin(m a_q), written as plain loops."""
    B, H, N, _ = scores.shape
    out = torch.zeros_like(scores)
    for b in range(B):
        for h in range(H):
            for k in range(N):
                z = [0.0] * op.rank
                for p in range(op.rank):
                    for q in range(N):
                        a = float(scores[b, h, k, q])
                        if a <= -1e4:  # a padding mask: contributes nothing
                            continue
                        for m in range(1, op.grid + 1):
                            z[p] += float(op.cos_coef[h, p, q, m - 1]) * math.cos(m * a) + \
                                float(op.sin_coef[h, p, q, m - 1]) * math.sin(m * a)
                for n in range(N):
                    masked = float(scores[b, h, k, n]) <= -1e4
                    out[b, h, k, n] = 0.0 if masked else sum(float(op.proj[h, n, p]) * z[p] for p in range(op.rank))
    return out


def test_operator_matches_the_formula_with_a_padding_mask():
    op = _random_op()
    scores = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    scores[1, :, :, -2:] = torch.finfo(torch.float64).min  # BERT-style additive mask on the last two keys
    with torch.no_grad():
        got, expected = op(scores), _formula(op, scores)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.all(got[1, :, :, -2:] == 0)


def test_operator_gradcheck_float64():
    op = _random_op(heads=2, n=4, rank=2, grid=2)
    scores = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = (op.cos_coef, op.sin_coef, op.proj)

    def f(x, c, s, w):
        return torch.func.functional_call(op, {"cos_coef": c, "sin_coef": s, "proj": w}, (x,))

    assert torch.autograd.gradcheck(f, (scores, *params))


def test_fit_at_full_rank_is_the_least_squares_solution():
    """With r = N the rank constraint is void, so the fit must equal plain least squares on the features."""
    n, grid = 4, 2
    scores = torch.randn(1, 600, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1.5
    op = FourierKArAt(1, n, rank=n, grid=grid).double()
    fit_karat(op, [scores], ridge=0.0)
    m = torch.arange(1, grid + 1, dtype=torch.float64)
    ang = scores[0, :, :, None] * m
    feats = torch.cat([ang.cos(), ang.sin()], -1).reshape(600, -1)
    target = torch.softmax(scores[0], -1)
    best = feats @ torch.linalg.lstsq(feats, target).solution
    with torch.no_grad():
        got = op(scores.reshape(150, 1, n, n)).reshape(600, n)
    torch.testing.assert_close(got, best, rtol=1e-7, atol=1e-9)
    low = FourierKArAt(1, n, rank=1, grid=grid).double()
    assert fit_karat(low, [scores], ridge=0.0) > fit_karat(op, [scores], ridge=0.0)  # rank 1 is worse


def _vit_batches(model, seeds=(1, 2)):
    return [surgeon.example_inputs(model, batch=2, seed=s) for s in seeds]


@pytest.mark.parametrize("sharing", ["blockwise", "universal"])
def test_pass_on_tiny_vit_fits_softmax_and_round_trips(sharing, tmp_path):
    model = surgeon.load_model("tiny-vit")
    batch = surgeon.example_inputs(model, batch=2, seed=7)
    with torch.no_grad():
        before = model(**batch).last_hidden_state
    surgeon.apply(model, [KArAt(sharing=sharing, rank=12, grid=3)], calibration=_vit_batches(model))
    ops = [model.get_submodule(p).karat for p in ("layers.0.attention", "layers.1.attention")]
    assert (ops[0] is ops[1]) == (sharing == "universal")
    assert ops[0].heads == 4 and ops[0].seq_len == 17  # (32 / 8)² patches + CLS
    with torch.no_grad():
        after = model(**batch).last_hidden_state
    err = float((after - before).norm() / before.norm())
    assert 0 < err < 1e-2  # softmax is replaced (it changes), but the fit keeps the model close
    surgeon.save(model, tmp_path / "out")
    loaded = surgeon.load(tmp_path / "out")
    loaded_ops = [loaded.get_submodule(p).karat for p in ("layers.0.attention", "layers.1.attention")]
    assert (loaded_ops[0] is loaded_ops[1]) == (sharing == "universal")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).last_hidden_state, after)


def test_scratch_init_is_seeded_and_far_from_softmax():
    outs = []
    for _ in range(2):
        model = surgeon.load_model("tiny-vit")
        surgeon.apply(model, [KArAt(init="scratch", seed=3, rank=4, grid=1)])
        outs.append(model.get_submodule("layers.0.attention").karat.proj.detach().clone())
        assert surgeon.report(model)[0].certificates[0].relative_error > 0.1
    assert torch.equal(outs[0], outs[1])


def test_bert_with_fixed_length_and_padding():
    model = surgeon.load_model("tiny-bert")
    calib = [surgeon.example_inputs(model, batch=3, seq=6, seed=s) for s in (1, 2)]
    surgeon.apply(model, [KArAt(seq_len=6, rank=4, grid=2)], calibration=calib)
    batch = surgeon.example_inputs(model, batch=3, seq=6, seed=5)  # last row padded
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert torch.isfinite(out).all()
    with pytest.raises(SurgeonError, match=r"encoder\.layer\.0\.attention\.self.*6 tokens.*seq_len"):
        model(**surgeon.example_inputs(model, batch=1, seq=5))


def test_variable_length_calibration_is_an_error():
    model = surgeon.load_model("tiny-bert")
    calib = [surgeon.example_inputs(model, batch=2, seq=8), surgeon.example_inputs(model, batch=2, seq=6)]
    with pytest.raises(RecipeError, match=r"one fixed sequence length.*6, 8 tokens.*Pad or truncate"):
        surgeon.apply(model, [KArAt(rank=4)], calibration=calib)


def test_text_model_without_length_is_an_error():
    model = surgeon.load_model("tiny-bert")
    with pytest.raises(RecipeError, match=r"`seq_len` is not set and no calibration"):
        surgeon.apply(model, [KArAt(rank=4)])


def test_seq_len_must_match_the_calibration():
    model = surgeon.load_model("tiny-bert")
    with pytest.raises(RecipeError, match=r"`seq_len` of pass `karat` is 7.*8 tokens"):
        surgeon.apply(model, [KArAt(rank=4, seq_len=7)], calibration=[surgeon.example_inputs(model, seq=8)])


def test_causal_lm_is_an_error():
    model = surgeon.load_model("tiny-gpt2")
    with pytest.raises(SurgeonError, match=r"causal LM.*fixed-length encoders"):
        surgeon.apply(model, [KArAt(rank=4)])


def test_bad_options_are_errors():
    with pytest.raises(RecipeError, match="`rank`"):
        KArAt(rank=0)
    with pytest.raises(RecipeError, match="`grid`"):
        KArAt(grid=0)
    model = surgeon.load_model("tiny-vit")
    with pytest.raises(RecipeError, match=r"`rank` of pass `karat` \(40\) exceeds the sequence length 17"):
        surgeon.apply(model, [KArAt(rank=40)])
