"""The GPU path, on a real CUDA device (``pytest -m cuda``; skipped where there is none, as in CI).

Training on the device, masks staying zero, resume to identical masks, one step of every distiller, and
the dashboard's device slots seeing the GPUs. ``benchmarks/gpu_check.sh`` runs these on a lent GPU.
"""

import shutil
import threading

import pytest
import torch

from dpcore.events import RoundDone
from dpcore.masks import full_mask, magnitude_prune, prunable
from dpcore.models import build_model
from dpcore.profiles import load_profile
from dpcore.store import RunDir
from dpcore.training import Schedule, evaluate, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")


def blobs(n: int = 512, classes: int = 4, shape=(3, 16, 16)):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    centres = torch.randn(classes, *shape, device=DEVICE, generator=gen)
    y = torch.arange(n, device=DEVICE) % classes
    x = centres[y] + 0.5 * torch.randn(n, *shape, device=DEVICE, generator=gen)
    return x, y


def test_training_on_cuda_learns_and_pruned_weights_stay_zero():
    x, y = blobs()
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=4, in_shape=(3, 16, 16), width=16).to(DEVICE)
    mask = magnitude_prune(model, full_mask(model), total_round=3, fraction=0.2, scope="global")
    train(model, x, y, schedule=Schedule("adam", 1e-3, 3, 64), seed=0, mask=mask)
    acc, _ = evaluate(model, x, y)
    assert acc > 0.9
    for name, p in prunable(model).items():
        assert p.device.type == "cuda"
        assert torch.count_nonzero(p[mask[name] == 0]) == 0, name


def test_a_stopped_cuda_run_resumes_to_identical_masks(tmp_path, tiny_profile):
    from dpcore.experiment import run_experiment

    cfg, _ = load_profile(str(tiny_profile), ["run.device='cuda'", "prune.methods=['imp', 'distilled']"])
    full = run_experiment(cfg, tmp_path / "full")
    stop = threading.Event()

    def sink(ev):
        if isinstance(ev, RoundDone) and ev.row["round"] == 2:
            stop.set()

    # Distilling on CUDA is not bit-reproducible (index_add_ and grid_sample's backward use atomics), so the
    # interrupted run gets the same synthetic set and dense baseline: what is compared is the rounds' training,
    # pruning and resume, which are (fixed data order and augmentation draws on the device, no atomics).
    shutil.copytree(tmp_path / "full" / "cache", tmp_path / "part" / "cache")
    run_experiment(cfg, tmp_path / "part", sink=sink, should_stop=stop.is_set)
    resumed = run_experiment(cfg, tmp_path / "part")
    assert [r.status for r in resumed] == ["done", "done"] and all(r.device.startswith("cuda") for r in resumed)
    for a, b in zip(full, resumed):
        for r in range(1, len(a.rounds) + 1):
            ma, mb = RunDir(tmp_path / "full", a.run_id).load_mask(r), RunDir(tmp_path / "part", b.run_id).load_mask(r)
            assert all(torch.equal(ma[n], mb[n]) for n in ma)


@pytest.mark.parametrize("method,params", [("dm", {"iterations": 3, "batch_real": 16}),
                                           ("gm", {"iterations": 2, "batch_real": 16, "outer_loop": 2, "inner_loop": 2}),
                                           ("mtt", {"iterations": 3, "syn_steps": 3, "expert_epochs": 1,
                                                    "max_start_epoch": 2, "num_experts": 2,
                                                    "expert_train_epochs": 3, "expert_batch": 32}),
                                           ("random-subset", {})])
def test_every_distiller_runs_on_cuda(tmp_path, tiny_npz, method, params):
    from dpcore.data import load_dataset
    from dpcore.synthetic import get_or_distill

    ds = load_dataset("npz", path=tiny_npz).to(DEVICE)

    def factory():
        return build_model("lenet-300-100", num_classes=ds.num_classes, in_shape=ds.shape).to(DEVICE)

    syn, cached = get_or_distill(tmp_path / "cache", ds, method=method, ipc=2, model={"name": "lenet-300-100"},
                                 model_factory=factory, seed=0, device=DEVICE, params=params)
    assert not cached and len(syn) == 2 * ds.num_classes
    assert bool(torch.isfinite(syn.images).all())


def test_the_dashboards_device_slots_see_every_gpu(tmp_path):
    from dptui.launches.launcher import Launcher

    launcher = Launcher(tmp_path)
    assert launcher.device_slots() == [f"gpu{i}" for i in range(torch.cuda.device_count())]
    assert launcher.device_type(launcher.device_slots()) == "cuda"


@pytest.mark.parametrize("compile", ["off", "on"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_fast_paths_on_cuda_learn_keep_masks_exact_and_never_fall_back(precision, channels_last, compile):
    """bf16 / fp16 (with its gradient scaler) x channels-last x compile: the net learns, pruned weights stay exactly
    zero, a compile asked for really ran compiled, and no step reads a value back to the host."""
    from dpcore.training import FastPath

    x, y = blobs()
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=4, in_shape=(3, 16, 16), width=16).to(DEVICE)
    mask = magnitude_prune(model, full_mask(model), total_round=3, fraction=0.2, scope="global")
    fast = FastPath(precision=precision, channels_last=channels_last, compile=compile)
    train(model, x, y, schedule=Schedule("adam", 1e-3, 1, 64), seed=0, mask=mask, fast=fast)  # warm-up, compiles
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the steps raises from here on
    try:
        out = train(model, x, y, schedule=Schedule("adam", 1e-3, 3, 64), seed=1, mask=mask, fast=fast)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.fallback is None and out.compiled == (compile == "on")
    acc, _ = evaluate(model, x, y, fast=fast)
    assert acc > 0.9
    for name, p in prunable(model).items():
        assert torch.count_nonzero(p[mask[name] == 0]) == 0, name
        if channels_last and p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last), name


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_synthetic_inner_loop_replays_whole_step_graphs_without_host_syncs(precision, channels_last):
    """The distilled inner loop on CUDA: every step after each key's warm-up and capture is one graph replay
    (batch, DSA, forward, backward, SGD, mask), nothing reads back to the host, masks stay exact, and it learns."""
    from dpcore.config import SyntheticConfig
    from dpcore.synthetic import SyntheticSet
    from dpcore.synthetic.evaluate import train_on_synthetic
    from dpcore.training import FastPath

    x, y = blobs(n=40, classes=4)
    syn = SyntheticSet(x, y, lr=None)
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=4, in_shape=(3, 16, 16), width=16).to(DEVICE)
    mask = magnitude_prune(model, full_mask(model), total_round=2, fraction=0.2, scope="global")
    sc = SyntheticConfig(epochs=60, batch_size=256, dsa=True, lr=0.01, use_learned_lr=False)
    fast = FastPath(precision=precision, channels_last=channels_last)
    first = train_on_synthetic(model, syn, sc, seed=0, mask=mask, fast=fast)  # warms up and records each DSA op
    assert first.graphed and first.graph_fallback is None and first.compile_s > 0
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside a step raises from here on
    try:
        out = train_on_synthetic(model, syn, sc, seed=1, mask=mask, fast=fast)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.graphed and out.graph_fallback is None and out.steps == 60
    acc, _ = evaluate(model, x, y, fast=fast)
    assert acc > 0.9
    for name, p in prunable(model).items():
        assert torch.count_nonzero(p[mask[name] == 0]) == 0, name


def test_graph_replays_compute_what_the_same_steps_compute_eagerly():
    """Without augmentation (no random draws) a graphed training and the same steps run eagerly follow the same
    losses, up to kernel choice: the recording reads each step's batch, lr and counter from the device."""
    from dpcore.graphed import train_graphed
    from dpcore.training import FastPath

    x, y = blobs(n=100, classes=4)
    schedule = Schedule("sgd", 0.01, epochs=40, batch_size=32, momentum=0.9, weight_decay=5e-4, milestones=(20,))
    losses = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = build_model("convnet", num_classes=4, in_shape=(3, 16, 16), width=16).to(DEVICE)
        seen = []
        out = train_graphed(model, x, y, schedule=schedule, seed=3, prepare=lambda t: t, mask=None, augment=None,
                            start_step=0, on_epoch=lambda e, n, loss: seen.append(loss), should_stop=None,
                            fast=FastPath(cuda_graphs=True), compiled=False, graphs=graphs)
        assert out.steps == 40 * 4 and out.graph_fallback is None
        losses.append(torch.stack(seen).float().cpu())
    assert torch.allclose(losses[0], losses[1], rtol=2e-2, atol=2e-3)
