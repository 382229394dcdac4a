"""Sharpness and landscape analyses: the Hessian's top eigenvalue against an exact Hessian, the 2-D
filter-normalised slice, and the loss along a path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dpcore.analysis.hessian import top_hessian_eigenvalue
from dpcore.analysis.landscape import filter_normalised_direction, grid_points, path_losses, slice_2d
from dpcore.data import load_dataset
from dpcore.errors import ConfigError
from dpcore.masks import full_mask, magnitude_prune, prunable
from dpcore.models import build_model
from dpcore.training import evaluate, restore, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()


def fixed_batches(seed=0, n=(7, 5)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(k, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (k,), generator=g)) for k in n]


def exact_hessian(model, batches, names):
    """The Hessian of the mean cross-entropy over all the batches' samples w.r.t. the flat ``names``."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    flat = torch.cat([params[n].detach().flatten() for n in names])
    return torch.autograd.functional.hessian(loss, flat)


def test_top_eigenvalue_matches_the_exact_hessian():
    model = linear_model()
    batches = fixed_batches()
    names = [n for n, _ in model.named_parameters()]  # weight and bias: all parameters
    h = exact_hessian(model, batches, names)
    true_top = float(torch.linalg.eigvalsh(h).max())
    before = snapshot(model)
    model.train()
    out = top_hessian_eigenvalue(model, batches, iterations=500, tol=1e-10, seed=0)
    assert out["converged"] and out["iterations"] < 500
    assert out["eigenvalue"] == pytest.approx(true_top, rel=1e-6)
    assert out["history"][-1] == out["eigenvalue"] and len(out["history"]) == out["iterations"]
    assert out["parameters"] == h.shape[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training  # mode restored


def test_top_eigenvalue_with_a_mask_is_over_the_unmasked_weights_only():
    model = linear_model(seed=1)
    batches = fixed_batches(seed=1)
    mask = full_mask(model)
    mask["1.weight"][0, :2] = False
    mask["1.weight"][2, 3] = False
    with torch.no_grad():  # a pruned net: its masked weights are zero
        model[1].weight.mul_(mask["1.weight"])
    h = exact_hessian(model, batches, ["1.weight"])
    keep = mask["1.weight"].flatten().nonzero().flatten()
    true_top = float(torch.linalg.eigvalsh(h[keep][:, keep]).max())
    full_top = float(torch.linalg.eigvalsh(h).max())
    assert abs(true_top - full_top) > 1e-4 * full_top  # the restriction matters here
    out = top_hessian_eigenvalue(model, batches, iterations=500, tol=1e-10, mask=mask)
    assert out["converged"]
    assert out["eigenvalue"] == pytest.approx(true_top, rel=1e-6)
    assert out["parameters"] == keep.numel()


def test_few_iterations_report_not_converged_and_bad_settings_are_errors():
    model = linear_model()
    out = top_hessian_eigenvalue(model, fixed_batches(), iterations=1)
    assert out["iterations"] == 1 and not out["converged"]
    for kw in ({"iterations": 0}, {"tol": 0.0}):
        with pytest.raises(ConfigError) as err:
            top_hessian_eigenvalue(model, fixed_batches(), **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        top_hessian_eigenvalue(model, [])


# ------------------------------------------------------------------------------------------ landscape
@pytest.fixture
def tiny(tiny_npz):
    ds = load_dataset("npz", path=tiny_npz)
    torch.manual_seed(0)
    model = build_model("lenet-300-100", num_classes=ds.num_classes, in_shape=ds.shape)
    return ds, model


def test_slice_centre_is_the_model_itself_and_the_model_is_restored(tiny):
    ds, model = tiny
    centre = snapshot(model)
    acc0, loss0 = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare)
    with torch.no_grad():  # the model holds something else than the centre when the slice is asked for
        for p in model.parameters():
            p.mul_(0.5)
    held = snapshot(model)
    out = slice_2d(model, centre, ds.x_test, ds.y_test, grid=5, span=0.5, seed=3, prepare=ds.prepare)
    assert out["alphas"][2] == 0.0 and out["betas"][2] == 0.0
    assert len(out["loss"]) == 5 and all(len(row) == 5 for row in out["loss"])
    assert out["loss"][2][2] == loss0 and out["acc"][2][2] == acc0
    assert len({round(v, 6) for row in out["loss"] for v in row}) > 1  # the plane is not flat
    assert all(torch.equal(v, held[k]) for k, v in model.state_dict().items())


def test_slice_directions_are_filter_normalised_and_zero_on_masked_weights(tiny):
    ds, model = tiny
    mask = magnitude_prune(model, full_mask(model), total_round=2, fraction=0.5, scope="global")
    with torch.no_grad():
        for n, p in prunable(model).items():
            p.mul_(mask[n])
    centre = snapshot(model)
    weights = {n: centre[n] for n in prunable(model)}
    gen = torch.Generator().manual_seed(7)
    d1 = filter_normalised_direction(weights, gen, mask)
    d2 = filter_normalised_direction(weights, gen, mask)
    for n, w in weights.items():
        assert (d1[n][~mask[n]] == 0).all() and (d2[n][~mask[n]] == 0).all()
        torch.testing.assert_close(d1[n].norm(dim=1), w.norm(dim=1))  # per output row of a Linear
    assert not torch.equal(d1["features.1.weight"], d2["features.1.weight"])
    # the slice walks exactly along these directions (biases untouched) and stays in the mask
    out = slice_2d(model, centre, ds.x_test, ds.y_test, grid=3, span=1.0, seed=7, mask=mask, prepare=ds.prepare)
    corner = {k: v.clone() for k, v in centre.items()}
    for n in weights:
        corner[n] = centre[n] + out["alphas"][0] * d1[n] + out["betas"][2] * d2[n]
        assert (corner[n][~mask[n]] == 0).all()
    restore(model, corner)
    acc, loss = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare)
    assert out["loss"][0][2] == pytest.approx(loss, rel=1e-6) and out["acc"][0][2] == acc


def test_conv_directions_are_per_output_channel_and_zero_for_bias_and_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    weights = {n: p.detach() for n, p in prunable(net).items()}
    d = filter_normalised_direction(weights, torch.Generator().manual_seed(0))
    assert set(d) == {"0.weight", "4.weight"}  # only Conv/Linear weights move
    torch.testing.assert_close(d["0.weight"].flatten(1).norm(dim=1), weights["0.weight"].flatten(1).norm(dim=1))
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1])
    state = snapshot(net)
    out = slice_2d(net, state, x, y, grid=3, span=0.1)
    acc, loss = evaluate(net, x, y)
    assert out["loss"][1][1] == loss and out["acc"][1][1] == acc


def test_path_losses_ends_are_the_two_models(tiny):
    ds, model = tiny
    a = snapshot(model)
    torch.manual_seed(1)
    other = build_model("lenet-300-100", num_classes=ds.num_classes, in_shape=ds.shape)
    b = snapshot(other)
    out = path_losses(model, a, b, ds.x_test, ds.y_test, [0.0, 0.5, 1.0], prepare=ds.prepare)
    acc_a, loss_a = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare)
    acc_b, loss_b = evaluate(other, ds.x_test, ds.y_test, prepare=ds.prepare)
    assert out["loss"][0] == loss_a and out["loss"][2] == loss_b
    assert out["acc"][0] == acc_a and out["acc"][2] == acc_b
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items())


def test_grid_points_and_bad_settings():
    assert grid_points(5, 2.0) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    model = linear_model()
    x, y = fixed_batches()[0]
    for kw in ({"grid": 1}, {"span": 0.0}):
        with pytest.raises(ConfigError):
            slice_2d(model, snapshot(model), x, y, **kw)
