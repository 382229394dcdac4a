"""The whole-step CUDA graph loop (dpcore/graphed.py), run eagerly on the CPU: it must compute exactly what
train() computes (same data order, augmentation draws, lr schedule, masks), since the GPU replays this step."""

import pytest
import torch

from dpcore.augment import DSA
from dpcore.graphed import can_graph, order_tables, train_graphed
from dpcore.masks import full_mask, magnitude_prune, prunable
from dpcore.models import build_model
from dpcore.training import FastPath, Schedule, train


def data(n=40, classes=4, shape=(3, 8, 8)):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.arange(n) % classes


def model_and_mask():
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=4, in_shape=(3, 8, 8), width=8, depth=2)
    return model, magnitude_prune(model, full_mask(model), total_round=2, fraction=0.3, scope="global")


@pytest.mark.parametrize("batch,start_step", [(40, 0), (16, 0), (16, 5)])
def test_the_graphable_step_run_eagerly_equals_train_bit_for_bit(batch, start_step):
    """Full batches, a short last batch (two tables), and a start at a rewind step: same weights, same losses."""
    x, y = data()
    schedule = Schedule("sgd", 0.05, epochs=6, batch_size=batch, momentum=0.9, weight_decay=5e-4, milestones=(3,))
    outs, states, losses = [], [], []
    for loop in ("train", "graphed"):
        model, mask = model_and_mask()
        seen = []
        kw = dict(schedule=schedule, seed=7, mask=mask, augment=DSA(batchwise=False).sampler(11),
                  start_step=start_step, on_epoch=lambda e, n, loss: seen.append(float(loss)))
        if loop == "train":
            out = train(model, x, y, **kw)
        else:
            out = train_graphed(model, x, y, prepare=lambda t: t, should_stop=None, fast=FastPath(), compiled=False,
                                graphs=False, **kw)
        outs.append(out)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        losses.append(seen)
    assert outs[0].steps == outs[1].steps and outs[1].graphed is None
    assert losses[0] == losses[1] and len(losses[0]) == 6 - start_step // ((40 + batch - 1) // batch)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    model, mask = model_and_mask()
    train_graphed(model, x, y, schedule=schedule, seed=7, prepare=lambda t: t, mask=mask, augment=None, start_step=0,
                  on_epoch=None, should_stop=None, fast=FastPath(), compiled=False, graphs=False)
    for name, p in prunable(model).items():
        assert torch.count_nonzero(p[~mask[name]]) == 0, name


def test_order_tables_hold_each_epochs_permutation_once_split_by_batch_size():
    steps, tables = order_tables(10, 4, epochs=2, start_step=0, seed=3, device=torch.device("cpu"))
    assert [s[1] for s in steps] == [4, 4, 2, 4, 4, 2] and [s[2] for s in steps] == [0, 0, 1, 0, 0, 1]
    assert tables[4].shape == (4, 4) and tables[2].shape == (2, 2)
    epoch0 = torch.cat([tables[4][0], tables[4][1], tables[2][0]])
    assert sorted(epoch0.tolist()) == list(range(10))


def test_graphs_are_asked_for_only_where_they_can_run():
    sched = Schedule("sgd", 0.1, 2, 8)
    graphs = FastPath(cuda_graphs=True)
    assert not can_graph(graphs, torch.device("cpu"), sched, None)
    cuda = torch.device("cuda")
    assert can_graph(graphs, cuda, sched, None)
    assert not can_graph(FastPath(), cuda, sched, None)
    assert not can_graph(FastPath(precision="fp16", cuda_graphs=True), cuda, sched, None)
    assert not can_graph(graphs, cuda, sched, capture_step=3)
    assert not can_graph(graphs, cuda, Schedule("sgd", 0.1, 2, 8, warmup_steps=4), None)
