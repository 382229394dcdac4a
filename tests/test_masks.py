"""Pruning invariants: exact sparsity schedule, zeros stay zero, rewinds restore everything."""

import pytest
import torch

from dpcore.masks import (MaskApplier, full_mask, layer_sparsity, magnitude_prune, prunable, random_prune,
                          sparsity)
from dpcore.models import build_model
from dpcore.training import Schedule, restore, snapshot, train


def lenet():
    torch.manual_seed(0)
    return build_model("lenet-300-100", num_classes=10, in_shape=(1, 28, 28))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_after_n_rounds_follows_closed_form(scope):
    model = lenet()
    mask = full_mask(model)
    total = sum(m.numel() for m in mask.values())
    for n in range(1, 9):
        mask = magnitude_prune(model, mask, total_round=n, fraction=0.2, scope=scope)
        remaining = sum(int(m.sum()) for m in mask.values())
        assert abs(remaining - 0.8 ** n * total) <= len(mask)  # within one weight per layer
        if scope == "layer":
            for name, m in mask.items():
                assert abs(int(m.sum()) - 0.8 ** n * m.numel()) <= 1, name
    assert sparsity(mask) == pytest.approx(1 - 0.8 ** 8, abs=1e-5)


def test_global_magnitude_prunes_the_smallest_alive_weights():
    model = lenet()
    mask = magnitude_prune(model, full_mask(model), total_round=1, fraction=0.2, scope="global")
    weights = prunable(model)
    kept = torch.cat([weights[n][m].abs().flatten() for n, m in mask.items()])
    dropped = torch.cat([weights[n][~m].abs().flatten() for n, m in mask.items()])
    assert dropped.max() <= kept.min()
    # Global ranking: layers end up with different sparsities.
    assert len({round(s, 3) for s in layer_sparsity(mask).values()}) > 1


def test_output_layer_keeps_its_own_rate():
    model = lenet()
    mask = full_mask(model)
    for n in (1, 2, 3):
        mask = magnitude_prune(model, mask, total_round=n, fraction=0.2, scope="global", output_fraction=0.1)
    out = layer_sparsity(mask)["classifier.weight"] if "classifier.weight" in mask else list(layer_sparsity(mask).values())[-1]
    assert out == pytest.approx(1 - 0.9 ** 3, abs=1 / 1000)


def test_random_masks_are_nested_and_seeded():
    model = lenet()
    masks = []
    mask = full_mask(model)
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 3):
        new = random_prune(mask, gen, total_round=n, fraction=0.2, scope="global")
        assert all(bool((new[k] <= mask[k]).all()) for k in mask)  # nested: survivors only shrink
        mask = new
        masks.append(mask)
    again = random_prune(full_mask(model), torch.Generator().manual_seed(1), total_round=1, fraction=0.2, scope="global")
    assert all(torch.equal(again[k], masks[0][k]) for k in again)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_through_training(optimizer):
    model = lenet()
    mask = magnitude_prune(model, full_mask(model), total_round=3, fraction=0.2, scope="global")
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    sched = Schedule(optimizer=optimizer, lr=0.05, epochs=2, batch_size=16, weight_decay=1e-3, momentum=0.9)
    before = {n: p.detach().clone() for n, p in prunable(model).items()}
    train(model, x, y, schedule=sched, seed=0, prepare=lambda t: t.float() / 255, mask=mask)
    for name, p in prunable(model).items():
        assert torch.count_nonzero(p[~mask[name]]) == 0, name
        assert not torch.equal(p[mask[name]], before[name][mask[name]]), "surviving weights must train"


def test_mask_applier_zeroes_in_place_without_hooks():
    model = lenet()
    mask = magnitude_prune(model, full_mask(model), total_round=1, fraction=0.5, scope="global")
    MaskApplier(model, mask)()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(torch.count_nonzero(p[~mask[n]]) == 0 for n, p in prunable(model).items())


def test_rewind_restores_every_parameter_and_buffer():
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=4, in_shape=(3, 16, 16), width=8, depth=2, norm="batch")
    saved = snapshot(model)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 4, (32,))
    train(model, x, y, schedule=Schedule("sgd", 0.1, 1, 8), seed=0, prepare=lambda t: t.float() / 255)
    state = model.state_dict()
    changed = [k for k in saved if not torch.equal(saved[k], state[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("bias") for k in changed)
    restore(model, saved)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
