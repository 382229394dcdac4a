"""DM's exact shortcuts and the distillers' shared scaffolding (sampling, seeded DSA, curves, meta)."""

from __future__ import annotations

import pytest
import torch

from dpcore.data.dataset import Dataset
from dpcore.models import build_model
from dpcore.synthetic import DISTILLERS
from dpcore.synthetic.dm import RealMeans, folded_first_layer, linear_front
from dpcore.synthetic.dsa import SeededDSA, make_dsa
from dpcore.synthetic.meta import curve, distill_meta
from dpcore.synthetic.sampling import ClassSampler, RealImages, initial_images
from dpcore.training import device_generator
from conftest import template_dataset

C, PER_CLASS, SHAPE = 4, 30, (1, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return template_dataset(C, PER_CLASS, SHAPE)


def lenet(in_shape=SHAPE):
    return build_model("lenet-300-100", num_classes=C, in_shape=in_shape)


def _dm(ds, seed=0, **params):
    return DISTILLERS["dm"].distill(ds, ipc=2, model_factory=lenet, seed=seed, device="cpu",
                                    params={"iterations": 6, "batch_real": 16, "dsa": True, **params})


@pytest.mark.parametrize("embedder", ["", "convnet:width=4,depth=1"], ids=["lenet-folded", "convnet"])
def test_dm_same_seed_same_images(ds, embedder):
    a, b, c = _dm(ds, embedder=embedder), _dm(ds, embedder=embedder), _dm(ds, seed=1, embedder=embedder)
    assert torch.equal(a.images, b.images) and a.meta["loss_curve"] == b.meta["loss_curve"]
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_folded_first_layer_equals_augment_then_layer(op):
    """Folding the batchwise augmentation into the first Linear gives the layer's output on the
    augmented images (every DSA op is affine and the same for every image of a call)."""
    torch.manual_seed(0)
    shape = (3, 10, 10)
    net = lenet(shape).double()
    first, rest = linear_front(net)
    aug = SeededDSA(op)
    x = torch.randn(50, *shape, dtype=torch.float64)
    for seed in (1, 2, 3):
        weight, bias = folded_first_layer(first, aug, seed, shape)
        want = first(aug(x, seed).flatten(1))
        assert torch.allclose(x.flatten(1) @ weight.t() + bias, want, atol=1e-10), op
        assert torch.allclose(rest(x.flatten(1) @ weight.t() + bias), net.embed(aug(x, seed)), atol=1e-10)


@pytest.mark.parametrize("strategy", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_folded_real_means_equal_augmenting_the_real_batch(ds, strategy):
    """DM's folded path (augmentation folded into the first layer, constant pixels into its bias) gives
    the per-class mean embeddings of the augmented real batch."""
    x = ds.x_train.clone()
    x[:, :, 0, :] = 7  # a constant top row: pixels dropped from the product
    data = Dataset("tiny", x, ds.y_train, x[:8], ds.y_train[:8], C, (0.5,), (0.25,))
    net = lenet()
    take = torch.tensor([20, 20, 12, 20])
    aug = make_dsa(True, strategy)
    folded = RealMeans(data, take, torch.device("cpu"), aug, 0, net, fold=True)
    direct = RealMeans(data, take, torch.device("cpu"), aug, 0, net)
    assert not direct.fold  # by default only when the layer has fewer units (300) than the batch images (72)
    assert folded.const.numel() == 8 and folded.pool.shape == (120, 56)
    for seed in range(3):
        a, b = folded(net, seed), direct(net, seed)
        assert a.shape == (C, 100) and torch.allclose(a, b, rtol=1e-4, atol=1e-5), (strategy, (a - b).abs().max())
    without = RealMeans(data, take, torch.device("cpu"), None, 0, net)
    assert not without.fold  # nothing to fold without DSA


def test_linear_front_only_for_flatten_then_linear():
    assert linear_front(lenet()) is not None
    assert linear_front(build_model("convnet", num_classes=C, in_shape=SHAPE, width=4, depth=1)) is None
    assert linear_front(torch.nn.Linear(3, 4)) is None


def test_seeded_dsa_is_siamese_and_seeded():
    aug = make_dsa(True, "color_crop_cutout_flip_scale_rotate")
    x = torch.randn(6, 1, 8, 8)
    assert {aug.op(s) for s in range(60)} == set(aug.ops)  # every op gets picked
    for s in range(12):
        # batchwise: the same seed transforms any batch alike, image by image
        assert torch.equal(aug(x, s)[:2], aug(x[:2], s)) and torch.equal(aug(x, s), aug(x, s))
    per_image = make_dsa(True, "scale", batchwise=False)
    y = per_image(x, 5)
    assert torch.equal(y[:3], per_image(x[:3], 5))  # the first k images of two batches still match
    same = per_image(x[:1].expand(6, -1, -1, -1).contiguous(), 5)  # one image six times: six transforms
    assert not torch.allclose(same[0], same[1])
    assert torch.equal(aug(x[:1].expand(6, -1, -1, -1).contiguous(), 5)[0], aug(x[:1], 5)[0])
    assert make_dsa(False, "color") is None and torch.equal(make_dsa(True, "none")(x, 1), x)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_seeded_dsa_batch_as_channels_is_dsa(op):
    """The batchwise geometric ops run on the batch as channels of one image: the same as DSA itself."""
    aug = SeededDSA(op)
    x = torch.randn(5, 3, 9, 9, requires_grad=True)
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        want = aug.dsa.apply(x, op, gen)
        got = aug(x, seed)
        assert torch.allclose(got, want, atol=1e-6), op
        g = torch.randn_like(want)
        (g_want,) = torch.autograd.grad(want, x, g)
        (g_got,) = torch.autograd.grad(got, x, g)
        assert torch.allclose(g_got, g_want, atol=1e-5), op


def test_class_sampler_draws_distinct_images_of_each_class():
    y = torch.tensor([0] * 5 + [1] * 9 + [2] * 3)[torch.randperm(17, generator=torch.Generator().manual_seed(0))]
    take = torch.tensor([4, 6, 3])  # class 2 whole, the others subsets: unequal takes
    s = ClassSampler(y, 3, take, "cpu")
    gen = device_generator(torch.device("cpu"), 0)
    seen = set()
    for _ in range(50):
        idx = s.draw(gen)
        assert idx.shape == (13,) and torch.equal(y[idx], s.classes)
        assert len(set(idx.tolist())) == 13
        seen.update(idx.tolist())
    assert seen == set(range(17))  # every image gets drawn
    again = ClassSampler(y, 3, take, "cpu")
    assert torch.equal(again.draw(device_generator(torch.device("cpu"), 0)),
                       ClassSampler(y, 3, take, "cpu").draw(device_generator(torch.device("cpu"), 0)))
    with pytest.raises(ValueError):
        ClassSampler(y, 3, torch.tensor([4, 6, 4]), "cpu")


def test_real_images_prepared_once_or_per_batch(ds):
    idx = torch.tensor([3, 0, 7])
    once, per_batch = RealImages(ds, "cpu"), RealImages(ds, "cpu", max_bytes=0)
    assert once.prepared and not per_batch.prepared
    assert torch.equal(once[idx], ds.prepare(ds.x_train[idx])) and torch.equal(per_batch[idx], once[idx])


def test_initial_images_are_each_methods_start(ds):
    images, labels, idx = initial_images(ds, 3, seed=5, device="cpu")
    assert torch.equal(labels, torch.arange(C).repeat_interleave(3)) and torch.equal(ds.y_train[idx], labels)
    assert torch.equal(images, ds.prepare(ds.x_train[idx]))
    sub = DISTILLERS["random-subset"].distill(ds, ipc=3, seed=5, params={})
    assert sub.meta["indices"] == idx.tolist() and torch.equal(sub.images, images)
    dm = DISTILLERS["dm"].distill(ds, ipc=3, model_factory=lenet, seed=5, device="cpu", params={"iterations": 1})
    assert dm.meta["init_indices"] == idx.tolist()


def test_curve_keeps_the_last_point_and_at_most_max_points():
    v = torch.arange(1, 1001, dtype=torch.float32)
    c = curve(v, 1000, max_points=300)  # stride 4: 1, 5, ..., 997 and the last, 1000
    assert c[0] == [1, 1.0] and c[-1] == [1000, 1000.0] and len(c) == 251
    assert all(b[0] - a[0] == 4 for a, b in zip(c[:-2], c[1:-1]))
    assert curve(v, 7) == [[i, float(i)] for i in range(1, 8)] and curve(v, 0) == []
    assert curve(v, 999, max_points=500)[-2:] == [[997, 997.0], [999, 999.0]]


def test_distill_meta_common_fields(ds):
    m = distill_meta("dm", ds, ipc=2, seed=3, params={"a": 1}, distill_s=1.5, done=3,
                     losses=torch.tensor([3.0, 2.0, 1.0, 0.0]), device=torch.device("cpu"), extra=7)
    assert m == {"method": "dm", "dataset": "tiny", "whitened": False, "ipc": 2, "seed": 3, "params": {"a": 1},
                 "distill_s": 1.5, "iterations_done": 3, "final_loss": 1.0,
                 "loss_curve": [[1, 3.0], [2, 2.0], [3, 1.0]], "device": "cpu", "extra": 7}
    stopped = distill_meta("x", ds, ipc=1, seed=0, params={}, distill_s=0.0, done=0, losses=None, device="cpu",
                           stopped=True)
    assert stopped["stopped"] is True and stopped["final_loss"] is None and stopped["loss_curve"] == []
