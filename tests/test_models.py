import pytest
import torch

from his.models import Critic, ResidualGenerator, SimpleGenerator, build_generator, count_flops_per_image


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("cls", [SimpleGenerator, ResidualGenerator])
def test_generators_draw_64x64_images_in_tanh_range(cls):
    g = cls(cond_dim=16, z_dim=10, ngf=8, proj_dim=12)
    x = g(torch.randn(4, 10), torch.randn(4, 16))
    assert x.shape == (4, 3, 64, 64)
    assert x.abs().max() <= 1


def test_residual_generator_adds_only_residual_blocks_to_the_simple_one():
    simple = set(SimpleGenerator(16, 10, 8, 12).state_dict())
    residual = set(ResidualGenerator(16, 10, 8, 12).state_dict())
    assert simple < residual
    assert {k.split(".")[0] for k in residual - simple} == {"res1", "res2"}


def test_unconditional_generator_shares_names_and_differs_only_in_the_input_layer():
    uncond = SimpleGenerator(cond_dim=0, z_dim=10, ngf=8).state_dict()
    cond = SimpleGenerator(cond_dim=16, z_dim=10, ngf=8, proj_dim=12).state_dict()
    assert SimpleGenerator(cond_dim=0, z_dim=10, ngf=8)(torch.randn(2, 10)).shape == (2, 3, 64, 64)
    differing = {k for k in cond if k not in uncond or uncond[k].shape != cond[k].shape}
    assert differing == {"project.linear.weight", "project.linear.bias", "up1.0.weight"}


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("spectral", [False, True])
def test_critic_gives_one_score_per_image(norm, spectral):
    d = Critic(cond_dim=16, ndf=8, proj_dim=12, norm=norm, spectral_norm=spectral)
    assert d(torch.randn(5, 3, 64, 64), torch.randn(5, 16)).shape == (5,)
    assert Critic(cond_dim=0, ndf=8, norm=norm)(torch.randn(5, 3, 64, 64)).shape == (5,)


def test_critic_score_depends_on_the_condition():
    d = Critic(cond_dim=16, ndf=8, proj_dim=12, norm="none")
    x = torch.randn(3, 3, 64, 64)
    assert not torch.allclose(d(x, torch.randn(3, 16)), d(x, torch.randn(3, 16)))


def test_layer_norm_critic_treats_samples_independently():
    d = Critic(cond_dim=16, ndf=8, norm="layer")
    x, c = torch.randn(4, 3, 64, 64), torch.randn(4, 16)
    torch.testing.assert_close(d(x, c)[:2], d(x[:2], c[:2]))


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="norm"):
        Critic(norm="instance")
    with pytest.raises(ValueError, match="generator"):
        build_generator("big", 16, 10, 8, 12)


def test_flop_count_of_a_known_layer_stack():
    # default widths: the first transposed conv alone is 2 * 228 * 512 * 16 multiply-adds
    g = SimpleGenerator()
    flops = count_flops_per_image(g, torch.randn(2, 100), torch.randn(2, 1024))
    assert flops > 2 * 228 * 512 * 16
    assert 1e8 < flops < 1e10
