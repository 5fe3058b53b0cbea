"""A linear reader of classes: multinomial logistic regression fitted by L-BFGS from zero (deterministic).

Evaluation uses it for what a linear reader of the sound features hears (the sound-limited ceiling); the
retrieval generator uses it to look its neighbours up among the training frames of the class it hears.
"""

from __future__ import annotations

import numpy as np
import torch


def fit_linear_probe(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, n_classes: int, l2: float = 1e-3,
                     steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (D, n_classes), bias (n_classes,)), float64, minimising the mean cross-entropy of x @ weight + bias
    against y plus l2 x ||weight||^2."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.long, device=x.device)
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return weight.detach(), bias.detach()
