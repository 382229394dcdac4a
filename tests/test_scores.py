"""Pruning-at-initialisation scores: SNIP, GraSP and SynFlow against hand computations and their
defining properties (SynFlow's conservation and its avoidance of layer collapse)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpcore.errors import ConfigError
from dpcore.masks import full_mask, prunable, prune, remaining_target
from dpcore.pruning_at_init import (grasp_keep_scores, grasp_raw_scores, grasp_scores, one_shot_prune, real_batches,
                                    snip_scores, synflow_prune, synflow_scores)

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(dims, seed=0, bias=True, act=nn.ReLU, dtype=torch.float32):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b, bias=bias), act()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def batch(n, d, classes, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype) * scale), torch.randint(0, classes, (n,), generator=g)


def bn_convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ SNIP
def test_snip_is_abs_grad_times_weight_summed_over_batches():
    model = mlp((5, 4, 3))
    batches = [batch(8, 5, 3, seed=s) for s in (1, 2)]
    model.zero_grad()
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()  # .grad accumulates: the sum over batches
    expected = {n: (p.grad * p).abs() for n, p in prunable(model).items()}
    model.zero_grad(set_to_none=True)
    before = state(model)
    got = snip_scores(model, [b[0] for b in batches], [b[1] for b in batches])
    assert got.keys() == expected.keys()
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-6, atol=1e-9)
        assert (got[n] >= 0).all()
    assert same_state(before, state(model))
    assert all(p.grad is None for p in model.parameters())  # nothing written to .grad


def test_snip_with_mask_scores_masked_weights_zero_and_grad_at_masked_net():
    model = mlp((5, 4, 3))
    x, y = batch(8, 5, 3)
    mask = full_mask(model)
    mask["1.weight"][0, :3] = False
    masked = mlp((5, 4, 3))
    with torch.no_grad():
        masked[1].weight.mul_(mask["1.weight"])
    F.cross_entropy(masked(x), y).backward()
    got = snip_scores(model, x, y, mask=mask)
    assert (got["1.weight"][0, :3] == 0).all()
    torch.testing.assert_close(got["3.weight"], (masked[3].weight.grad * masked[3].weight).abs())


def test_snip_leaves_batchnorm_statistics_and_mode_alone():
    model = bn_convnet()
    model.eval()
    before = state(model)
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    snip_scores(model, x, y)
    grasp_scores(model, x, y)
    assert same_state(before, state(model))
    assert not model.training


# ------------------------------------------------------------------------------------------ GraSP
def test_grasp_matches_finite_difference_hessian_gradient_product():
    model = mlp((4, 5, 3), act=nn.Tanh, dtype=torch.float64)
    xs = [batch(6, 4, 3, seed=s, dtype=torch.float64) for s in (3, 4)]
    t = 2.0
    names = list(prunable(model))

    def grad_at(weights: dict) -> list[torch.Tensor]:
        with torch.no_grad():
            for n, p in prunable(model).items():
                p.copy_(weights[n])
        total = [torch.zeros_like(weights[n]) for n in names]
        for xb, yb in xs:
            g = torch.autograd.grad(F.cross_entropy(model(xb) / t, yb), [prunable(model)[n] for n in names])
            total = [a + b for a, b in zip(total, g)]
        return total

    w0 = {n: p.detach().clone() for n, p in prunable(model).items()}
    g0 = grad_at(w0)
    eps = 1e-5
    plus = grad_at({n: w0[n] + eps * g for n, g in zip(names, g0)})
    minus = grad_at({n: w0[n] - eps * g for n, g in zip(names, g0)})
    grad_at(w0)  # back to the start
    fd = {n: -w0[n] * (p - m) / (2 * eps) for n, p, m in zip(names, plus, minus)}

    raw = grasp_raw_scores(model, [b[0] for b in xs], [b[1] for b in xs], temperature=t)
    for n in names:
        torch.testing.assert_close(raw[n], fd[n], rtol=1e-5, atol=1e-10)
    assert any(float(raw[n].abs().max()) > 1e-6 for n in names)  # not trivially zero

    keep = grasp_scores(model, [b[0] for b in xs], [b[1] for b in xs], temperature=t)
    s_flat = torch.cat([raw[n].flatten() for n in names])
    k_flat = torch.cat([keep[n].flatten() for n in names])
    assert (k_flat >= 0).all()
    order = torch.argsort(s_flat)  # ascending S ...
    assert (k_flat[order].diff() <= 0).all()  # ... is descending keep-score, across layers
    # masks.prune on the keep-score keeps exactly the lowest-S weights (GraSP removes the largest S)
    mask = prune(keep, full_mask(model), total_round=1, fraction=0.5, scope="global")
    kept = torch.cat([mask[n].flatten() for n in names])
    n_keep = int(kept.sum())
    assert set(kept.nonzero().flatten().tolist()) == set(order[:n_keep].tolist())


def test_grasp_keep_scores_is_a_global_shift():
    raw = {"a": torch.tensor([-1.0, 3.0]), "b": torch.tensor([0.5, 2.0, -4.0])}
    keep = grasp_keep_scores(raw)
    torch.testing.assert_close(keep["a"], torch.tensor([4.0, 0.0], dtype=torch.float64) / 7.0)
    torch.testing.assert_close(keep["b"], torch.tensor([2.5, 1.0, 7.0], dtype=torch.float64) / 7.0)


# ------------------------------------------------------------------------------------------ SynFlow
def test_synflow_conserves_flow_per_neuron_and_per_layer():
    model = mlp((6, 5, 4, 3), bias=False, seed=1)
    s = synflow_scores(model, (6,))
    s1, s2, s3 = s["1.weight"], s["3.weight"], s["5.weight"]
    assert all((v >= 0).all() for v in s.values())
    # a hidden neuron's incoming synaptic flow equals its outgoing flow
    torch.testing.assert_close(s1.sum(1), s2.sum(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(s2.sum(1), s3.sum(0), rtol=1e-10, atol=0)
    # every layer carries all of R (a bias-free ReLU net is 1-homogeneous in each layer)
    with torch.no_grad():
        net = mlp((6, 5, 4, 3), bias=False, seed=1).double()
        for p in net.parameters():
            p.abs_()
        r = net(torch.ones(1, 6, dtype=torch.float64)).sum()
    for v in s.values():
        torch.testing.assert_close(v.sum(), r, rtol=1e-10, atol=0)


def test_synflow_leaves_the_model_exactly_as_it_was_and_has_no_batchnorm_effect():
    model = bn_convnet()
    with torch.no_grad():  # non-trivial running statistics and affine: they must not matter
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
    model.train()
    before = state(model)
    signs = {n: p.sign() for n, p in model.named_parameters()}
    assert any((v < 0).any() for v in signs.values())
    scores = synflow_scores(model, (1, 5, 5))
    mask = synflow_prune(model, None, total_round=1, fraction=0.5, scope="global", input_shape=(1, 5, 5),
                         iterations=5)
    assert same_state(before, state(model))
    assert model.training
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    # the same weights without the BatchNorm layer score the same
    plain = nn.Sequential(model[0], nn.Identity(), nn.ReLU(), nn.Flatten(), model[4])
    for n, v in synflow_scores(plain, (1, 5, 5)).items():
        torch.testing.assert_close(scores[n], v, rtol=1e-12, atol=0)
    assert int(sum(int(m.sum()) for m in mask.values())) == remaining_target(
        sum(m.numel() for m in mask.values()), 0.5, 1)


@pytest.mark.parametrize("scope,output_fraction", [("global", -1.0), ("layer", -1.0), ("global", 0.3)])
def test_synflow_prune_reaches_the_round_target_exactly(scope, output_fraction):
    model = mlp((12, 10, 8, 3))
    mask = full_mask(model)
    out = synflow_prune(model, mask, total_round=3, fraction=0.5, scope=scope, input_shape=(12,), iterations=7,
                        output_name="5.weight", output_fraction=output_fraction)
    expected = prune({n: torch.ones_like(m, dtype=torch.float32) for n, m in mask.items()}, mask, total_round=3,
                     fraction=0.5, scope=scope, output_name="5.weight", output_fraction=output_fraction)
    for n in mask:  # same counts per group as any pruning to round 3's target
        if scope == "layer" or (output_fraction >= 0 and n == "5.weight"):
            assert int(out[n].sum()) == int(expected[n].sum()), n
    assert sum(int(m.sum()) for m in out.values()) == sum(int(m.sum()) for m in expected.values())
    assert all((~out[n] | mask[n]).all() for n in mask)


def test_synflow_one_iteration_is_single_shot_scoring():
    model = mlp((12, 10, 3))
    mask = full_mask(model)
    kw = dict(total_round=2, fraction=0.6, scope="global")
    one = synflow_prune(model, mask, input_shape=(12,), iterations=1, **kw)
    direct = prune(synflow_scores(model, (12,)), mask, **kw)
    assert all(torch.equal(one[n], direct[n]) for n in mask)


def test_synflow_avoids_the_layer_collapse_of_magnitude_and_snip():
    # A wide first layer (8192 -> 4) feeding small ones: at 99% sparsity only ~360 weights survive.
    # Magnitude: PyTorch's init scales weights by 1/sqrt(fan_in), so the wide layer (and the last) has the
    # smallest weights and is emptied. SNIP: each layer carries about the same total |g w|, spread over
    # 32x more weights in the wide layer; with small inputs (std 0.25) its scores fall below the kept
    # threshold too. SynFlow re-scores 100 times and keeps a path through every layer.
    dims = (8192, 4, 256, 10)
    model = mlp(dims, seed=3)
    x, y = batch(64, dims[0], 10, seed=3, scale=0.25)
    mask = full_mask(model)
    kw = dict(total_round=1, fraction=0.99, scope="global")
    mag = prune(dict(prunable(model)), mask, **kw)
    snip = prune(snip_scores(model, x, y), mask, **kw)
    syn = synflow_prune(model, mask, input_shape=(dims[0],), iterations=100, **kw)
    alive = lambda m: {n: int(v.sum()) for n, v in m.items()}  # noqa: E731
    total = sum(v.numel() for v in mask.values())
    for m in (mag, snip, syn):
        assert sum(alive(m).values()) == remaining_target(total, 0.99, 1)
    assert min(alive(mag).values()) == 0, alive(mag)
    assert min(alive(snip).values()) == 0, alive(snip)
    assert min(alive(syn).values()) > 0, alive(syn)


# ------------------------------------------------------------------------------------------ entry point
def test_one_shot_prune_dispatches_and_reaches_the_target():
    model = mlp((8, 6, 3))
    batches = [batch(10, 8, 3, seed=s) for s in (0, 1)]
    mask = full_mask(model)
    kw = dict(total_round=2, fraction=0.5, scope="global")
    snip = one_shot_prune("snip", model, mask, batches, **kw)
    direct = prune(snip_scores(model, [b[0] for b in batches], [b[1] for b in batches]), mask,
                   output_name="3.weight", **kw)
    assert all(torch.equal(snip[n], direct[n]) for n in mask)
    total = sum(m.numel() for m in mask.values())
    for method in ("grasp", "synflow"):
        out = one_shot_prune(method, model, None, batches, iterations=10, **kw)
        assert sum(int(m.sum()) for m in out.values()) == remaining_target(total, 0.5, 2)
    # the output layer at its own rate, as IMP's output_fraction
    out = one_shot_prune("snip", model, mask, batches, output_fraction=0.0, **kw)
    assert bool(out["3.weight"].all())


def test_real_batches_are_fixed_prepared_batches(tiny_npz):
    from dpcore.data import load_dataset

    ds = load_dataset("npz", path=tiny_npz)
    a = real_batches(ds, batches=3, batch_size=16, seed=5)
    b = real_batches(ds, batches=3, batch_size=16, seed=5)
    assert len(a) == 3 and all(x.shape == (16, *ds.shape) and x.dtype == torch.float32 for x, _ in a)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    model = mlp((64, 8, ds.num_classes))
    mask = one_shot_prune("snip", model, None, a, total_round=1, fraction=0.5, scope="global")
    assert sum(int(m.sum()) for m in mask.values()) == remaining_target(sum(m.numel() for m in mask.values()), 0.5, 1)


# ------------------------------------------------------------------------------------------ bad settings
def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize("method", ["snip", "grasp"])
@pytest.mark.parametrize("batches", [None, []])
def test_data_scores_without_a_batch_are_config_errors(method, batches):
    model = mlp((4, 3, 2))
    with pytest.raises(ConfigError) as err:
        one_shot_prune(method, model, None, batches, total_round=1, fraction=0.5, scope="global")
    assert method in one_line(err) and "batch" in str(err.value)
    with pytest.raises(ConfigError):
        (snip_scores if method == "snip" else grasp_scores)(model, [], [])


def test_unknown_method_and_bad_iterations_are_config_errors():
    model = mlp((4, 3, 2))
    kw = dict(total_round=1, fraction=0.5, scope="global")
    with pytest.raises(ConfigError) as err:
        one_shot_prune("magnitude", model, None, [batch(4, 4, 2)], **kw)
    assert "magnitude" in one_line(err) and "synflow" in str(err.value)
    for bad in (0, -3, 1.5):
        with pytest.raises(ConfigError) as err:
            one_shot_prune("synflow", model, None, None, input_shape=(4,), iterations=bad, **kw)
        assert "iterations" in one_line(err)
        with pytest.raises(ConfigError):
            synflow_prune(model, None, input_shape=(4,), iterations=bad, **kw)
    with pytest.raises(ConfigError) as err:
        one_shot_prune("synflow", model, None, None, **kw)
    assert "input_shape" in one_line(err)
    with pytest.raises(ConfigError) as err:
        grasp_scores(model, *batch(4, 4, 2), temperature=0.0)
    assert "temperature" in one_line(err)
