"""bench/train_throughput.py: the seeds-together ensemble it times computes what the seeds' own steps compute."""
import pytest
import torch
from torch.func import stack_module_state

from bench.train_throughput import _ensemble_step
from pipeline import heads, models

SIZE, CLASSES, BATCH = 32, 6, 8


@pytest.fixture
def float64():
    """In float64 the two computations agree to rounding (~1e-15); in float32 a step on 8 images at 32x32 (2x2
    final maps, BatchNorm over 32 values) amplifies rounding to ~0.3% of the update, which would hide a real error."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_a_vmapped_ensemble_step_is_each_seeds_own_step(float64):
    torch.manual_seed(0)
    images = torch.randn(2, BATCH, 3, SIZE, SIZE)
    labels = [torch.randint(0, CLASSES, (BATCH,)) for _ in range(2)]
    backbones = [models.build("mobilefacenet", 16, SIZE, seed=s) for s in range(2)]
    head_list = [heads.build("li_arcface", 16, CLASSES) for _ in range(2)]
    params, buffers = stack_module_state(backbones)
    ensemble_heads = [heads.build("li_arcface", 16, CLASSES) for _ in range(2)]
    for mine, theirs in zip(ensemble_heads, head_list):
        mine.load_state_dict(theirs.state_dict())
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer = torch.optim.SGD([*params.values(), *(p for h in ensemble_heads for p in h.parameters())], **sgd)
    template = models.build("mobilefacenet", 16, SIZE, seed=0, device="meta")
    _ensemble_step(template, params, buffers, ensemble_heads, optimizer, images, labels)
    for seed, (backbone, head) in enumerate(zip(backbones, head_list)):
        alone = torch.optim.SGD([*backbone.parameters(), *head.parameters()], **sgd)
        loss = head(backbone(images[seed]), labels[seed])
        alone.zero_grad()
        loss.backward()
        alone.step()
        for name, value in [*backbone.named_parameters(), *backbone.named_buffers()]:  # BN statistics per seed too
            stacked = params[name] if name in params else buffers[name]
            torch.testing.assert_close(stacked[seed].detach(), value.detach(), rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(ensemble_heads[seed].weight.detach(), head.weight.detach(), rtol=1e-9, atol=1e-12)
