import pytest
import torch
import torch.nn.functional as F
from torch import nn

from his.models import (
    ConditionalBatchNorm,
    Critic,
    ProjectionCritic,
    ResidualGenerator,
    ResNetGenerator,
    SimpleGenerator,
    build_critic,
    build_generator,
    count_flops_per_image,
    init_weights,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("cls", [SimpleGenerator, ResidualGenerator, ResNetGenerator])
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


def test_conditional_batch_norm_is_batch_norm_scaled_and_shifted_linearly_in_the_embedding():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm(channels=3, emb_dim=2)
    x, emb = torch.randn(4, 3, 5, 5), torch.randn(4, 2)
    plain = nn.BatchNorm2d(3)
    cbn.zero_condition_layers()
    torch.testing.assert_close(cbn(x, emb), plain(x))  # untrained: exactly batch norm
    g, b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    with torch.no_grad():
        cbn.gain.weight.copy_(g)
        cbn.shift.weight.copy_(b)
    x_hat = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    want = x_hat * (1 + emb @ g.T)[:, :, None, None] + (emb @ b.T)[:, :, None, None]
    torch.testing.assert_close(cbn(x, emb), want, rtol=1e-4, atol=1e-5)


def test_resnet_generator_takes_the_sound_at_every_block_and_warm_starts_from_the_unconditional_one():
    torch.manual_seed(0)
    g = ResNetGenerator(cond_dim=16, z_dim=10, ngf=8, proj_dim=12).eval()
    z = torch.randn(1, 10).expand(3, -1)
    assert not torch.allclose(g(z, torch.randn(3, 16))[0], g(z, torch.randn(3, 16))[1])
    with torch.no_grad():  # every block's norm reads the sound: zero the input's sound columns, it still matters
        g.input.weight[:, 10:] = 0
        for block in g.blocks:
            torch.nn.init.normal_(block.norm1.gain.weight, 0, 0.5)
    c = torch.randn(2, 16)
    assert not torch.allclose(g(z[:2], c)[0], g(z[:2], c.flip(0))[0])
    uncond = ResNetGenerator(cond_dim=0, z_dim=10, ngf=8).state_dict()
    cond = g.state_dict()
    assert set(uncond) < set(cond)
    assert ResNetGenerator(cond_dim=0, z_dim=10, ngf=8)(torch.randn(2, 10)).shape == (2, 3, 64, 64)
    differing = {k for k in cond if k not in uncond or uncond[k].shape != cond[k].shape}
    assert {k.split(".")[0] for k in differing} == {"project", "input", "blocks"}
    assert {k.rsplit(".", 2)[-2] for k in differing if k.startswith("blocks")} == {"gain", "shift"}


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


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("proj_dim", [None, 6])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_projection_critic_gives_one_score_per_image(proj_dim, norm):
    d = ProjectionCritic(cond_dim=16, ndf=8, proj_dim=proj_dim, norm=norm)
    assert d(torch.randn(5, 3, 64, 64), torch.randn(5, 16)).shape == (5,)
    assert ProjectionCritic(cond_dim=0, ndf=8, norm=norm)(torch.randn(5, 3, 64, 64)).shape == (5,)


def test_projection_term_is_the_inner_product_of_embedded_condition_and_pooled_features():
    torch.manual_seed(0)
    x, c = torch.randn(3, 3, 64, 64), torch.randn(3, 16)
    d = ProjectionCritic(cond_dim=16, ndf=8, spectral_norm=False)
    with torch.no_grad():
        d.psi.weight.zero_()
        d.psi.bias.zero_()
    phi = d.features(x).sum(dim=(2, 3))  # global sum pooling, by hand
    torch.testing.assert_close(d(x, c), (c @ d.embed.weight.T * phi).sum(1))
    # with spectral norm (eval: no power iteration between the calls), psi is the only other term
    d = ProjectionCritic(cond_dim=16, ndf=8).eval()
    phi = d.phi(x)
    torch.testing.assert_close(d(x, c), d.psi(phi).flatten() + (d.embed(c) * phi).sum(1))


def test_class_term_is_the_embedding_row_of_the_class_times_the_pooled_features():
    torch.manual_seed(0)
    x, c, y = torch.randn(3, 3, 64, 64), torch.randn(3, 16), torch.tensor([2, 0, 2])
    d = ProjectionCritic(cond_dim=16, ndf=8, n_classes=4).eval()
    with_class = torch.cat([c, F.one_hot(y, 4).float()], dim=1)
    phi = d.phi(x)
    v = d.class_embed.weight.T  # (n_classes, width): row y is V's column for class y in the paper's y^T V phi(x)
    sound_only = d.psi(phi).flatten() + (d.embed(c) * phi).sum(1)
    torch.testing.assert_close(d(x, with_class), sound_only + (v[y] * phi).sum(1))
    # the class embedding has its own spectral norm (the paper's SNEmbedID) and starts fresh from any other critic
    assert hasattr(d.class_embed, "parametrizations")
    without = ProjectionCritic(cond_dim=16, ndf=8).state_dict()
    assert {k.split(".")[0] for k in set(d.state_dict()) - set(without)} == {"class_embed"}
    with pytest.raises(ValueError, match="class"):
        build_critic("concat", 16, 8, 12, n_classes=4)
    with pytest.raises(ValueError, match="sound"):
        ProjectionCritic(cond_dim=0, ndf=8, n_classes=4)


def test_projection_critic_is_affine_in_the_condition_even_with_a_bottleneck():
    torch.manual_seed(0)
    d = ProjectionCritic(cond_dim=16, ndf=8, proj_dim=4).eval()
    x, c1, c2 = torch.randn(2, 3, 64, 64), torch.randn(2, 16), torch.randn(2, 16)
    g = lambda c: d(x, c) - d(x, torch.zeros_like(c))  # noqa: E731
    torch.testing.assert_close(g(c1 + 2 * c2), g(c1) + 2 * g(c2))
    assert not torch.allclose(g(c1), g(c2))  # and it does depend on the condition


@pytest.mark.parametrize("proj_dim", [None, 4])
def test_projection_critic_has_spectral_norm_on_every_layer(proj_dim):
    torch.manual_seed(0)
    d = ProjectionCritic(cond_dim=16, ndf=8, proj_dim=proj_dim)
    layers = _layers(d)
    assert len(layers) == 6 + (proj_dim is not None)  # 4 convolutions, psi, embed (1 or 2 maps)
    assert all(hasattr(m, "parametrizations") for m in layers)
    x, c = torch.randn(2, 3, 64, 64), torch.randn(2, 16)
    for _ in range(10):  # training-mode calls, one power iteration each
        d(x, c)
    with torch.no_grad():  # largest singular value of each (reshaped) weight; power iteration estimates from below
        sigma = [torch.linalg.matrix_norm(m.weight.flatten(1), 2).item() for m in layers]
    assert all(0.999 < s < 1.1 for s in sigma), sigma
    assert not any(hasattr(m, "parametrizations") for m in _layers(ProjectionCritic(16, 8, spectral_norm=False)))


def test_projection_critic_has_no_batch_norm():
    d = ProjectionCritic(cond_dim=16, ndf=8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    with pytest.raises(ValueError, match="norm"):
        ProjectionCritic(cond_dim=16, ndf=8, norm="batch")


def test_layer_norm_projection_critic_treats_samples_independently():
    d = ProjectionCritic(cond_dim=16, ndf=8, norm="layer").eval()
    x, c = torch.randn(4, 3, 64, 64), torch.randn(4, 16)
    torch.testing.assert_close(d(x, c)[:2], d(x[:2], c[:2]))


def test_unconditional_projection_critic_warm_starts_all_but_the_embedding():
    uncond = ProjectionCritic(cond_dim=0, ndf=8).state_dict()
    cond = ProjectionCritic(cond_dim=16, ndf=8).state_dict()
    assert set(uncond) < set(cond)
    assert all(uncond[k].shape == cond[k].shape for k in uncond)
    assert {k.split(".")[0] for k in set(cond) - set(uncond)} == {"embed"}


def test_init_weights_works_on_the_spectrally_normalised_projection_critic():
    d = ProjectionCritic(cond_dim=16, ndf=8)
    with torch.no_grad():
        for p in d.parameters():
            p.fill_(1.0)
    init_weights(d)
    originals = [m.parametrizations.weight.original for m in _layers(d)]
    assert all(0.01 < w.std().item() < 0.03 and w.mean().abs().item() < 0.01 for w in originals)
    assert all((m.bias == 0).all() for m in _layers(d) if m.bias is not None)
    assert torch.isfinite(d(torch.randn(2, 3, 64, 64), torch.randn(2, 16))).all()


def test_build_critic_kinds_and_their_defaults():
    concat = build_critic("concat", 16, 8, 12)
    assert type(concat) is Critic and any(isinstance(m, nn.BatchNorm2d) for m in concat.modules())
    assert not any(hasattr(m, "parametrizations") for m in _layers(concat))
    projection = build_critic("projection", 16, 8, None)
    assert type(projection) is ProjectionCritic and all(hasattr(m, "parametrizations") for m in _layers(projection))
    assert isinstance(projection.embed, nn.Linear)
    plain = build_critic("projection", 16, 8, 4, norm="layer", spectral_norm=False)
    assert isinstance(plain.embed, nn.Sequential) and any(isinstance(m, nn.GroupNorm) for m in plain.modules())
    assert not any(hasattr(m, "parametrizations") for m in _layers(plain))
    with pytest.raises(ValueError, match="critic"):
        build_critic("stylegan", 16, 8, 12)


def test_flatten_pooling_lets_the_projection_see_where_a_feature_is():
    torch.manual_seed(0)
    h = torch.randn(2, 64, 4, 4)  # a trunk output: the same features, the player moved up (rows reversed)
    c = torch.randn(2, 16)
    scores = {}
    for pool in ("sum", "flatten"):
        d = ProjectionCritic(cond_dim=16, ndf=8, pool=pool, spectral_norm=False)
        d.features = nn.Identity()
        scores[pool] = d(h, c), d(h.flip(2), c)
        assert d.phi(h).shape == (2, 64 * (16 if pool == "flatten" else 1))
        # still the projection form: psi(phi) + <embed(c), phi>
        torch.testing.assert_close(d(h, c), d.psi(d.phi(h)).flatten() + (d.embed(c) * d.phi(h)).sum(1))
    torch.testing.assert_close(*scores["sum"])
    assert not torch.allclose(*scores["flatten"])
    with pytest.raises(ValueError, match="pool"):
        ProjectionCritic(pool="max")


def _two_class_gallery(heard_class: bool):
    """Class 0 at x0 = -1 spread far along x1 (x1 = +-3), class 1 at x0 = +1, x1 = 0: the sound (-0.5, 0) is on
    class 0's side of the line a linear reader draws (x0 = 0), yet its nearest gallery sounds are class 1's."""
    from his.models import RetrievalGenerator

    features = torch.zeros(8, 4)
    features[:4, 0], features[:4, 1] = -1.0, torch.tensor([3.0, 3.0, -3.0, -3.0])
    features[4:, 0], features[4:, 2] = 1.0, torch.linspace(-0.1, 0.1, 4)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    g = RetrievalGenerator(cond_dim=4, z_dim=6, ngf=4, proj_dim=8, neighbours=2, heard_class=heard_class)
    g.set_gallery(torch.zeros(8, 3, 64, 64), features, torch.arange(8), labels)
    return g, labels


def test_heard_class_retrieval_looks_up_frames_of_the_class_a_linear_reader_hears():
    sound = torch.tensor([[-0.5, 0.0, 0.0, 0.0]])
    for heard_class, expected in ((False, 1), (True, 0)):
        g, labels = _two_class_gallery(heard_class)
        for z0 in (-3.0, 0.0, 3.0):
            z = torch.zeros(1, 6)
            z[0, 0] = z0
            assert labels[g.neighbour_rows(sound, z)].item() == expected
    assert g.heard(sound).tolist() == [0] and g.heard(torch.tensor([[0.5, 0.0, 0.0, 0.0]])).tolist() == [1]
    # the checkpoint carries the reader and the labels: a fresh generator loaded from it hears the same
    fresh = build_generator("retrieval", 4, 6, 4, 8, neighbours=2, heard_class=True)
    fresh.load_state_dict(g.state_dict())
    assert torch.equal(fresh.reader_weight, g.reader_weight) and torch.equal(fresh.gallery_labels, labels)
    assert fresh(torch.randn(3, 6), sound.expand(3, 4)).shape == (3, 3, 64, 64)


def test_retrieval_never_picks_a_row_it_excluded_while_any_is_left():
    g, labels = _two_class_gallery(heard_class=True)
    sound = torch.tensor([[-0.5, 0.0, 0.0, 0.0]])
    # three of class 0's four rows excluded (their groups): the one left is every pick, whatever z_0 says
    g.gallery_groups = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5])
    for z0 in (-3.0, 0.0, 3.0):
        z = torch.zeros(1, 6)
        z[0, 0] = z0
        assert g.neighbour_rows(sound, z, exclude_groups=torch.tensor([0])).tolist() == [3]
    # nothing of the heard class left: the nearest rows of another class, never an excluded one
    g.gallery_groups = torch.tensor([0, 0, 0, 0, 2, 3, 4, 5])
    z = torch.zeros(1, 6)
    assert labels[g.neighbour_rows(sound, z, exclude_groups=torch.tensor([0]))].item() == 1


def test_a_heard_class_gallery_needs_its_labels():
    from his.models import RetrievalGenerator

    g = RetrievalGenerator(cond_dim=4, z_dim=6, ngf=4, proj_dim=8, heard_class=True)
    with pytest.raises(ValueError, match="class labels"):
        g.set_gallery(torch.zeros(2, 3, 64, 64), torch.randn(2, 4), torch.arange(2))


def test_an_editing_retrieval_generator_adds_its_drawing_to_the_neighbour_frame_in_tanh_logits():
    g, _ = _two_class_gallery(heard_class=False)
    g.edit = True
    g.gallery_images = (torch.rand(8, 3, 64, 64) * 2 - 1).half()
    g.gallery_images[0, 0, 0, 0] = 1.0  # a saturated pixel comes back, not as nan
    nn.init.zeros_(g.to_rgb.weight)
    nn.init.zeros_(g.to_rgb.bias)
    sound, z = g.gallery_features, torch.randn(8, 6)
    neighbour = g.gallery_images[g.neighbour_rows(sound, z)].float()
    torch.testing.assert_close(g.eval()(z, sound), neighbour, atol=1e-3, rtol=0)  # drawing nothing: the neighbour
    with torch.no_grad():
        g.to_rgb.bias.fill_(0.5)
    torch.testing.assert_close(g(z, sound), torch.tanh(torch.atanh(neighbour.clamp(-0.999, 0.999)) + 0.5))
