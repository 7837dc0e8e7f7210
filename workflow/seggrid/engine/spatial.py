"""Spatial partitioning (Hou et al.): one training sample split into slabs, one per rank.

A setting with ``spatial_partitions: N`` runs on ``gpus = data_parallel x N`` ranks. Ranks
``g*N .. g*N + N-1`` form spatial group ``g`` (contiguous, so a group stays inside a node);
they draw the same samples (their sampler is seeded by ``g``), augment the whole patch, and
each keeps slab ``i`` of it along ``partition_axis``. All the communication lives here:

- :func:`halo_exchange` gets a slab's neighbours' boundary planes for a convolution (zeros
  at the global border); its backward pass sends the halo's gradient back to the owner,
  which adds it to its boundary planes. The convolution runs on the slab as it is and adds
  the halo's contribution to the few boundary output planes (no padded copy of the slab).
- instance norm over the whole sample (:class:`_InstanceNorm`): statistics all-reduced over
  the group in the forward pass, the two sums its gradient needs in the backward pass.
- :func:`reduce_sums`: the loss's Dice sums and voxel sums, over a sample's slabs.
- :func:`sync_gradients`: parameter gradients summed over all ranks and divided by the
  number of spatial groups: summed over a sample's slabs, averaged over data-parallel ranks.

:func:`partition_network` gives an ordinary :class:`~seggrid.engine.network.PlainUNet` these
forwards by overriding ``forward`` on its convolution and instance-norm modules (instance
attributes: parameters and ``state_dict`` are untouched, so the saved model is the plain
network). Strided convolutions are exact at slab boundaries when every slab is a multiple of
the stride product along the axis (:func:`seggrid.engine.planner.check_partitionable`);
transposed convolutions (kernel = stride) and 1x1x1 heads are local. Dice sums, cross-entropy means and the
deep-supervision heads are reduced in ``losses.py`` through :class:`SpatialContext`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from seggrid.errors import SeggridError


@dataclass
class SpatialContext:
    """Where this rank sits: spatial group ``group`` of ``size`` ranks (index ``index``
    in it), data-parallel group ``dp_index`` of ``dp_size``; ``axis`` 0..2 of the patch."""

    size: int
    index: int
    dp_size: int
    dp_index: int
    axis: int
    group: object = None                     # the process group of this rank's spatial group
    prev_rank: int | None = None             # global rank holding the slab before ours
    next_rank: int | None = None
    #: test switches: a sabotaged run must NOT match the single-process one
    halo_gradients: bool = True
    norm_reduction: bool = True
    #: seconds spent in this module's communication (halo exchange, all-reduces, gradient sync)
    comm_seconds: float = 0.0

    @property
    def dim(self) -> int:
        """The tensor dimension of the axis in (B, C, a0, a1, a2)."""
        return 2 + self.axis

    @classmethod
    def create(cls, rank: int, world: int, size: int, axis: int) -> "SpatialContext":
        """Build the groups (every rank must call this, in the same order)."""
        if world % size:
            raise SeggridError(f"{world} ranks do not split into spatial groups of {size}")
        mine = None
        for g in range(world // size):
            members = list(range(g * size, (g + 1) * size))
            group = dist.new_group(members)
            if rank in members:
                mine = group
        index, dp_index = rank % size, rank // size
        return cls(size=size, index=index, dp_size=world // size, dp_index=dp_index, axis=axis, group=mine,
                   prev_rank=rank - 1 if index > 0 else None, next_rank=rank + 1 if index < size - 1 else None)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's slab of a (B, C, a0, a1, a2) tensor (a contiguous copy)."""
        length = t.shape[self.dim] // self.size
        return t.narrow(self.dim, self.index * length, length).contiguous()


# --- communication ------------------------------------------------------------------------

def _exchange(ctx: SpatialContext, to_prev: torch.Tensor | None, to_next: torch.Tensor | None,
              from_prev_shape, from_next_shape, like: torch.Tensor):
    """Send to both neighbours, receive from both; None / zeros at the global border."""
    ops, received = [], [None, None]
    for slot, (peer, send, shape) in enumerate(((ctx.prev_rank, to_prev, from_prev_shape),
                                                (ctx.next_rank, to_next, from_next_shape))):
        if peer is None:
            continue
        if send is not None:
            ops.append(dist.P2POp(dist.isend, send.contiguous(), peer, ctx.group))
        if shape is not None:
            received[slot] = like.new_empty(shape)
            ops.append(dist.P2POp(dist.irecv, received[slot], peer, ctx.group))
    if ops:
        t0 = time.perf_counter()
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        ctx.comm_seconds += time.perf_counter() - t0
    return received[0], received[1]


class _HaloExchange(torch.autograd.Function):
    """(left halo, right halo): the previous slab's last ``left`` planes and the next slab's
    first ``right`` planes (zeros at the global border). Backward: each halo's gradient goes
    back to its owner, which adds it to those planes. Every rank of the group must use both
    outputs (a width-0 one excepted), so that every rank runs the backward exchange."""

    @staticmethod
    def forward(ctx, x, spatial: SpatialContext, left: int, right: int):
        ctx.spatial, ctx.left, ctx.right, ctx.length = spatial, left, right, x.shape[spatial.dim]
        d, n = spatial.dim, x.shape[spatial.dim]
        if n < max(left, right):
            raise SeggridError(f"spatial partition: a slab of {n} voxels is thinner than a halo of {max(left, right)}")
        # my first `right` planes are the previous slab's right halo; my last `left` the next one's left halo
        from_prev, from_next = _exchange(spatial, x.narrow(d, 0, right) if right else None,
                                         x.narrow(d, n - left, left) if left else None,
                                         _planes_shape(x, d, left) if left else None,
                                         _planes_shape(x, d, right) if right else None, x)
        halo_left = from_prev if from_prev is not None else x.new_zeros(_planes_shape(x, d, left))
        halo_right = from_next if from_next is not None else x.new_zeros(_planes_shape(x, d, right))
        return halo_left, halo_right

    @staticmethod
    def backward(ctx, grad_left, grad_right):
        spatial, left, right, n = ctx.spatial, ctx.left, ctx.right, ctx.length
        d = spatial.dim
        like = grad_left if grad_left is not None else grad_right
        shape = list(like.shape)
        shape[d] = n
        grad_x = like.new_zeros(shape)
        if not spatial.halo_gradients:
            return grad_x, None, None, None
        # the left halo came from the previous slab's last `left` planes: its gradient goes there
        to_prev = (grad_left if grad_left is not None else like.new_zeros(_planes_shape(grad_x, d, left))) if left else None
        to_next = (grad_right if grad_right is not None else like.new_zeros(_planes_shape(grad_x, d, right))) if right else None
        from_prev, from_next = _exchange(spatial, to_prev, to_next, _planes_shape(grad_x, d, right) if right else None,
                                         _planes_shape(grad_x, d, left) if left else None, grad_x)
        if from_next is not None:
            grad_x.narrow(d, n - left, left).add_(from_next)
        if from_prev is not None:
            grad_x.narrow(d, 0, right).add_(from_prev)
        return grad_x, None, None, None


def _planes_shape(x: torch.Tensor, dim: int, planes: int) -> list[int]:
    shape = list(x.shape)
    shape[dim] = planes
    return shape


def halo_exchange(x: torch.Tensor, ctx: SpatialContext, left: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``left`` planes of the previous slab, ``right`` planes of the next) along the
    partition axis, zeros at the global border. Differentiable; every rank of the group
    must call it, and use both halos, in the same order."""
    return _HaloExchange.apply(x, ctx, left, right)


def _timed_all_reduce(t: torch.Tensor, spatial: SpatialContext | None, group=None) -> None:
    t0 = time.perf_counter()
    dist.all_reduce(t, group=group)
    if spatial is not None:
        spatial.comm_seconds += time.perf_counter() - t0


def reduce_sums(t: torch.Tensor, spatial: SpatialContext, over_all_ranks: bool = False) -> None:
    """Sum ``t`` in place over the sample's slabs (or over every rank): the loss's Dice sums
    and voxel counts. Not differentiable: the losses' backward passes are written by hand."""
    _timed_all_reduce(t, spatial, None if over_all_ranks else spatial.group)


#: elements per all-reduce of small gradients packed together (16 MB of float32)
SYNC_BUCKET = 4 * 2**20


def sync_gradients(params, ctx: SpatialContext) -> None:
    """Gradients summed over every rank (a sample's slabs and the data-parallel groups) and
    divided by the number of data-parallel groups. Large gradients are reduced in place;
    small ones packed into buckets of at most ``SYNC_BUCKET`` elements, so the extra memory
    is one bucket, not a copy of every gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []

    def flush():
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        _timed_all_reduce(flat, ctx)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket.clear()

    for g in grads:
        if g.numel() >= SYNC_BUCKET:
            _timed_all_reduce(g, ctx)
            continue
        if sum(b.numel() for b in bucket) + g.numel() > SYNC_BUCKET:
            flush()
        bucket.append(g)
    flush()
    for g in grads:
        g.div_(ctx.dp_size)


# --- the partitioned network ---------------------------------------------------------------

def _conv_forward(conv: nn.Conv3d, ctx: SpatialContext, x: torch.Tensor) -> torch.Tensor:
    """The convolution of the whole sample, restricted to this slab.

    The slab is convolved as it is, zero-padded as usual (no padded copy of ``x`` is made:
    the convolution saves ``x`` itself, which the activation before it holds anyway). The
    few output planes whose window reaches past the slab then get the halo's contribution:
    a thin convolution of the neighbours' planes, with zeros in place of our own planes,
    added in place. Along the axis, with kernel k, padding p and stride s, output plane j
    reads input planes j*s - p .. j*s - p + k - 1: the first ceil(p / s) planes read the
    previous slab's last p planes; the last ones read the next slab's first k - p - s (none
    for k = 3, s = 2)."""
    a, d = ctx.axis, ctx.dim
    k, p, s = conv.kernel_size[a], conv.padding[a], conv.stride[a]
    left, right = p, max(0, k - p - s)
    out = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if left == right == 0:
        return out
    halo_left, halo_right = halo_exchange(x, ctx, left, right)
    length, n_out = x.shape[d], out.shape[d]
    padding = list(conv.padding)
    padding[a] = 0
    # at the global border the halo is zeros and so is its correction; it is still computed,
    # so that every rank's backward pass runs the halo exchange
    if left:
        n_left = -(-p // s)                              # output planes that read the left halo
        planes = (n_left - 1) * s + k                    # their input planes, halo first
        thin = torch.cat([halo_left, _zeros_like_planes(x, d, planes - left)], d)
        out.narrow(d, 0, n_left).add_(F.conv3d(thin, conv.weight, None, conv.stride, padding, conv.dilation,
                                               conv.groups))
    if right:
        first = (length - k + p) // s + 1                # first output plane that reads the right halo
        n_right = n_out - first
        planes = (n_right - 1) * s + k
        thin = torch.cat([_zeros_like_planes(x, d, planes - right), halo_right], d)
        out.narrow(d, first, n_right).add_(F.conv3d(thin, conv.weight, None, conv.stride, padding, conv.dilation,
                                                    conv.groups))
    return out


def _zeros_like_planes(x: torch.Tensor, dim: int, planes: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = planes
    return x.new_zeros(shape)


class _InstanceNorm(torch.autograd.Function):
    """Instance norm over a whole sample split into slabs: statistics (sum, then sum of
    squared deviations) all-reduced over the spatial group in the forward pass, and the two
    sums its gradient needs (of dy*w and of dy*w*x_hat) in the backward pass. Saves only the
    input and the per-(sample, channel) mean and 1/std, as torch's own instance norm does;
    the weight and bias gradients are this slab's share (sync_gradients sums them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, spatial: SpatialContext):
        dims = (2, 3, 4)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))     # float32 statistics under AMP
        parts = spatial.size if spatial.norm_reduction else 1
        count = xf[0, 0].numel() * parts

        def total(t):
            if spatial.norm_reduction:
                _timed_all_reduce(t, spatial, spatial.group)
            return t

        mean = total(xf.sum(dims)) / count
        centred = xf - mean[:, :, None, None, None]
        invstd = torch.rsqrt(total(centred.square().sum(dims)) / count + eps)
        y = centred.mul_(invstd[:, :, None, None, None])
        if weight is not None:
            y = y.mul_(weight[None, :, None, None, None]).add_(bias[None, :, None, None, None])
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.spatial, ctx.count = spatial, count
        return y

    @staticmethod
    def backward(ctx, dy):
        x, mean, invstd, weight = ctx.saved_tensors
        spatial, dims = ctx.spatial, (2, 3, 4)
        # at most three slab-sized tensors at once: x_hat, g (which becomes dx) and one product
        x_hat = (x.to(dy.dtype) - mean[:, :, None, None, None]).mul_(invstd[:, :, None, None, None])
        grad_w = grad_b = None
        if weight is not None:
            grad_w = (dy * x_hat).sum((0, *dims))
            grad_b = dy.sum((0, *dims))
            g = dy * weight[None, :, None, None, None]
        else:
            g = dy.clone()
        sums = torch.stack([g.sum(dims), (g * x_hat).sum(dims)])
        if spatial.norm_reduction:
            _timed_all_reduce(sums, spatial, spatial.group)
        sum_g, sum_gx = sums / ctx.count
        dx = g.sub_(sum_g[:, :, None, None, None]).sub_(x_hat.mul_(sum_gx[:, :, None, None, None]))
        dx.mul_(invstd[:, :, None, None, None])
        return dx.to(x.dtype), grad_w, grad_b, None, None


def _instance_norm_forward(norm: nn.InstanceNorm3d, ctx: SpatialContext, x: torch.Tensor) -> torch.Tensor:
    """Instance norm of the whole sample: mean and (biased) variance over every slab."""
    return _InstanceNorm.apply(x, norm.weight if norm.affine else None, norm.bias if norm.affine else None,
                               norm.eps, ctx)


def partition_network(net: nn.Module, ctx: SpatialContext) -> nn.Module:
    """Give ``net``'s convolutions halo exchange and its instance norms global statistics
    (in place; parameters and state_dict unchanged). Transposed convolutions must have
    kernel = stride (local); other norms are refused."""
    for module in net.modules():
        if isinstance(module, nn.Conv3d):
            if module.kernel_size[ctx.axis] > 1:
                module.forward = functools.partial(_conv_forward, module, ctx)
        elif isinstance(module, nn.ConvTranspose3d):
            if module.kernel_size != module.stride:
                raise SeggridError("spatial partitioning needs transposed convolutions with kernel = stride")
        elif isinstance(module, nn.InstanceNorm3d):
            module.forward = functools.partial(_instance_norm_forward, module, ctx)
        elif isinstance(module, (nn.BatchNorm3d, nn.GroupNorm)):
            raise SeggridError("spatial partitioning supports norm: instance only")
    return net
