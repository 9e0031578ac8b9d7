"""The corpus's token ids as pretraining reads them: memory-mapped shard files, from which
blocks are sampled. Only the sampled windows are ever read into memory."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

from tasks.lib.common import StageError


class TokenShards:
    def __init__(self, folder: Path):
        files = sorted(Path(folder).glob("*.npy"))
        if not files:
            raise StageError(f"{folder} holds no token shards: run the tokenize stage first")
        self.arrays = [np.load(f, mmap_mode="r") for f in files]
        for array in self.arrays:
            # Blocks are drawn at random: the kernel's read-ahead around each would map pages no
            # block uses, and resident memory would grow with the corpus.
            if getattr(array, "_mmap", None) is not None:
                array._mmap.madvise(mmap.MADV_RANDOM)
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def sample(self, n: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """`n` windows of `width` consecutive tokens, each equally likely among all windows
        that lie inside one shard; the same generator state gives the same windows."""
        usable = np.maximum(self.lengths - width + 1, 0)
        if usable.sum() == 0:
            raise StageError(f"the corpus holds {self.tokens:,} tokens: fewer than one block of {width}")
        ends = np.cumsum(usable)
        picks = torch.randint(int(ends[-1]), (n,), generator=generator).numpy()
        shard = np.searchsorted(ends, picks, side="right")
        offset = picks - (ends[shard] - usable[shard])
        rows = [np.asarray(self.arrays[s][o : o + width], dtype=np.int64) for s, o in zip(shard, offset, strict=True)]
        return torch.from_numpy(np.stack(rows))
