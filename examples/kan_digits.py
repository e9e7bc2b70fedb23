"""sklearn digits: an MLP classifier, then ``kan`` with each basis (and ``kat``), briefly fine-tuned.

The MLP is x(64) → [fc1 64→64, GELU, fc2 64→64] → head 64→10, trained 30 epochs (Adam, batch 64, seed 0) on
a seeded 70/30 split of sklearn's bundled digits (standardised). Each variant is applied to a copy of the trained
MLP with ``init: fit`` (pure form: the paper's functions, fitted to the MLP's own ones on the training inputs),
then fine-tuned 5 epochs with the same seed and optimiser. Prints test accuracy before/after fine-tuning,
parameter count and seconds per fine-tuning epoch. Run: ``python examples/kan_digits.py`` (1 CPU thread).
"""

from __future__ import annotations

import copy
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import surgeon
from surgeon.passes import KAN

torch.set_num_threads(1)
HIDDEN, EPOCHS, FINETUNE, BATCH, LR = 64, 30, 5, 64, 3e-3


class Block(nn.Module):
    """The MLP block the pass replaces."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(64, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, 64)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    """MLP block then a linear head."""

    def __init__(self):
        super().__init__()
        self.mlp, self.head = Block(), nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.mlp(x))


def data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.7 * len(x))
    tr, te = perm[:cut], perm[cut:]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


def train(model, x, y, epochs, seed=0) -> float:
    """Adam epochs with a fixed shuffling seed; returns seconds per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return (time.perf_counter() - start) / max(epochs, 1)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


def main() -> None:
    xtr, ytr, xte, yte = data()
    torch.manual_seed(0)
    mlp = Net()
    train(mlp, xtr, ytr, EPOCHS)
    variants = [("mlp", None)] + [(f"kan/{b}", KAN(structure="kan", basis=b, form="pure", reps=2))
                                  for b in ("bspline", "rational", "fourier", "trukan", "daruan", "selectable")]
    variants += [("kat/rational", KAN(structure="kat", basis="rational", form="pure"))]
    print("| variant | params | acc. after surgery | acc. after 5 epochs | s / epoch |")
    print("|---|---|---|---|---|")
    calibration = [xtr[i:i + 256] for i in range(0, len(xtr), 256)]
    for name, config in variants:
        model = copy.deepcopy(mlp)
        if config is not None:
            surgeon.apply(model, [config], calibration=calibration)
        before = accuracy(model, xte, yte)
        seconds = train(model, xtr, ytr, FINETUNE, seed=1)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params} | {before:.4f} | {accuracy(model, xte, yte):.4f} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
