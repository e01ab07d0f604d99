"""The data order as a pure function of (seed, step): a resumed run sees exactly the batches it would have."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator)


class StepBatchSampler(Sampler[list[int]]):
    """Yields the index batches of steps `start_step` .. `total_steps - 1`; an epoch drops its last partial batch."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int) -> None:
        if num_items < batch_size:
            raise ValueError(f"training set has {num_items} images, fewer than train.batch_size={batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.batches_per_epoch = num_items // batch_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        step = self.start_step
        while step < self.total_steps:
            epoch, position = divmod(step, self.batches_per_epoch)
            order = epoch_permutation(self.num_items, self.seed, epoch)
            for index in range(position, self.batches_per_epoch):
                if step >= self.total_steps:
                    return
                yield order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
                step += 1


def flip_mask(batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Which images of a step's batch are mirrored: seeded by (seed, step), independent of worker count."""
    generator = torch.Generator().manual_seed(seed * 7_919 + step + 1)
    return torch.rand(batch_size, generator=generator) < 0.5
