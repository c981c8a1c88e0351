"""The BL-JUST network on 8×8 digit images: a shared encoder and two heads, three parameter groups.

    encoder θ:           h = ReLU(W_2 ReLU(W_1 x + b_1) + b_2)
    supervised head φ_s: logits = W_s h + b_s                        L_s = CE(logits, y)
    contrastive head φ_u: u = W_u' ReLU(W_u h + b_u)                 L_u = InfoNCE(u(view₁), u(view₂))

L_u is the contrastive loss of CPC/SimCLR: two random views of the same unlabelled image (a shift
of up to one pixel, pixel noise) must pick each other out of the batch (``losses.info_nce``), so
the encoder has to carry what makes one digit unlike the others — the signal that a few labels
cannot give.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import info_nce

N_CLASSES = 10
SIDE = 8  # the images are SIDE × SIDE


class BLJustNet(nn.Module):
    def __init__(self, hidden: int = 128, embed: int = 64, proj: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, embed), nn.ReLU())
        self.sup_head = nn.Linear(embed, N_CLASSES)
        self.cpc_head = nn.Sequential(nn.Linear(embed, embed), nn.ReLU(), nn.Linear(embed, proj))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.sup_head(self.encoder(x.flatten(1)))

    def sup_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(x), y)

    def unsup_loss(self, view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
        u1 = self.cpc_head(self.encoder(view1.flatten(1)))
        u2 = self.cpc_head(self.encoder(view2.flatten(1)))
        return info_nce(u1, u2, temperature)

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """θ, φ_s, φ_u: each gets its own optimizer, and only its own loss's gradient."""
        return {"encoder": list(self.encoder.parameters()), "sup_head": list(self.sup_head.parameters()),
                "cpc_head": list(self.cpc_head.parameters())}


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 1, noise: float = 0.1) -> torch.Tensor:
    """A random view of each (B, 8, 8) image: a translation by up to ``shift`` pixels (zeros fill in),
    plus Gaussian pixel noise of standard deviation ``noise``."""
    b = x.shape[0]
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(SIDE)[None, :])[:, :, None]  # (B, 8, 1)
    cols = (dx[:, None] + torch.arange(SIDE)[None, :])[:, None, :]  # (B, 1, 8)
    view = padded[torch.arange(b)[:, None, None], rows, cols]
    return view + noise * torch.randn(view.shape, generator=gen)
