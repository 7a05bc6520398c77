"""Deterministic, resumable streams of training batches.

The stream of training samples is infinite: sample position p (0, 1, 2, ...) is element ``p % n`` of
the permutation of epoch ``e = p // n``, where::

    perm_e = numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence([seed, 0, e]))).permutation(n)

Global batch k (SOLVER.IMS_PER_BATCH = B images, all ranks together) is

* without aspect-ratio grouping: positions ``k*B .. k*B + B-1``;
* with grouping (detectron2's AspectRatioGroupedDataset, done here over the index stream rather than
  in worker order): samples go in stream order into one of two buckets (0: width > height, 1:
  otherwise, as detectron2); a bucket that reaches B samples becomes the next global batch. Batch k
  is the k-th batch completed.

Rank r of world size W gets the slots ``r*B/W .. (r+1)*B/W - 1`` of every global batch, so the global
batches do not depend on W. The random draws of a sample (resize, flip) come from
``Generator(PCG64(SeedSequence([seed, 1, p])))``: they depend on its stream position only. Nothing
depends on SOLVER.MAX_ITER or DATALOADER.NUM_WORKERS, and starting at iteration k (cheap: whole epochs
are skipped with a few vectorised operations each) gives exactly the batches an uninterrupted run
gives from k on.
"""
import itertools
from typing import Iterator, Optional, Tuple

import numpy as np

SAMPLER_STREAM = 0
AUGMENT_STREAM = 1


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    ss = np.random.SeedSequence([seed, SAMPLER_STREAM, epoch])
    return np.random.Generator(np.random.PCG64(ss)).permutation(n)


def sample_generator(seed: int, position: int) -> np.random.Generator:
    """The generator of a sample's random draws (resize choice, flip)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, AUGMENT_STREAM, int(position)])))


class BatchStream:
    """Global batches: ``iter_from(k)`` yields (iteration, dataset indices [B], stream positions [B])
    for iterations k, k+1, ... forever."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, group_ids: Optional[np.ndarray] = None):
        if num_samples < 1:
            raise ValueError("BatchStream: the training set is empty")
        if batch_size < 1:
            raise ValueError("BatchStream: batch size must be positive")
        self.n, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.uint8)
        if self.group_ids is not None and len(self.group_ids) != self.n:
            raise ValueError("BatchStream: one group id per sample is needed")

    def _perm(self, e: int) -> np.ndarray:
        return epoch_permutation(self.n, self.seed, e)

    def iter_from(self, start_iter: int = 0) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        return self._grouped(start_iter) if self.group_ids is not None else self._plain(start_iter)

    def _plain(self, start: int):
        n, B = self.n, self.batch_size
        perms = {}
        for k in itertools.count(start):
            pos = np.arange(k * B, (k + 1) * B, dtype=np.int64)
            epochs = pos // n
            idx = np.empty(B, dtype=np.int64)
            for e in np.unique(epochs):
                if e not in perms:
                    perms = {e2: p for e2, p in perms.items() if e2 >= e - 1}
                    perms[e] = self._perm(int(e))
                m = epochs == e
                idx[m] = perms[e][pos[m] % n]
            yield k, idx, pos

    def _grouped(self, start: int):
        n, B = self.n, self.batch_size
        empty = np.empty(0, dtype=np.int64)
        pend_idx, pend_pos = [empty, empty], [empty, empty]
        k = 0
        for e in itertools.count():
            perm = self._perm(e)
            g = self.group_ids[perm]
            pos = e * n + np.arange(n, dtype=np.int64)
            full_idx, full_pos = [], []
            for grp in (0, 1):
                m = g == grp
                ci = np.concatenate([pend_idx[grp], perm[m]])
                cp = np.concatenate([pend_pos[grp], pos[m]])
                nf = len(ci) // B
                full_idx.append(ci[: nf * B].reshape(nf, B))
                full_pos.append(cp[: nf * B].reshape(nf, B))
                pend_idx[grp], pend_pos[grp] = ci[nf * B:], cp[nf * B:]
            fi, fp = np.concatenate(full_idx), np.concatenate(full_pos)
            order = np.argsort(fp[:, -1], kind="stable")  # completion order in the stream
            if k + len(order) <= start:
                k += len(order)
                continue
            for r in order:
                if k >= start:
                    yield k, fi[r], fp[r]
                k += 1
