"""bnfused.SyncBatchNorm over gloo on CPU, against one process over the concatenated batch.

One spawn of WORLD processes runs every distributed check (spawning is slow);
each check does all its collectives first and compares afterwards, so a failed
comparison never leaves the ranks out of step. A worker that dies or hangs
fails the tests: the parent waits with a deadline and kills what is left.
"""

import copy
import faulthandler
import json
import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import bnfused

WORLD = 3
DEADLINE_S = 150  # whole spawn; every collective is also bounded by the group's 60 s timeout


# ---------------------------------------------------------------- comparisons (record, never raise)


def _compare(errors, name, ours, expected, rtol, atol=0.0):
    ours, expected = ours.detach().double(), expected.detach().double()
    if ours.shape != expected.shape:
        errors.append(f"{name}: shape {tuple(ours.shape)} != {tuple(expected.shape)}")
        return
    if ours.numel() == 0:
        return
    if torch.isnan(ours).any():
        errors.append(f"{name}: NaN")
        return
    err = (ours - expected).abs().max().item()
    allowed = atol + rtol * max(expected.abs().max().item(), 1.0)
    if not err <= allowed:
        errors.append(f"{name}: max error {err:.3g} > {allowed:.3g}")


def _policy(errors, name, ours, theirs, oracle, atol):
    """ours vs the float64 oracle: at most 2x torch's error in the same dtype + atol."""
    ours, theirs, oracle = (t.detach().double() for t in (ours, theirs, oracle))
    if ours.numel() == 0:
        return
    scale = max(1.0, oracle.abs().max().item())
    err = (ours - oracle).abs().max().item()
    allowed = 2 * (theirs - oracle).abs().max().item() + atol * scale
    if not err <= allowed:
        errors.append(f"{name}: error {err:.3g} > allowed {allowed:.3g}")


def _rows(full, sizes, rank):
    start = sum(sizes[:rank])
    return full[start : start + sizes[rank]]


def _all_sum(t):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def _data(seed, shape, dtype=torch.float64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def _affine_init(modules, channels, seed):
    w, b = _data(seed, (channels,)) * 0.5 + 1.0, _data(seed + 1, (channels,))
    for m in modules:
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)


# ---------------------------------------------------------------- distributed checks


def _steps_against_torch(
    errors,
    tag,
    rank,
    sizes,
    *,
    momentum=0.1,
    channels_last=False,
    activation=None,
    steps=3,
    channels=5,
    spatial=(3, 4),
    seed=0,
):
    """Train-mode steps of SyncBatchNorm(Act) vs torch BN(+add+act) on the whole batch, fp64."""
    acts = {
        None: None,
        "relu": torch.relu,
        "silu": nn.functional.silu,
        "leaky_relu": lambda z: nn.functional.leaky_relu(z, 0.25),
    }
    torch_class = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[len(spatial)]
    torch_bn = torch_class(channels, momentum=momentum, dtype=torch.float64)
    if activation is None:
        ours = bnfused.SyncBatchNorm(channels, momentum=momentum, dtype=torch.float64)
    else:
        ours = bnfused.SyncBatchNormAct(
            channels,
            momentum=momentum,
            dtype=torch.float64,
            activation=activation,
            negative_slope=0.25,
        )
    _affine_init([torch_bn, ours], channels, seed)
    for step in range(steps):
        shape = (sum(sizes), channels) + tuple(spatial)
        x_full = _data(seed + 10 * step + 2, shape, scale=2.0, shift=0.5)
        dy_full = _data(seed + 10 * step + 3, shape)
        res_full = _data(seed + 10 * step + 4, shape) if activation else None
        if channels_last:
            x_full = x_full.contiguous(memory_format=torch.channels_last)
        xt = x_full.clone().requires_grad_()
        rt = res_full.clone().requires_grad_() if activation else None
        yt = torch_bn(xt)
        if activation:
            yt = acts[activation](yt + rt)
        yt.backward(dy_full)

        x = _rows(x_full, sizes, rank).clone().requires_grad_()
        r = _rows(res_full, sizes, rank).clone().requires_grad_() if activation else None
        y = ours(x) if activation is None else ours(x, r)
        y.backward(_rows(dy_full, sizes, rank))
        dw, db = _all_sum(ours.weight.grad), _all_sum(ours.bias.grad)

        where = f"{tag} step {step}"
        _compare(errors, f"{where} y", y, _rows(yt, sizes, rank), 1e-10)
        _compare(errors, f"{where} dx", x.grad, _rows(xt.grad, sizes, rank), 1e-10)
        if activation:
            _compare(errors, f"{where} dresidual", r.grad, _rows(rt.grad, sizes, rank), 1e-10)
        _compare(errors, f"{where} summed dweight", dw, torch_bn.weight.grad, 1e-10)
        _compare(errors, f"{where} summed dbias", db, torch_bn.bias.grad, 1e-10)
        _compare(errors, f"{where} running_mean", ours.running_mean, torch_bn.running_mean, 1e-10)
        _compare(errors, f"{where} running_var", ours.running_var, torch_bn.running_var, 1e-10)
        if ours.num_batches_tracked.item() != torch_bn.num_batches_tracked.item():
            errors.append(f"{where} num_batches_tracked {ours.num_batches_tracked.item()}")
        if channels_last and x.numel() and not y.is_contiguous(memory_format=torch.channels_last):
            errors.append(f"{where}: output lost channels_last")
        for m in (torch_bn, ours):
            m.weight.grad = m.bias.grad = None


def check_splits(rank, world):
    errors = []
    for tag, sizes in (("even", (4, 4, 4)), ("uneven", (1, 6, 2)), ("empty rank", (3, 0, 5))):
        _steps_against_torch(errors, tag, rank, sizes, seed=len(tag))
    _steps_against_torch(errors, "channels_last", rank, (2, 3, 1), channels_last=True, seed=7)
    _steps_against_torch(errors, "momentum=None", rank, (2, 1, 4), momentum=None, steps=4, seed=8)
    _steps_against_torch(errors, "3d", rank, (1, 2, 2), spatial=(2, 3, 2), seed=9)
    _steps_against_torch(errors, "1d one value per rank", rank, (1, 1, 1), spatial=(), seed=10)
    return errors


def check_activation_residual(rank, world):
    errors = []
    for i, act in enumerate(("relu", "leaky_relu", "silu")):
        _steps_against_torch(errors, act, rank, (2, 0, 3), activation=act, steps=2, seed=20 + i)
    _steps_against_torch(
        errors,
        "relu channels_last",
        rank,
        (1, 3, 2),
        activation="relu",
        channels_last=True,
        steps=2,
        seed=30,
    )
    return errors


def check_low_precision(rank, world):
    """float32 with |mean| = 1e4 std, and bfloat16 with float32 parameters: the policy."""
    errors = []
    cases = (
        (torch.float32, 1e4, 1e-5, "float32 |mean|=1e4 std"),
        (torch.bfloat16, 3.0, 1e-2, "bfloat16"),
    )
    for i, (dtype, shift, atol, tag) in enumerate(cases):
        sizes, channels = (3, 1, 4), 6
        shape = (sum(sizes), channels, 5, 3)
        x64, dy64 = _data(40 + i, shape, shift=shift), _data(50 + i, shape)
        x_low, dy_low = x64.to(dtype), dy64.to(dtype)
        x_ref = x_low.double()  # the oracle sees exactly the rounded input

        def torch_run(x, dy, param_dtype):
            bn = nn.BatchNorm2d(channels, dtype=param_dtype)
            _affine_init([bn], channels, 60)
            x = x.clone().requires_grad_()
            y = bn(x)
            y.backward(dy)
            return y, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var

        oracle = torch_run(x_ref, dy_low.double(), torch.float64)
        theirs = torch_run(x_low, dy_low, torch.float32)
        ours_bn = bnfused.SyncBatchNorm(channels)
        _affine_init([ours_bn], channels, 60)
        x = _rows(x_low, sizes, rank).clone().requires_grad_()
        y = ours_bn(x)
        y.backward(_rows(dy_low, sizes, rank))
        dw, db = _all_sum(ours_bn.weight.grad), _all_sum(ours_bn.bias.grad)
        if y.dtype != dtype or x.grad.dtype != dtype:
            errors.append(f"{tag}: dtype {y.dtype}/{x.grad.dtype}, expected {dtype}")
        ours = (y, x.grad, dw, db, ours_bn.running_mean, ours_bn.running_var)
        for name, o, t, r in zip(
            ("y", "dx", "dweight", "dbias", "running_mean", "running_var"), ours, theirs, oracle
        ):
            if name in ("y", "dx"):
                t, r = _rows(t, sizes, rank), _rows(r, sizes, rank)
            _policy(errors, f"{tag} {name}", o, t, r, atol)
    return errors


def check_far_mean(rank, world):
    """float32 data whose mean is 1e5 std away, silu after a residual: normalized with the
    exact global mean, not its float32 rounding (off by up to 4e-3 std there), so every
    output matches float64 on the same data to float32 rounding."""
    errors = []
    sizes, channels = (3, 2, 4), 4
    shape = (sum(sizes), channels, 5, 3)
    shifts = 1e5 * (1 + torch.arange(channels, dtype=torch.float64)).view(1, -1, 1, 1) / 3
    x_full = (_data(70, shape) + shifts).float()
    dy_full, r_full = _data(71, shape).float(), _data(72, shape).float()
    oracle = nn.BatchNorm2d(channels, dtype=torch.float64)
    ours = bnfused.SyncBatchNormAct(channels, activation="silu")
    _affine_init([oracle, ours], channels, 73)
    xt = x_full.double().requires_grad_()
    rt = r_full.double().requires_grad_()
    nn.functional.silu(oracle(xt) + rt).backward(dy_full.double())
    x = _rows(x_full, sizes, rank).clone().requires_grad_()
    r = _rows(r_full, sizes, rank).clone().requires_grad_()
    y = ours(x, r)
    y.backward(_rows(dy_full, sizes, rank))
    y_or = nn.functional.silu(oracle(x_full.double()) + r_full.double())
    for name, o, e in (
        ("y", y, _rows(y_or, sizes, rank)),
        ("dx", x.grad, _rows(xt.grad, sizes, rank)),
        ("dresidual", r.grad, _rows(rt.grad, sizes, rank)),
        ("summed dweight", _all_sum(ours.weight.grad), oracle.weight.grad),
        ("summed dbias", _all_sum(ours.bias.grad), oracle.bias.grad),
    ):
        _compare(errors, f"far mean {name}", o, e, 2e-5)
    return errors


def check_global_count_one_raises(rank, world):
    """One value per channel over the whole group: every rank raises, none hangs."""
    errors = []
    bn = bnfused.SyncBatchNorm(3, dtype=torch.float64)
    x = _data(70, (1 if rank == 0 else 0, 3))
    try:
        bn(x)
        errors.append("no error for a single value per channel over the group")
    except ValueError as e:
        if "Expected more than 1 value per channel when training" not in str(e):
            errors.append(f"unexpected message: {e}")
    return errors


def check_process_group(rank, world):
    """process_group=[0, 1]: rank 2 is left out and its batch does not count."""
    errors = []
    sub = dist.new_group([0, 1])
    if rank < 2:
        sizes, channels = (3, 2), 4
        x_full, dy_full = _data(80, (5, channels, 2, 3)), _data(81, (5, channels, 2, 3))
        ref = nn.BatchNorm2d(channels, dtype=torch.float64)
        ours = bnfused.SyncBatchNorm(channels, process_group=sub, dtype=torch.float64)
        xt = x_full.clone().requires_grad_()
        yt = ref(xt)
        yt.backward(dy_full)
        x = _rows(x_full, sizes, rank).clone().requires_grad_()
        y = ours(x)
        y.backward(_rows(dy_full, sizes, rank))
        _compare(errors, "group y", y, _rows(yt, sizes, rank), 1e-10)
        _compare(errors, "group dx", x.grad, _rows(xt.grad, sizes, rank), 1e-10)
        _compare(errors, "group running_var", ours.running_var, ref.running_var, 1e-10)
    dist.barrier()
    dist.destroy_process_group(sub)
    return errors


def _tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        bnfused.BatchNormAct2d(4, activation="silu"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).double()


def check_ddp_training(rank, world):
    """DDP + convert_sync_batchnorm, uneven batches, SGD: the same model as one process."""
    errors = []
    sizes, steps = (2, 5, 3), 4
    single = _tiny_net(90)
    model = bnfused.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(single))
    kinds = [type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__]
    if kinds != ["SyncBatchNorm", "SyncBatchNormAct"] or model[4].activation != "silu":
        errors.append(f"convert_sync_batchnorm gave {kinds}")
    ddp = nn.parallel.DistributedDataParallel(model)
    opt_single = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    total = sum(sizes)
    for step in range(steps):
        x_full = _data(100 + step, (total, 3, 6, 5), scale=1.5, shift=0.3)
        target = _data(200 + step, (total, 2))
        loss = (single(x_full) - target).square().sum() / total
        opt_single.zero_grad()
        loss.backward()
        opt_single.step()
        # DDP averages grads over ranks, so each rank's share of the loss is scaled by world.
        local = (ddp(_rows(x_full, sizes, rank)) - _rows(target, sizes, rank)).square().sum()
        opt_ddp.zero_grad()
        (local * world / total).backward()
        opt_ddp.step()
    for (name, p), q in zip(single.named_parameters(), model.parameters()):
        _compare(errors, f"ddp param {name}", q, p, 1e-9)
    for (name, b), c in zip(single.named_buffers(), model.buffers()):
        _compare(errors, f"ddp buffer {name}", c, b, 1e-9)
    return errors


def check_running_stats_rule(rank, world):
    """float32, momentum=None and 1: a constant channel's running_var is exactly 0, a
    variance of 1e-9 exact to float32 rounding of the float64 update of the whole batch."""
    errors = []
    sizes = (2, 0, 3)
    for momentum in (None, 1.0, 0.1):
        ours = bnfused.SyncBatchNorm(3, momentum=momentum)
        mean64, var64 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        for step in range(3):
            full = torch.empty(sum(sizes), 3, 4, 5, dtype=torch.float64)
            full[:, 0] = 0.7 + step
            full[:, 1] = _data(40 + step, (sum(sizes), 4, 5)) * 3.1623e-5
            full[:, 2] = _data(50 + step, (sum(sizes), 4, 5)) * 2 + 0.5
            full = full.to(torch.float32)
            ours(_rows(full, sizes, rank))
            xd = full.to(torch.float64).transpose(0, 1).reshape(3, -1)
            factor = 1.0 / (step + 1) if momentum is None else momentum
            mean64 = mean64 + factor * (xd.mean(1) - mean64)
            var64 = var64 + factor * (xd.var(1, unbiased=True) - var64)
            rv = ours.running_var.to(torch.float64)
            where = f"momentum={momentum} step {step}"
            if (rv < 0).any():
                errors.append(f"{where}: negative running_var {rv.tolist()}")
            if momentum in (None, 1.0) and rv[0].item() != 0.0:
                errors.append(f"{where}: constant channel running_var {rv[0].item()!r}")
            if ((rv - var64).abs() > 2e-6 * var64.abs()).any():
                errors.append(f"{where}: running_var {rv.tolist()} vs {var64.tolist()}")
    return errors


CHECKS = {
    "splits": check_splits,
    "running_stats_rule": check_running_stats_rule,
    "activation_residual": check_activation_residual,
    "low_precision": check_low_precision,
    "far_mean": check_far_mean,
    "global_count_one_raises": check_global_count_one_raises,
    "process_group": check_process_group,
    "ddp_training": check_ddp_training,
}


def _worker(rank, world, port, out_dir):
    # A C++ abort skips Python's except clauses: faulthandler still records where it was.
    crash_log = open(os.path.join(out_dir, f"rank{rank}.crash"), "w")
    faulthandler.enable(crash_log)
    try:
        _run_checks(rank, world, port, out_dir)
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _run_checks(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = check(rank, world)
        except Exception:  # recorded; the parent's deadline covers ranks left out of step
            results[name] = [traceback.format_exc()]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    # Tear down together: a rank that leaves while a peer's gloo threads still talk
    # to it can make that peer abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_results():
    # Check failures are recorded in the results, never in exit codes; a worker killed by a
    # signal (a rare gloo abort at process teardown) gets one fresh spawn before failing.
    try:
        return _spawn_checks()
    except pytest.fail.Exception as first:
        import warnings

        warnings.warn(f"sync workers died, spawning once more: {first}", stacklevel=2)
        return _spawn_checks()


def _spawn_checks():
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        port = _free_port()
        procs = [
            ctx.Process(target=_worker, args=(r, WORLD, port, out_dir), daemon=True)
            for r in range(WORLD)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + DEADLINE_S
        try:
            while any(p.is_alive() for p in procs):
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
        codes = [p.exitcode for p in procs]
        if codes != [0] * WORLD:
            errors = ""
            for r in range(WORLD):
                for kind in ("err", "crash"):
                    path = os.path.join(out_dir, f"rank{r}.{kind}")
                    if os.path.exists(path) and os.path.getsize(path):
                        with open(path) as f:
                            errors += f"\n--- rank {r} ({kind}):\n{f.read()}"
            pytest.fail(
                f"sync workers exited with codes {codes} (None/negative: killed after "
                f"{DEADLINE_S} s or by a signal){errors}"
            )
        results = []
        for r in range(WORLD):
            with open(os.path.join(out_dir, f"rank{r}.json")) as f:
                results.append(json.load(f))
    return results


@pytest.mark.parametrize("name", list(CHECKS))
def test_distributed(sync_results, name):
    failures = [f"rank {r}: {msg}" for r, res in enumerate(sync_results) for msg in res[name]]
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- single process, no group


def test_without_process_group_is_single_device_batch_norm():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64) + 1
    ref = nn.BatchNorm2d(3, momentum=None, dtype=torch.float64)
    ours = bnfused.SyncBatchNormAct(3, momentum=None, dtype=torch.float64, activation="identity")
    for training in (True, True, False):
        ref.train(training)
        ours.train(training)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bnfused.SyncBatchNorm(3).train()(torch.randn(1, 3))


def test_state_dict_and_constructor_match_torch():
    ref = nn.SyncBatchNorm(7, 1e-3, 0.2, bias=False)
    ours = bnfused.SyncBatchNorm(7, 1e-3, 0.2, bias=False)
    # A _BatchNorm like torch's, not its subclass: DDP refuses nn.SyncBatchNorm on CPU.
    assert isinstance(ours, nn.modules.batchnorm._BatchNorm) and ours.process_group is None
    assert repr(ours).replace("SyncBatchNorm", "") == repr(ref).replace("SyncBatchNorm", "")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    ref.running_mean.uniform_()
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    act = bnfused.SyncBatchNormAct(7, activation="leaky_relu", negative_slope=0.3)
    assert act.state_dict().keys() == nn.BatchNorm2d(7).state_dict().keys()
    assert "negative_slope=0.3" in repr(act)
    with pytest.raises(ValueError, match="non-zero"):
        bnfused.SyncBatchNorm(0)(torch.randn(2, 0))


def test_convert_sync_batchnorm_shares_parameters():
    net = nn.Sequential(
        nn.BatchNorm1d(3, momentum=None),
        nn.Sequential(
            bnfused.BatchNorm2d(4, affine=False),
            bnfused.BatchNormAct3d(5, activation="leaky_relu", negative_slope=0.2),
        ),
    )
    net.eval()
    old = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    out = bnfused.SyncBatchNorm.convert_sync_batchnorm(net, process_group=None)
    new = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [type(m) for m in new] == [
        bnfused.SyncBatchNorm,
        bnfused.SyncBatchNorm,
        bnfused.SyncBatchNormAct,
    ]
    assert new[0].weight is old[0].weight and new[0].running_var is old[0].running_var
    assert new[0].momentum is None and new[1].weight is None and not new[0].training
    assert (new[2].activation, new[2].negative_slope) == ("leaky_relu", 0.2)
    single = bnfused.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(2))
    assert type(single) is bnfused.SyncBatchNorm


def test_sync_batch_norm_rejects_eps_not_positive():
    from bnfused.op.sync import sync_batch_norm

    for eps in (0.0, -1e-5):
        with pytest.raises(ValueError, match="eps must be positive"):
            sync_batch_norm(torch.randn(4, 3), None, None, None, None, 0.1, eps)


def test_sync_batch_norm_one_running_stat_is_a_value_error():
    from bnfused.op.sync import sync_batch_norm

    with pytest.raises(ValueError, match="both be None or neither"):
        sync_batch_norm(torch.randn(4, 3), torch.zeros(3), None, None, None, 0.1, 1e-5)
