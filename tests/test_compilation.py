"""train.compile = activations: the compiled PReLU against PReLU's definition, y = x if x > 0 else a x."""
import pytest
import torch
from torch import nn

from pipeline import models
from pipeline.train.compilation import compile_activations, compile_for_training

pytestmark = pytest.mark.slow  # inductor compiles a kernel (about 15 s on 2 cores, once per process)


def reference_prelu(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    a = a.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(x > 0, x, a * x)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_compiled_prelu_matches_its_definition_and_gradients(memory_format):
    torch.manual_seed(0)
    eager, compiled = nn.PReLU(6), nn.PReLU(6)
    with torch.no_grad():
        eager.weight.uniform_(-0.5, 0.5)
        compiled.weight.copy_(eager.weight)
    assert compile_activations(compiled) == 1
    for shape in [(4, 6, 9, 9), (3, 6, 5, 7)]:  # two shapes: one graph serves both (dynamic)
        x = torch.randn(shape).contiguous(memory_format=memory_format)
        x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])  # the kink: x = 0 takes the a x branch, as defined
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected = reference_prelu(x_eager, eager.weight)
        out = compiled(x_compiled)
        assert torch.equal(out, expected)  # elementwise: bitwise the same forward
        grad = torch.randn_like(out)
        expected_x, expected_a = torch.autograd.grad(expected, (x_eager, eager.weight), grad)
        got_x, got_a = torch.autograd.grad(out, (x_compiled, compiled.weight), grad)
        assert torch.equal(got_x, expected_x)
        torch.testing.assert_close(got_a, expected_a, rtol=1e-5, atol=1e-5)  # a sum: another order


def test_compiling_activations_keeps_the_module_and_its_state():
    backbone = models.build("mobilefacenet", embedding_size=16, input_size=32)
    keys = list(backbone.state_dict())
    prelus = sum(isinstance(m, nn.PReLU) for m in backbone.modules())
    assert compile_for_training(backbone, "activations") is backbone
    assert list(backbone.state_dict()) == keys
    assert prelus > 0 and compile_activations(backbone) == prelus
    assert compile_for_training(backbone, "none") is backbone
