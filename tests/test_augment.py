import pytest
import torch

from dpcore.augment import DSA, crop_flip
from dpcore.errors import ConfigError


def batch(n=8, c=3, s=16, seed=0):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_crop_flip_shape_and_reproducible():
    x = batch()
    a = crop_flip(x, generator=torch.Generator().manual_seed(1))
    b = crop_flip(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, crop_flip(x, generator=torch.Generator().manual_seed(2)))


def test_crop_flip_pad0_is_identity_or_flip():
    x = batch(n=32)
    y = crop_flip(x, pad=0, generator=torch.Generator().manual_seed(3))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and same.any() and flipped.any()


def test_crop_flip_is_a_shifted_window():
    x = torch.arange(16.0).view(1, 1, 4, 4) + 1
    y = crop_flip(x.expand(64, 1, 4, 4), pad=1, generator=torch.Generator().manual_seed(0))
    nonzero = y[y != 0]
    assert set(nonzero.tolist()) <= set(x.flatten().tolist())
    assert (y == 0).any()  # some crops show the zero padding


@pytest.mark.parametrize("batchwise", [True, False])
def test_dsa_same_seed_same_output_and_siamese_prefix(batchwise):
    dsa = DSA(batchwise=batchwise)
    x = batch()
    for seed in range(12):
        a = dsa(x, seed)
        assert a.shape == x.shape
        torch.testing.assert_close(a, dsa(x, seed))
        torch.testing.assert_close(dsa(x[:3], seed), a[:3])


def test_dsa_batchwise_applies_one_transform_to_all_samples():
    x = batch(n=1).expand(4, -1, -1, -1)
    for seed in range(12):
        y = DSA(batchwise=True)(x, seed)
        torch.testing.assert_close(y, y[:1].expand_as(y))


@pytest.mark.parametrize("op", DSA.OPS)
def test_dsa_each_op_differentiable(op):
    x = batch(n=4, s=12).requires_grad_(True)
    dsa = DSA(op, batchwise=False)
    seed = next(s for s in range(50) if not torch.equal(dsa(x, s), x))  # flip may be a no-op
    y = dsa(x, seed)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dsa_covers_all_ops_and_validates():
    dsa = DSA()
    x = batch(n=2, s=8)
    outputs = {tuple(dsa(x, s).flatten().tolist()) for s in range(40)}
    assert len(outputs) > 6
    assert DSA("none")(x, 0) is x
    with pytest.raises(ConfigError, match="allowed"):
        DSA("color_blur")


def test_crop_flip_draws_on_the_batch_device_without_copies():
    from sync_guard import record_syncs

    x = batch()
    gen = torch.Generator(device=x.device).manual_seed(4)
    assert record_syncs(lambda: crop_flip(x, generator=gen)) == {}  # no .to(), no reads
    assert record_syncs(lambda: crop_flip(x)) == {}  # the global RNG, on x's device


@pytest.mark.parametrize("op", DSA.OPS)
def test_dsa_apply_draws_on_the_generator_and_stays_differentiable(op):
    from sync_guard import record_syncs

    dsa = DSA(op, batchwise=False)
    x = batch(n=6, s=12).requires_grad_(True)
    a = dsa.apply(x, op, torch.Generator().manual_seed(5))
    assert torch.equal(a, dsa.apply(x, op, torch.Generator().manual_seed(5)))
    assert a.shape == x.shape and record_syncs(lambda: dsa.apply(x, op, torch.Generator().manual_seed(5))) == {}
    (a * torch.randn_like(a)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_dsa_sampler_replays_its_ops_and_draws_from_the_training_generator():
    dsa = DSA(batchwise=False)
    x = batch(n=4)

    def outputs(seed, gen_seed):
        aug, gen = dsa.sampler(seed), torch.Generator().manual_seed(gen_seed)
        return [aug(x, gen) for _ in range(12)]

    a, b = outputs(1, 2), outputs(1, 2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # same seeds: the same ops and parameters
    assert any(not torch.equal(u, v) for u, v in zip(a, outputs(1, 3)))  # another generator: other parameters
    assert any(not torch.equal(u, v) for u, v in zip(a, outputs(7, 2)))  # another seed: other ops
    assert DSA("none").sampler(0)(x, torch.Generator()) is x
