"""The objectives: GAN-CLS (report eq 2, 4), WGAN with the mismatch term (eq 10), WGAN-GP, unconditional WGANs,
and (not in the report) the hinge loss of Lim & Ye (2017) / Miyato et al. (2018), with the mismatch term.

Each critic loss is the quantity the critic *minimises* and returns it with its terms (detached, for logs).
`wrong_cond` is the condition of a sound of another class than the image's; pass None for the unconditional
variants (pretraining on images alone), which then have no mismatch term.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES = ("gan-cls", "wgan", "wgan-gp", "hinge")
Critic = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message is one line naming the step and the term."""


def gradient_penalty(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    cond: torch.Tensor | None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gulrajani et al.: E[(||grad_x f(x_hat, c)||_2 - 1)^2], x_hat = eps*real + (1-eps)*fake, eps ~ U(0, 1).

    Computed in fp32 outside autocast; `critic` should be the eager module (see his.train on torch.compile).
    """
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        score = critic(x_hat, None if cond is None else cond.float())
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(
    objective: str,
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    cond: torch.Tensor | None,
    wrong_cond: torch.Tensor | None = None,
    alpha: float = 0.25,
    gp_lambda: float = 10.0,
    gp_critic: Critic | None = None,
    gp_eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic/discriminator loss of one step and its terms. `fake` must already be detached."""
    if objective == "gan-cls":
        logit_real = critic(real, cond).float()
        logit_fake = critic(fake, cond).float()
        loss_real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        loss_fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        terms = {"s_r": torch.sigmoid(logit_real).mean(), "s_f": torch.sigmoid(logit_fake).mean()}
        if wrong_cond is None:  # unconditional: the plain GAN of eq 1
            loss = loss_real + loss_fake
        else:  # eq 2: log s_r + (log(1 - s_w) + log(1 - s_f)) / 2
            logit_wrong = critic(real, wrong_cond).float()
            loss_wrong = F.binary_cross_entropy_with_logits(logit_wrong, torch.zeros_like(logit_wrong))
            loss = loss_real + (loss_wrong + loss_fake) / 2
            terms["s_w"] = torch.sigmoid(logit_wrong).mean()
        terms["d_loss"] = loss
        return loss, {k: v.detach() for k, v in terms.items()}

    if objective == "hinge":
        # Geometric GAN (Lim & Ye 2017), as used with spectral norm and the projection discriminator (Miyato
        # et al. 2018): E[relu(1 - D(x, c))] + E[relu(1 + D(G(z), c))]. The mismatch term is the report's
        # alpha term (eq 10) in hinge form: a real image with a wrong sound is a third negative, weight alpha.
        d_real = critic(real, cond).float()
        d_fake = critic(fake, cond).float()
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        terms = {"d_real": d_real.mean(), "d_fake": d_fake.mean()}
        if wrong_cond is not None:
            d_wrong = critic(real, wrong_cond).float()
            loss = loss + alpha * F.relu(1 + d_wrong).mean()
            terms["d_wrong"] = d_wrong.mean()
        terms["critic_loss"] = loss
        return loss, {k: v.detach() for k, v in terms.items()}

    if objective not in ("wgan", "wgan-gp"):
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    f_real = critic(real, cond).float().mean()
    f_fake = critic(fake, cond).float().mean()
    wasserstein = f_real - f_fake
    terms = {"critic_real": f_real, "critic_fake": f_fake, "wasserstein": wasserstein}
    objective_value = wasserstein  # what the critic maximises (eq 9)
    if wrong_cond is not None:  # eq 10: - alpha * f(x, l_false)
        f_wrong = critic(real, wrong_cond).float().mean()
        objective_value = objective_value - alpha * f_wrong
        terms["critic_wrong"] = f_wrong
    loss = -objective_value
    if objective == "wgan-gp":
        penalty = gradient_penalty(gp_critic or critic, real, fake, cond, gp_eps)
        loss = loss + gp_lambda * penalty
        terms["gradient_penalty"] = penalty
    terms["critic_loss"] = loss
    return loss, {k: v.detach() for k, v in terms.items()}


def generator_loss(
    objective: str, critic: Critic, fake: torch.Tensor, cond: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GAN-CLS: maximise log s_f (eq 4, non-saturating). WGANs and hinge: maximise f(G(z, c), c) (eq 8)."""
    score = critic(fake, cond).float()
    if objective == "gan-cls":
        loss = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
    elif objective in ("wgan", "wgan-gp", "hinge"):
        loss = -score.mean()
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return loss, {"g_loss": loss.detach()}


def critic_steps(
    objective: str,
    gen_step: int,
    n_critic: int,
    warmup_gen_steps: int = 25,
    warmup_critic_steps: int = 100,
    warmup_every: int = 500,
) -> int:
    """Critic updates before generator update `gen_step` (0-based).

    WGAN (Arjovsky et al., Algorithm 1 as released): `warmup_critic_steps` for the first `warmup_gen_steps`
    generator steps and every `warmup_every`-th one after, else `n_critic`. WGAN-GP, GAN-CLS, hinge: `n_critic`.
    """
    if objective == "wgan" and (gen_step < warmup_gen_steps or (warmup_every > 0 and gen_step % warmup_every == 0)):
        return warmup_critic_steps
    return n_critic


@torch.no_grad()
def clip_weights(critic: nn.Module, clip: float) -> None:
    """WGAN's crude Lipschitz constraint: every critic parameter into [-clip, clip]."""
    for p in critic.parameters():
        p.clamp_(-clip, clip)


def infonce(pred: torch.Tensor, target: torch.Tensor, temperature: float,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (van den Oord et al. 2018; as CLIP, Radford et al. 2021) over a batch of unit vectors:
    row i of `pred` and of `target` are the positive pair, every other row of the batch a negative; the mean of
    the two directions' cross-entropies. With `labels`, every pair of the same label is positive (the
    probability summed over them, as in supervised contrastive learning, Khosla et al. 2020); distinct labels
    give the plain loss."""
    logits = pred @ target.T / temperature
    if labels is None:
        labels = torch.arange(len(pred), device=pred.device)
    positive = labels[:, None] == labels[None, :]

    def one_way(l: torch.Tensor) -> torch.Tensor:
        return (l.logsumexp(dim=1) - l.masked_fill(~positive, float("-inf")).logsumexp(dim=1)).mean()

    return (one_way(logits) + one_way(logits.T)) / 2
