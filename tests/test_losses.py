import pytest
import torch
from torch import nn

from his.losses import clip_weights, critic_loss, critic_steps, generator_loss, gradient_penalty
from his.models import Critic


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Quadratic(nn.Module):
    """f(x, c) = 0.5 * w * ||x||^2 + c.sum(): grad_x f = w * x, known in closed form."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x, cond=None):
        out = 0.5 * self.w * x.pow(2).flatten(1).sum(1)
        return out if cond is None else out + cond.sum(1)


def test_gradient_penalty_equals_its_definition():
    torch.manual_seed(0)
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    eps = torch.rand(4, 1, 1, 1)
    critic = Quadratic(0.3)
    x_hat = eps * real + (1 - eps) * fake
    expected = ((0.3 * x_hat).flatten(1).norm(dim=1) - 1).pow(2).mean()
    penalty = gradient_penalty(critic, real, fake, torch.randn(4, 2), eps)
    torch.testing.assert_close(penalty, expected)
    # and it is differentiable in the critic's parameters (double backward): d/dw of mean((w*|x|-1)^2)
    penalty.backward()
    norms = x_hat.flatten(1).norm(dim=1)
    torch.testing.assert_close(critic.w.grad, (2 * (0.3 * norms - 1) * norms).mean())


def test_gradient_penalty_of_a_unit_lipschitz_linear_critic_is_zero():
    lin = nn.Linear(12, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.ones(1, 12) / 12**0.5)
    critic = lambda x, c: lin(x.flatten(1)).flatten()  # noqa: E731
    assert gradient_penalty(critic, torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2), None) < 1e-10


def test_gan_cls_discriminator_loss_is_eq2():
    torch.manual_seed(0)
    d = Critic(cond_dim=6, ndf=8, proj_dim=4, norm="none")
    real, fake = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    cond, wrong = torch.randn(4, 6), torch.randn(4, 6)
    loss, terms = critic_loss("gan-cls", d, real, fake, cond, wrong)
    s_r, s_w, s_f = (torch.sigmoid(d(x, c)) for x, c in ((real, cond), (real, wrong), (fake, cond)))
    expected = -(torch.log(s_r) + (torch.log(1 - s_w) + torch.log(1 - s_f)) / 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["s_w"], s_w.mean())
    g_loss, _ = generator_loss("gan-cls", d, fake, cond)
    torch.testing.assert_close(g_loss, -torch.log(s_f).mean())


def test_wgan_critic_loss_is_eq10_and_gp_adds_the_penalty():
    torch.manual_seed(0)
    d = Critic(cond_dim=6, ndf=8, proj_dim=4, norm="layer")
    real, fake = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    cond, wrong = torch.randn(4, 6), torch.randn(4, 6)
    loss, terms = critic_loss("wgan", d, real, fake, cond, wrong, alpha=0.3)
    expected = -(d(real, cond).mean() - d(fake, cond).mean() - 0.3 * d(real, wrong).mean())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["wasserstein"], d(real, cond).mean() - d(fake, cond).mean())
    eps = torch.rand(4, 1, 1, 1)
    loss_gp, terms_gp = critic_loss("wgan-gp", d, real, fake, cond, wrong, alpha=0.3, gp_lambda=10, gp_eps=eps)
    torch.testing.assert_close(loss_gp, expected + 10 * gradient_penalty(d, real, fake, cond, eps))
    assert set(terms_gp) == {"critic_real", "critic_fake", "critic_wrong", "wasserstein", "gradient_penalty", "critic_loss"}


def test_unconditional_variants_have_no_mismatch_term():
    d = Critic(cond_dim=0, ndf=8, norm="none")
    real, fake = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    for objective in ("wgan", "wgan-gp", "gan-cls"):
        loss, terms = critic_loss(objective, d, real, fake, None)
        assert torch.isfinite(loss) and "critic_wrong" not in terms and "s_w" not in terms


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective"):
        critic_loss("lsgan", Quadratic(1.0), torch.zeros(1, 3), torch.zeros(1, 3), None)


def test_critic_steps_schedule():
    assert [critic_steps("wgan", s, 5) for s in (0, 24, 25, 499, 500, 501, 1000)] == [100, 100, 5, 5, 100, 5, 100]
    assert {critic_steps("wgan-gp", s, 5) for s in range(0, 1001, 7)} == {5}
    assert critic_steps("gan-cls", 0, 1) == 1


def test_clip_weights_bounds_every_parameter():
    d = Critic(cond_dim=6, ndf=8, proj_dim=4)
    clip_weights(d, 0.01)
    assert max(p.abs().max() for p in d.parameters()) <= 0.01
