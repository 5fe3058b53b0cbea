import pytest
import torch

from his.augment import augmented, color, cutout, diff_augment, parse_policy, translate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 64, 64, generator=_gen(seed)) * 2 - 1


def test_translate_by_a_known_shift():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    # one row down, one column left: out[i, j] = x[i - 1, j + 1], zeros where that falls outside
    expected = torch.tensor([[0.0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]])
    torch.testing.assert_close(translate(x, torch.tensor([1]), torch.tensor([-1]))[0, 0], expected)
    # per sample: the second sample is moved two columns right and not at all vertically
    two = torch.cat([x, x])
    out = translate(two, torch.tensor([1, 0]), torch.tensor([-1, 2]))
    torch.testing.assert_close(out[1, 0], torch.cat([torch.zeros(4, 2), x[0, 0, :, :2]], dim=1))
    torch.testing.assert_close(translate(two, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), two)


def test_random_translation_is_a_zero_padded_shift_of_at_most_an_eighth():
    x = _images(6) + 3  # no zeros in the image, so the padding is recognisable
    out = diff_augment(x, "translation", _gen(1))
    found = [None] * len(x)
    for dy in range(-8, 9):
        for dx in range(-8, 9):
            shifted = translate(x, torch.full((6,), dy), torch.full((6,), dx))
            for b in range(len(x)):
                if torch.equal(out[b], shifted[b]):
                    found[b] = (dy, dx)
    assert None not in found, found  # each sample is exactly one such shift
    assert any(s != (0, 0) for s in found)


def test_cutout_zeros_exactly_a_quarter_as_one_square():
    out = diff_augment(torch.ones(8, 3, 64, 64), "cutout", _gen(0))
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same pixels in every channel
    assert (zero[:, 0].flatten(1).float().mean(1) == 0.25).all()
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert rows.max() - rows.min() + 1 == 32 and cols.max() - cols.min() + 1 == 32  # one 32x32 square
    corners = {tuple(m.nonzero()[0].tolist()) for m in zero[:, 0]}
    assert len(corners) > 1  # placed per sample


def test_cutout_of_a_known_square():
    out = cutout(torch.ones(1, 1, 4, 4), torch.tensor([1]), torch.tensor([2]), 2, 2)
    expected = torch.ones(4, 4)
    expected[1:3, 2:4] = 0
    torch.testing.assert_close(out[0, 0], expected)


def test_color_on_a_flat_image_is_a_per_sample_brightness_shift():
    # saturation and contrast scale deviations from a mean, and a flat image has none
    x = torch.full((8, 3, 8, 8), 0.2)
    out = color(x, _gen(0))
    offsets = out[:, 0, 0, 0] - 0.2
    torch.testing.assert_close(out, (0.2 + offsets).view(-1, 1, 1, 1).expand_as(out))
    assert (offsets.abs() <= 0.5).all() and len(set(offsets.tolist())) == 8


def test_gradients_flow_through_diff_augment_to_the_input():
    x = _images(3).requires_grad_(True)
    weights = torch.randn(3, 3, 64, 64, generator=_gen(5))
    (diff_augment(x, generator=_gen(0)) * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the known gradient of a translation: 1 where a pixel lands inside the image, 0 where it falls off
    y = torch.zeros(1, 1, 4, 4, requires_grad=True)
    translate(y, torch.tensor([2]), torch.tensor([0])).sum().backward()
    torch.testing.assert_close(y.grad[0, 0], torch.tensor([[1.0] * 4] * 2 + [[0.0] * 4] * 2))


def test_the_generator_decides_everything():
    x = _images()
    a = diff_augment(x, generator=_gen(7))
    torch.testing.assert_close(a, diff_augment(x, generator=_gen(7)), rtol=0, atol=0)
    assert not torch.equal(a, diff_augment(x, generator=_gen(8)))
    # resuming from a saved generator state repeats the step exactly
    g = _gen(3)
    diff_augment(x, generator=g)
    state = g.get_state()
    b = diff_augment(x, generator=g)
    g.set_state(state)
    assert torch.equal(b, diff_augment(x, generator=g))
    assert torch.equal(x, _images())  # the input is not modified
    rng = torch.get_rng_state()
    diff_augment(x, generator=g)
    assert torch.equal(torch.get_rng_state(), rng)  # torch's global generator is left alone


def test_empty_policy_is_the_identity_and_unknown_parts_are_refused():
    x = _images(2)
    assert diff_augment(x, "") is x
    assert diff_augment(x, " , ") is x
    assert parse_policy(" color, cutout ") == ["color", "cutout"]
    with pytest.raises(ValueError, match="rotate"):
        diff_augment(x, "color,rotate")
    with pytest.raises(ValueError, match="flip"):
        augmented(lambda i, c: i.sum(), "flip")


def test_augmented_critic_sees_augmented_images():
    critic = lambda image, cond: image.flatten(1).sum(1)  # noqa: E731
    assert augmented(critic, "") is critic
    scores = augmented(critic, "cutout", _gen(0))(torch.ones(2, 3, 64, 64), None)
    torch.testing.assert_close(scores, torch.full((2,), 0.75 * 3 * 64 * 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_result():
    x = _images()
    cpu = diff_augment(x, generator=_gen(11))
    xg = x.cuda().requires_grad_(True)
    gpu = diff_augment(xg, generator=_gen(11))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
    gpu.sum().backward()
    assert torch.isfinite(xg.grad).all()
    with pytest.raises(ValueError, match="CPU"):
        diff_augment(xg, generator=torch.Generator(device="cuda"))
