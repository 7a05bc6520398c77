"""SyncBN on CPU: two gloo processes normalise over the combined batch exactly like BatchNorm."""
import logging

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from rethink.modeling.norm import SyncBatchNorm, get_norm


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, 5, 7, generator=g) * 3 + 1.5
    w = torch.randn(8, generator=g)
    b = torch.randn(8, generator=g)
    return x, w, b


def _worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, w, b = _data()
    bn = SyncBatchNorm(8, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    bn.train()
    local = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
    for _ in range(2):  # two steps so running stats accumulate
        y = bn(local)
    (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
    torch.save(dict(y=y.detach(), grad=local.grad, mean=bn.running_mean, var=bn.running_var,
                    n=bn.num_batches_tracked, wgrad=bn.weight.grad), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_cpu_syncbn_equals_batchnorm_over_combined_batch(tmp_path):
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    x, w, b = _data()
    ref = nn.BatchNorm2d(8, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    xr = x.clone().requires_grad_(True)
    for _ in range(2):
        y = ref(xr)
    (y * torch.cat([torch.arange(y[:3].numel()).reshape(y[:3].shape)] * 2).float().sin()).sum().backward()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach(), atol=1e-5, rtol=0)
    for r in (r0, r1):
        torch.testing.assert_close(r["mean"], ref.running_mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(r["var"], ref.running_var, atol=1e-5, rtol=0)
        assert int(r["n"]) == 2
    # input gradients equal BN's over the combined batch; weight grads sum to BN's
    torch.testing.assert_close(torch.cat([r0["grad"], r1["grad"]]), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r0["wgrad"] + r1["wgrad"], ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_single_process_syncbn_is_batchnorm_and_says_so_once(caplog):
    x, w, b = _data()
    sbn, bn = get_norm("SyncBN", 8), nn.BatchNorm2d(8)
    assert isinstance(sbn, SyncBatchNorm)
    SyncBatchNorm._warned_single = False
    with caplog.at_level(logging.INFO, logger="rethink.modeling.norm"):
        out = sbn(x)
        sbn(x)
    torch.testing.assert_close(out, bn(x))
    bn(x)
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)
    torch.testing.assert_close(sbn.running_var, bn.running_var)
    assert sum("behaves as BatchNorm" in r.message for r in caplog.records) == 1
    assert set(sbn.state_dict()) == set(bn.state_dict())


def test_to_torch_syncbn_keeps_state_and_leaves_other_norms():
    from rethink.modeling.norm import to_torch_syncbn

    model = nn.Sequential(get_norm("SyncBN", 4), nn.Sequential(get_norm("BN", 4), get_norm("SyncBN", 4)))
    with torch.no_grad():
        model[0].running_mean.fill_(3.0)
        model[1][1].weight.fill_(2.0)
    out = to_torch_syncbn(model)
    assert type(out[0]) is nn.SyncBatchNorm and type(out[1][1]) is nn.SyncBatchNorm
    assert type(out[1][0]) is nn.BatchNorm2d
    assert torch.equal(out[0].running_mean, torch.full((4,), 3.0))
    assert torch.equal(out[1][1].weight, torch.full((4,), 2.0))
