import pytest
import torch
from torch import nn

from his.losses import OBJECTIVES, clip_weights, critic_loss, critic_steps, generator_loss, gradient_penalty
from his.models import Critic, ProjectionCritic


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


# hinge: a fake critic whose score is the "image" plus the condition, so every score is set by hand
REAL = [2.0, 0.5, -1.0, 1.0]  # relu(1 - s) = 0, .5, 2, 0: mean 0.625
FAKE = [-3.0, -0.5, 0.0, 1.0]  # relu(1 + s) = 0, .5, 1, 2: mean 0.875
WRONG = -2.0  # real + wrong = 0, -1.5, -3, -1: relu(1 + s) = 1, 0, 0, 0: mean 0.25


def _hinge_case():
    critic = lambda x, c: (x + c).flatten()  # noqa: E731
    real, fake = torch.tensor(REAL)[:, None], torch.tensor(FAKE)[:, None]
    return critic, real, fake, torch.zeros(4, 1), torch.full((4, 1), WRONG)


def test_hinge_critic_loss_on_hand_computed_scores():
    critic, real, fake, cond, wrong = _hinge_case()
    assert "hinge" in OBJECTIVES
    loss, terms = critic_loss("hinge", critic, real, fake, cond)
    torch.testing.assert_close(loss, torch.tensor(0.625 + 0.875))
    assert set(terms) == {"d_real", "d_fake", "critic_loss"}
    loss, terms = critic_loss("hinge", critic, real, fake, cond, wrong, alpha=0.4)
    torch.testing.assert_close(loss, torch.tensor(0.625 + 0.875 + 0.4 * 0.25))
    expected = {"d_real": 0.625, "d_fake": -0.625, "d_wrong": -1.375, "critic_loss": 1.6}
    assert {k: v.item() for k, v in terms.items()} == pytest.approx(expected)
    assert not any(v.requires_grad for v in terms.values())


def test_hinge_mismatch_term_is_weighted_by_alpha():
    critic, real, fake, cond, wrong = _hinge_case()
    without, _ = critic_loss("hinge", critic, real, fake, cond)
    for alpha in (0.0, 0.25, 1.0, 3.0):
        loss, _ = critic_loss("hinge", critic, real, fake, cond, wrong, alpha=alpha)
        torch.testing.assert_close(loss - without, torch.tensor(alpha * 0.25))


def test_hinge_critic_gradient_vanishes_past_the_margin():
    critic, real, fake, cond, _ = _hinge_case()
    real.requires_grad_(True)
    fake.requires_grad_(True)
    critic_loss("hinge", critic, real, fake, cond)[0].backward()
    # d/ds relu(1 - s) = -1 inside the margin (s < 1), 0 beyond; d/ds relu(1 + s) = +1 for s > -1; mean over 4
    torch.testing.assert_close(real.grad.flatten(), torch.tensor([0.0, -0.25, -0.25, 0.0]))
    torch.testing.assert_close(fake.grad.flatten(), torch.tensor([0.0, 0.25, 0.25, 0.25]))


def test_hinge_generator_loss_raises_the_fake_score():
    critic, _, fake, cond, _ = _hinge_case()
    fake.requires_grad_(True)
    loss, terms = generator_loss("hinge", critic, fake, cond)
    torch.testing.assert_close(loss, torch.tensor(0.625))  # -mean(FAKE)
    loss.backward()
    torch.testing.assert_close(fake.grad.flatten(), torch.full((4,), -0.25))  # descent raises every D(G(z))
    assert set(terms) == {"g_loss"}


def test_hinge_with_projection_critics_conditional_and_not():
    torch.manual_seed(0)
    real, fake = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    loss, terms = critic_loss("hinge", ProjectionCritic(cond_dim=0, ndf=8), real, fake, None)
    assert torch.isfinite(loss) and "d_wrong" not in terms
    d = ProjectionCritic(cond_dim=6, ndf=8).eval()
    cond, wrong = torch.randn(2, 6), torch.randn(2, 6)
    loss, terms = critic_loss("hinge", d, real, fake, cond, wrong, alpha=0.5)
    s_r, s_f, s_w = d(real, cond), d(fake, cond), d(real, wrong)
    expected = (1 - s_r).relu().mean() + (1 + s_f).relu().mean() + 0.5 * (1 + s_w).relu().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in d.parameters())


def test_hinge_takes_n_critic_steps_throughout():
    assert {critic_steps("hinge", s, 5) for s in (0, 1, 24, 25, 500, 1000)} == {5}
