"""Patch sampling from preprocessed cases: nnU-Net's foreground oversampling, then augmentation.

A batch holds ``batch`` patches of the plan's effective patch (z, y, x), placed as nnU-Net 2.8.1's
data loader places them (``nnUNetDataLoader.get_bbox``, ``nnUNetTrainer._set_batch_size_and_oversample``):

- Foreground quota per GLOBAL batch: sample i of the global batch is forced to contain foreground
  when ``i >= round(global_batch * (1 - foreground_fraction))``; under data parallelism every rank
  (every spatial group) holds a contiguous slice of the global batch, so it forces the samples of
  its slice (:func:`forced_foreground_counts`), whatever the number of GPUs.
- Placement: the loader cuts the *initial patch* (:func:`seggrid.engine.augment.initial_patch_size`,
  larger than the patch so that rotation has data to sample) and the spatial transform takes the
  patch from its centre. A random box starts uniformly in ``[(-pad) // 2, shape + pad // 2 + pad % 2 -
  initial]`` with ``pad = initial - patch`` (``initial - shape`` when the case is smaller than the
  patch); a forced box is CENTRED on a random stored voxel of a random class present in the case,
  ``start = max(lower bound, voxel - initial // 2)`` (no upper clamp: it may reach past the image).
  Outside the image the crop is 0 (image) and -1 (label, "outside", 0 after augmentation).

Two options from Ma et al. 2020 ("training 20x faster"):

- ``adaptive_ratio``: the foreground fraction follows the last validation's errors:
  r' = (r_FN / r_FP)**gamma with their eq. 5-6, r_FP = mean_c (TP+FP)/(TP+FP+FN),
  r_FN = mean_c (TP+FN)/(TP+FP+FN), and fraction = r' / (1 + r'); it starts at 1:1.
- :class:`SmartCache`: keep ``size`` cases in RAM and replace ``replace_fraction`` of them per
  epoch, loading the replacements in a background thread while the epoch trains.
  Without it, cases are memory-mapped and the OS page cache decides.

:class:`Prefetcher` draws the next batches (cases, crop positions, augmentation parameters,
the crops themselves, pinned on a GPU) in a background thread while the current step runs;
the step's thread copies them to the device without blocking and augments them there.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seggrid.data.locations import load_class_locations
from seggrid.engine.augment import Augmenter, initial_patch_size


def local_batch(global_batch: int, rank: int, ranks: int) -> int:
    """Samples of a global batch held by data-parallel rank ``rank`` of ``ranks`` (the first
    ``global_batch % ranks`` ranks hold one more, as nnU-Net splits it)."""
    return global_batch // ranks + (1 if rank < global_batch % ranks else 0)


def forced_foreground_counts(global_batch: int, ranks: int, fraction: float) -> list[int]:
    """Forced-foreground samples of each rank, nnU-Net 2.8.1's rule: sample i of the GLOBAL batch
    is forced when ``not i < round(global_batch * (1 - fraction))``, and rank r holds the
    contiguous slice of the global batch after ranks 0..r-1 (:func:`local_batch` samples); each
    rank forces the last ones of its own batch. The counts sum to
    ``global_batch - round(global_batch * (1 - fraction))`` for every number of ranks."""
    if ranks < 1 or global_batch < ranks:
        raise ValueError(f"a global batch of {global_batch} cannot be split over {ranks} rank(s)")
    n_random = round(global_batch * (1 - fraction))
    counts, start = [], 0
    for r in range(ranks):
        size = local_batch(global_batch, r, ranks)
        counts.append(sum(1 for i in range(start, start + size) if not i < n_random))
        start += size
    return counts


def box_bounds(shape: np.ndarray, initial: np.ndarray, patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lowest, highest) start of the initial-patch box in a case of ``shape`` (z, y, x):
    nnU-Net's ``get_bbox`` bounds, padding by ``initial - patch`` (or to the initial patch when the
    case is smaller than the patch), half on each side."""
    pad = initial - patch
    pad = np.where(pad + shape < initial, initial - shape, pad)
    return (-pad) // 2, shape + pad // 2 + pad % 2 - initial        # (-pad) // 2 rounds down, as get_bbox


def adaptive_foreground_fraction(counts: np.ndarray, gamma: float = 1.0) -> float:
    """Fraction of forced-foreground samples from (3, C) validation TP/FP/FN counts."""
    tp, fp, fn = counts
    union = tp + fp + fn
    seen = union > 0
    if not seen.any():
        return 0.5
    r_fp = float(np.mean((tp + fp)[seen] / union[seen]))
    r_fn = float(np.mean((tp + fn)[seen] / union[seen]))
    if r_fp == 0:
        return 1.0
    r = (r_fn / r_fp) ** gamma
    return r / (1 + r)


class SmartCache:
    """``size`` of the cases held in RAM; :meth:`start_epoch` swaps in the replacements loaded in
    the background during the previous epoch and starts loading the next ones. Which cases are
    swapped is drawn from ``rng``, so the sequence is deterministic."""

    def __init__(self, load, n_cases: int, size: int, replace_fraction: float, rng: np.random.Generator):
        self.load, self.n_cases, self.rng = load, n_cases, rng
        self.size = min(size, n_cases)
        self.n_replace = min(int(round(self.size * replace_fraction)), n_cases - self.size)
        self.members = sorted(rng.choice(n_cases, size=self.size, replace=False).tolist())
        self.data = {i: load(i) for i in self.members}
        self._incoming: dict[int, tuple] = {}
        self._plan: list[tuple[int, int]] = []
        self._thread: threading.Thread | None = None

    def _prefetch(self) -> None:
        if self.n_replace == 0:
            return
        outside = [i for i in range(self.n_cases) if i not in self.data]
        new = self.rng.choice(outside, size=self.n_replace, replace=False).tolist()
        old = self.rng.choice(self.members, size=self.n_replace, replace=False).tolist()
        self._plan = list(zip(old, new))
        self._load_in_background()

    def _load_in_background(self) -> None:
        """Start loading the incoming cases of the planned swap."""
        new = [n for _, n in self._plan]
        self._incoming = {}
        self._thread = threading.Thread(target=lambda: self._incoming.update({i: self.load(i) for i in new}),
                                        daemon=True)
        self._thread.start()

    def state_dict(self) -> dict:
        """Members, the pending swap and the generator: enough to resume the same sequence."""
        return {"members": list(self.members), "plan": list(self._plan), "rng": self.rng.bit_generator.state,
                "pending": self._thread is not None}

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            self._thread.join()
        self.members = list(state["members"])
        self.data = {i: self.load(i) for i in self.members}
        self.rng.bit_generator.state = state["rng"]
        self._plan, self._thread = [tuple(p) for p in state["plan"]], None
        if state["pending"]:
            self._load_in_background()

    def start_epoch(self) -> None:
        if self._thread is not None:
            self._thread.join()
            for old, new in self._plan:
                del self.data[old]
                self.data[new] = self._incoming[new]
            self.members = sorted(self.data)
            self._thread = None
        self._prefetch()


class PatchSampler:
    """Batches of one data-parallel group: ``batch`` samples of its slice of a ``global_batch``
    (default: the whole batch, one group). ``initial_patch`` is the box the loader cuts before
    augmentation (default nnU-Net's :func:`initial_patch_size` of ``patch``; nnU-Net's validation
    loader uses the patch itself)."""

    def __init__(self, preprocessed: str | Path, case_ids: list[str], patch: list[int], batch: int,
                 foreground_fraction: float, rng: np.random.Generator, augmenter: Augmenter | None = None,
                 device: torch.device | str = "cpu", cache_cases: int = 0, cache_replace: float = 0.1, *,
                 global_batch: int | None = None, group: int = 0, groups: int = 1,
                 initial_patch: list[int] | None = None):
        if not case_ids:
            raise ValueError("PatchSampler needs at least one case")
        root = Path(preprocessed)
        self.patch = np.asarray(patch)
        self.initial = np.asarray(initial_patch if initial_patch is not None else initial_patch_size(patch))
        self.batch = batch
        self.global_batch = global_batch if global_batch is not None else batch
        self.group, self.groups = group, groups
        if local_batch(self.global_batch, group, groups) != batch:
            raise ValueError(f"group {group} of {groups} holds {local_batch(self.global_batch, group, groups)} "
                             f"samples of a global batch of {self.global_batch}, not {batch}")
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        self.augmenter = augmenter
        self.device = torch.device(device)
        self.case_ids = list(case_ids)
        self.images = [np.load(root / f"{c}_img.npy", mmap_mode="r") for c in self.case_ids]
        self.labels = [np.load(root / f"{c}_seg.npy", mmap_mode="r") for c in self.case_ids]
        self.locations = [load_class_locations(root, c) for c in self.case_ids]
        self.cache = None
        if cache_cases:
            self.cache = SmartCache(lambda i: (np.array(self.images[i]), np.array(self.labels[i])),
                                    len(self.case_ids), cache_cases, cache_replace,
                                    np.random.default_rng(rng.integers(2**63)))

    @property
    def n_forced(self) -> int:
        """Forced-foreground samples of this group's batch (its share of the global quota)."""
        return forced_foreground_counts(self.global_batch, self.groups, self.foreground_fraction)[self.group]

    def start_epoch(self) -> None:
        if self.cache is not None:
            self.cache.start_epoch()

    def _case(self) -> int:
        if self.cache is not None:
            return int(self.rng.choice(self.cache.members))
        return int(self.rng.integers(len(self.case_ids)))

    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None:
            return self.cache.data[i]
        return self.images[i], self.labels[i]

    def _box_start(self, shape: np.ndarray, force_fg: bool, locs: dict) -> np.ndarray:
        """Start (z, y, x) of the initial-patch box (see the module docstring)."""
        lo, hi = box_bounds(shape, self.initial, self.patch)
        eligible = sorted(c for c, v in locs.items() if len(v)) if force_fg else []
        if eligible:
            cls = eligible[self.rng.integers(len(eligible))]
            voxel = np.asarray(locs[cls][self.rng.integers(len(locs[cls]))])
            return np.maximum(lo, voxel - self.initial // 2)
        return np.array([self.rng.integers(a, b + 1) for a, b in zip(lo, hi)])

    def patch_start(self, box_start: np.ndarray) -> np.ndarray:
        """Start of the patch that a sample without spatial transform takes from the box (its
        centre, as batchgeneratorsv2's ``crop_tensor`` cuts it: ``initial // 2 - patch // 2``)."""
        return box_start + self.initial // 2 - self.patch // 2

    @staticmethod
    def crop(array: np.ndarray, corner: np.ndarray, size: np.ndarray, fill: int = 0, dtype=None) -> np.ndarray:
        """``size`` voxels from ``corner`` (may lie outside the array: ``fill`` there)."""
        out = np.full(tuple(size), fill, dtype=dtype or array.dtype)
        src, dst = [], []
        for c, p, s in zip(corner, size, array.shape):
            a, b = max(c, 0), min(c + p, s)
            src.append(slice(a, max(a, b)))
            dst.append(slice(a - c, a - c + max(0, b - a)))
        out[tuple(dst)] = array[tuple(src)]
        return out

    def draw_batch(self) -> RawBatch:
        """Everything random about the next batch, and its crops, on the CPU (see :class:`RawBatch`).
        Only this method draws from ``rng``: calling it ``n`` times in order, in any thread,
        gives the same batches."""
        n_forced = self.n_forced
        picks = []
        for b in range(self.batch):
            i = self._case()
            image, _ = self._arrays(i)
            start = self._box_start(np.asarray(image.shape), b >= self.batch - n_forced, self.locations[i])
            params = self.augmenter.draw(self.rng) if self.augmenter else None
            picks.append((i, start, params))
        pin = self.device.type == "cuda"
        images, labels = [], []
        for i, start, params in picks:
            image, label = self._arrays(i)
            if params is not None and params.matrix is not None:
                # the whole initial box: the spatial transform samples around its centre; outside the
                # image the label is -1 ("outside"), which the augmentation turns into 0 at the end
                img = torch.from_numpy(self.crop(image, start, self.initial)[None])
                lab = torch.from_numpy(self.crop(label, start, self.initial, fill=-1, dtype=np.int16)[None])
            else:
                corner = self.patch_start(start)
                img = torch.from_numpy(self.crop(image, corner, self.patch)[None])
                lab = torch.from_numpy(self.crop(label, corner, self.patch, dtype=np.int16)[None])
            images.append(img.pin_memory() if pin else img)
            labels.append(lab.pin_memory() if pin else lab)
        seed = int(self.rng.integers(2**63)) if self.augmenter is not None else None
        return RawBatch(images, labels, [p for _, _, p in picks], seed)

    def finish_batch(self, raw: RawBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy a drawn batch to the device (non-blocking from pinned memory) and augment it there."""
        images = [x.to(self.device, non_blocking=True) for x in raw.images]
        labels = [x.to(self.device, non_blocking=True) for x in raw.labels]
        if self.augmenter is None:
            return torch.stack(images).float(), torch.stack(labels).long()
        generator = torch.Generator(device=self.device)
        generator.manual_seed(raw.seed)
        img, lab = self.augmenter(images, labels, raw.params, self.patch.tolist(), generator)
        return img.float(), lab.long()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (B, 1, z, y, x) float32, label (B, 1, z, y, x) int64) on the sampler's device."""
        return self.finish_batch(self.draw_batch())


@dataclass
class RawBatch:
    """A batch as drawn on the CPU: per-sample crops (1, z, y, x), pinned when the sampler's
    device is a GPU, augmentation parameters, and the seed of the augmentation's generator."""
    images: list[torch.Tensor]
    labels: list[torch.Tensor]
    params: list
    seed: int | None


class Prefetcher:
    """Draws ``count`` batches of ``sampler`` in a background thread, ``depth`` batches ahead
    of the training step, so cropping (and pinning) overlaps with the step. The thread is the
    only user of the sampler's generator while it runs, and it stops after exactly ``count``
    draws, so the generator state after the epoch, which a checkpoint saves, is the same
    with or without prefetching. ``wait_seconds`` is the time the consumer spent blocked;
    ``finish_seconds`` the time it spent in ``finish_batch`` (the augmentation and the device
    copy, which run in the consumer's thread: real work on a CPU, kernel launches on a GPU)."""

    def __init__(self, sampler: PatchSampler, count: int, depth: int = 2):
        self.sampler, self.count, self.served, self.wait_seconds, self.finish_seconds = sampler, count, 0, 0.0, 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                if self._stop.is_set():
                    return
                self._queue.put(("ok", self.sampler.draw_batch()))
        except BaseException as exc:          # handed to the consumer, raised there
            self._queue.put(("error", exc))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.served >= self.count:
            raise RuntimeError(f"Prefetcher: all {self.count} batches were served")
        t0 = time.perf_counter()
        kind, item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if kind == "error":
            self.close()
            raise item
        self.served += 1
        if self.served == self.count:
            self._thread.join()
        t0 = time.perf_counter()
        batch = self.sampler.finish_batch(item)
        self.finish_seconds += time.perf_counter() - t0
        return batch

    def close(self) -> None:
        """Stop early (an error in the consumer): the thread ends after its current draw."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
