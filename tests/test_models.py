"""Backbones: shapes, sizes, MACs and parameters re-derived by hand from the papers' tables, CBAM against numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models import BACKBONES, build
from pipeline.models.blocks import CBAM, CBAMSpec, ConvBN, InvertedResidual, OnePlusTanh, conv_output_size, fold_batchnorm
from pipeline.models.complexity import PAPER, count_macs, count_parameters, render

torch.set_num_threads(1)

# The tables re-listed here from the papers, (t, c, n, s) rows, independent of the code's specs.
MOBILEFACENET_TABLE = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]
AIRFACE_TABLE = [(2, 64, 1, 2), (2, 64, 9, 1), (4, 128, 1, 2), (2, 128, 16, 1), (8, 256, 1, 2), (2, 256, 6, 1)]
IRESNET_UNITS = {"iresnet18": [2, 2, 2, 2], "iresnet34": [3, 4, 6, 3], "iresnet50": [3, 4, 14, 3]}


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def halve(size: int) -> int:
    # a 3x3 / pad 1 / stride 2 conv (or 1x1 / stride 2) keeps ceil(size / 2) positions
    return -(-size // 2)


class Tally:
    """Parameters and MACs summed layer by layer from a table, the way one would on paper."""

    def __init__(self) -> None:
        self.params = 0
        self.macs = 0

    def conv(self, c_in: int, c_out: int, kernel: int, out_size: int, groups: int = 1, bias: bool = False,
             batch: int = 1) -> None:
        weights = c_out * (c_in // groups) * kernel * kernel
        self.params += weights + (c_out if bias else 0)
        self.macs += weights * out_size * out_size * batch

    def bn(self, channels: int) -> None:
        self.params += 2 * channels

    def prelu(self, channels: int) -> None:
        self.params += channels


def gdc_net_tally(table: list[tuple[int, int, int, int]], last: int, embedding: int, size: int,
                  reduction: int | None) -> Tally:
    tally = Tally()
    size = halve(size)
    tally.conv(3, 64, 3, size), tally.bn(64), tally.prelu(64)
    tally.conv(64, 64, 3, size, groups=64), tally.bn(64), tally.prelu(64)
    c_in = 64
    for t, c, n, s in table:
        for repeat in range(n):
            hidden = t * c_in
            tally.conv(c_in, hidden, 1, size), tally.bn(hidden), tally.prelu(hidden)
            if repeat == 0 and s == 2:
                size = halve(size)
            tally.conv(hidden, hidden, 3, size, groups=hidden), tally.bn(hidden), tally.prelu(hidden)
            tally.conv(hidden, c, 1, size), tally.bn(c)
            if reduction is not None:  # CBAM: shared MLP run on avg- and max-pooled maps, then the 7x7 conv
                mid = c // reduction
                tally.conv(c, mid, 1, 1, bias=True, batch=2), tally.conv(mid, c, 1, 1, bias=True, batch=2)
                tally.conv(2, 1, 7, size, bias=True)
            c_in = c
    tally.conv(c_in, last, 1, size), tally.bn(last), tally.prelu(last)
    tally.conv(last, last, size, 1, groups=last), tally.bn(last)  # GDC: kernel = final map
    tally.conv(last, embedding, 1, 1), tally.bn(embedding)
    return tally


def iresnet_tally(units: list[int], embedding: int, size: int) -> Tally:
    tally = Tally()
    tally.conv(3, 64, 3, size), tally.bn(64), tally.prelu(64)
    c_in = 64
    for count, width in zip(units, [64, 128, 256, 512]):
        for index in range(count):
            tally.bn(c_in)
            tally.conv(c_in, width, 3, size), tally.bn(width), tally.prelu(width)
            if index == 0:
                size = halve(size)
            tally.conv(width, width, 3, size), tally.bn(width)
            if index == 0:
                tally.conv(c_in, width, 1, size), tally.bn(width)
            c_in = width
    tally.bn(512)
    tally.params += 512 * size * size * embedding  # FC, no bias
    tally.macs += 512 * size * size * embedding
    tally.bn(embedding)
    return tally


def leaf_execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda module, i, o: order.append(module))
               for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


# --- conv arithmetic ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8, 13, 56, 112])
@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (7, 1, 3), (3, 2, 0),
                                                   (4, 3, 1)])
def test_conv_output_size_matches_torch(size: int, kernel: int, stride: int, padding: int) -> None:
    if size + 2 * padding < kernel:
        with pytest.raises(ValueError, match="does not fit"):
            conv_output_size(size, kernel, stride, padding)
        return
    conv = nn.Conv2d(1, 1, kernel, stride, padding)
    assert conv_output_size(size, kernel, stride, padding) == conv(torch.zeros(1, 1, size, size)).shape[-1]


# --- build and the registry -----------------------------------------------------------------------------------------

def test_registry_names() -> None:
    assert set(BACKBONES.names()) == {"mobilefacenet", "airface", "iresnet18", "iresnet34", "iresnet50"}


def test_build_rejects_unknown_name_and_option() -> None:
    with pytest.raises(KeyError, match="resnet9000"):
        build("resnet9000", 128)
    with pytest.raises(TypeError, match="dropout"):
        build("mobilefacenet", 128, dropout=0.1)


def test_build_seed_reproducible_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a = build("mobilefacenet", 64, 48, seed=3).state_dict()
    b = build("mobilefacenet", 64, 48, seed=3).state_dict()
    c = build("mobilefacenet", 64, 48, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.conv.weight"], c["stem.conv.weight"])


def test_build_device_argument() -> None:
    model = build("mobilefacenet", 64, 48, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_state_dict_keys_are_plain_and_load_across_builds() -> None:
    keys = build("airface", 32, 48).state_dict().keys()
    assert not any(k.startswith("module.") or "_orig_mod" in k for k in keys)
    target = build("airface", 32, 48, seed=1)
    target.load_state_dict(build("airface", 32, 48, seed=2).state_dict(), strict=True)


@pytest.mark.parametrize("name", ["mobilefacenet", "airface", "iresnet18"])
def test_too_small_input_names_input_size(name: str) -> None:
    with pytest.raises(ValueError, match="input_size=8"):
        build(name, 32, input_size=8)
    with pytest.raises(ValueError, match="input_size"):
        build(name, 32, input_size=0)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_smallest_accepted_input_gives_a_1x1_final_map(name: str) -> None:
    model = build(name, 16, input_size=9).eval()
    assert model.final_map_size == 1
    assert model(images(2, 9)).shape == (2, 16)


@pytest.mark.parametrize("name", ["mobilefacenet", "airface", "iresnet18"])
def test_wrong_input_shape_names_input_size(name: str) -> None:
    model = build(name, 32, input_size=48).eval()
    with pytest.raises(ValueError, match="input_size=48"):
        model(images(2, 56))


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="embedding_size"):
        build("mobilefacenet", 0)
    with pytest.raises(ValueError, match="dropout"):
        build("iresnet18", 32, 48, dropout=1.0)
    with pytest.raises(ValueError, match="gate"):
        build("airface", 32, 48, gate="relu")
    with pytest.raises(ValueError, match="reduction"):
        build("airface", 32, 48, reduction=0)


# --- shapes and the GDC kernel ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,embedding", [("mobilefacenet", 128), ("airface", 512), ("airface", 96)])
@pytest.mark.parametrize("size", [112, 56, 48])
def test_gdc_net_shapes_and_gdc_kernel(name: str, embedding: int, size: int) -> None:
    model = build(name, embedding, size).eval()
    seen: dict[str, tuple[int, ...]] = {}
    model.embedding.register_forward_hook(lambda m, inputs, out: seen.update(map=tuple(inputs[0].shape)))
    out = model(images(2, size))
    expected_map = halve(halve(halve(halve(size))))  # the stem and three stride-2 stages halve the map
    assert out.shape == (2, embedding)
    assert seen["map"][-2:] == (expected_map, expected_map)
    assert model.final_map_size == expected_map
    assert model.embedding.gdc.kernel_size == (expected_map, expected_map)
    assert model.embedding.gdc.groups == model.embedding.gdc.in_channels  # depthwise


@pytest.mark.parametrize("size", [112, 56, 48])
def test_iresnet18_shapes_and_fc_input(size: int) -> None:
    model = build("iresnet18", 512, size).eval()
    seen: dict[str, tuple[int, ...]] = {}
    model.bn.register_forward_hook(lambda m, inputs, out: seen.update(map=tuple(inputs[0].shape)))
    out = model(images(2, size))
    final = halve(halve(halve(halve(size))))
    assert out.shape == (2, 512)
    assert seen["map"][1:] == (512, final, final)
    assert model.fc.in_features == 512 * final * final


def test_iresnet50_forward_at_56() -> None:
    model = build("iresnet50", 512, 56).eval()
    with torch.no_grad():
        out = model(images(2, 56))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


# --- parameters and MACs: the code against hand tallies from the tables, and against the papers -----------------------

@pytest.mark.parametrize("size", [112, 56])
def test_mobilefacenet_params_and_macs_match_table(size: int) -> None:
    model = build("mobilefacenet", 128, size)
    tally = gdc_net_tally(MOBILEFACENET_TABLE, 512, 128, size, reduction=None)
    assert count_parameters(model) == tally.params
    assert count_macs(model, size) == tally.macs


@pytest.mark.parametrize("size", [112, 56])
def test_airface_params_and_macs_match_table(size: int) -> None:
    model = build("airface", 512, size)
    tally = gdc_net_tally(AIRFACE_TABLE, 1024, 512, size, reduction=16)
    assert count_parameters(model) == tally.params
    assert count_macs(model, size) == tally.macs


def test_figures_against_the_papers() -> None:
    mobilefacenet = build("mobilefacenet", 128)
    # MobileFaceNets quotes 0.99M parameters and 221M MAdds at 112 (AirFace Table 4: 440M FLOPs = 2 x MACs).
    assert 0.9e6 <= count_parameters(mobilefacenet) <= 1.3e6
    assert 0.20e9 <= count_macs(mobilefacenet, 112) <= 0.24e9
    airface = build("airface", 512)
    # AirFace Table 4 quotes 1G FLOPs; with the 2 x MACs convention it uses for MobileFaceNet, 0.45-0.6G MACs.
    # Parameters are not quoted; Table 1 tallied by hand gives 4.3M (stages 4 and 6 hold ~2.7M of it): 3.8-4.8M.
    assert 0.45e9 <= count_macs(airface, 112) <= 0.60e9
    assert 3.8e6 <= count_parameters(airface) <= 4.8e6


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50"])
def test_iresnet_params_match_hand_tally(name: str) -> None:
    for size in (112, 56):
        assert count_parameters(build(name, 512, size)) == iresnet_tally(IRESNET_UNITS[name], 512, size).params


def test_iresnet50_parameter_range() -> None:
    # Body: 3x3 convs of the [3,4,14,3] stages ~ 30.5M; FC 512*7*7 -> 512 = 12.8M; total ~43.6M at 112.
    assert 40e6 <= count_parameters(build("iresnet50", 512, 112)) <= 47e6


def test_iresnet18_macs_match_hand_tally() -> None:
    assert count_macs(build("iresnet18", 512, 48), 48) == iresnet_tally(IRESNET_UNITS["iresnet18"], 512, 48).macs


def test_count_macs_restores_training_mode() -> None:
    model = build("mobilefacenet", 32, 48).train()
    count_macs(model, 48)
    assert model.training


def test_render_shows_paper_figures_only_at_112() -> None:
    rows = [{"backbone": "mobilefacenet", "registered": True, "input_size": s, "embedding_size": 128,
             "final_map_size": 7 if s == 112 else 4, "parameters": 1_003_136, "macs": 220_965_376}
            for s in (112, 56)]
    lines = [line for line in render(rows).splitlines() if line.startswith("| mobilefacenet")]
    assert len(lines) == 2
    assert "0.99M" in lines[0] and "441.93M" in lines[0]  # paper params; our FLOPs = 2 x MACs
    assert lines[0].rstrip(" |").endswith(f"{2 * 220_965_376 / 440e6:.2f}")  # ratio to the quoted 440M FLOPs
    assert "0.99M" not in lines[1]
    assert PAPER["mobilefacenet"].macs == 221_000_000


# --- embedding layers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("mobilefacenet", 48), ("airface", 48), ("iresnet18", 48)])
def test_embedding_layers_are_the_last_layers_run(name: str, size: int) -> None:
    model = build(name, 64, size).eval()
    layers = model.embedding_layers()
    members = list(model.modules())
    assert layers and all(any(layer is m for m in members) for layer in layers)
    order = leaf_execution_order(model, images(2, size))
    assert len(order) == len({id(m) for m in order})  # each leaf runs once, so "last" is well defined
    assert all(a is b for a, b in zip(order[-len(layers):], layers, strict=True))
    # their parameters include the very last ones and none of the earlier layers'
    embedding_ids = {id(p) for layer in layers for p in layer.parameters()}
    earlier_ids = {id(p) for m in order[: -len(layers)] for p in m.parameters()}
    assert embedding_ids and not embedding_ids & earlier_ids
    assert id(list(model.parameters())[-1]) in embedding_ids
    # the whole linear tail: GDC nets from the global depthwise conv on (everything after the last PReLU),
    # IResNet from the output BN on (ArcFace's BN-Dropout-FC-BN)
    if name.startswith("iresnet"):
        assert [type(m) for m in layers] == [nn.BatchNorm2d, nn.Dropout, nn.Linear, nn.BatchNorm1d]
    else:
        last_prelu = max(i for i, m in enumerate(order) if isinstance(m, nn.PReLU))
        assert len(order) - 1 - last_prelu == len(layers)
        gdc = layers[0]
        assert isinstance(gdc, nn.Conv2d) and gdc.groups == gdc.in_channels
        assert gdc.kernel_size == (model.final_map_size,) * 2


# --- CBAM and the bottleneck -----------------------------------------------------------------------------------------

def test_airface_has_cbam_in_every_bottleneck_and_mobilefacenet_none() -> None:
    airface = build("airface", 64, 48)
    bottlenecks = [m for m in airface.modules() if isinstance(m, InvertedResidual)]
    assert len(bottlenecks) == sum(n for _, _, n, _ in AIRFACE_TABLE)
    assert all(isinstance(b.attention, CBAM) for b in bottlenecks)
    mobilefacenet = build("mobilefacenet", 64, 48)
    assert not any(isinstance(m, CBAM) for m in mobilefacenet.modules())


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual_starts_every_identity_bottleneck_as_the_identity(zero_init: bool) -> None:
    model = build("airface", 64, 48, seed=0, zero_init_residual=zero_init)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    identity_blocks = [b for b in blocks if b.residual]
    assert 0 < len(identity_blocks) < len(blocks)
    for block in blocks:
        x = torch.randn(2, block.expand.conv.in_channels, 6, 6)
        with torch.no_grad():
            out = block(x)
        assert torch.equal(out, x) == (zero_init and block.residual)
    mobilefacenet = build("mobilefacenet", 64, 48, seed=0)  # keeps the default init: its committed results
    assert all(torch.all(b.project.bn.weight == 1) for b in mobilefacenet.modules() if isinstance(b, InvertedResidual))


@pytest.mark.parametrize("gate,reference,low,high", [
    ("one_plus_tanh", lambda z: 1 + np.tanh(z), 0.0, 2.0),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z)), 0.0, 1.0),
])
def test_attention_maps_are_the_gate_of_the_pre_activation(gate: str, reference, low: float, high: float) -> None:
    model = build("airface", 64, 48, seed=0, gate=gate).eval()
    gates = [m for m in model.modules() if isinstance(m, (OnePlusTanh, nn.Sigmoid))]
    assert len(gates) == 2 * sum(n for _, _, n, _ in AIRFACE_TABLE)  # channel + spatial map per CBAM
    assert all(isinstance(g, OnePlusTanh) == (gate == "one_plus_tanh") for g in gates)
    captured: list[tuple[np.ndarray, np.ndarray]] = []
    for g in gates:
        g.register_forward_hook(lambda m, i, o: captured.append((i[0].double().numpy(), o.double().numpy())))
    with torch.no_grad():
        model(images(2, 48))
    assert len(captured) == len(gates)
    spread = 0.0
    for pre, attention in captured:
        assert np.all(attention > low) and np.all(attention < high)
        np.testing.assert_allclose(attention, reference(pre), rtol=1e-5, atol=1e-6)
        spread = max(spread, float(np.ptp(pre)))
    assert spread > 0.1  # the pre-activations vary, so the check above is not about a constant


def numpy_cbam(x: np.ndarray, cbam: CBAM) -> np.ndarray:
    """CBAM Eq. 1-3 with a 1+tanh gate, written out in numpy."""
    w0 = cbam.channel.mlp[0].weight.detach().double().numpy()[:, :, 0, 0]
    b0 = cbam.channel.mlp[0].bias.detach().double().numpy()
    w1 = cbam.channel.mlp[2].weight.detach().double().numpy()[:, :, 0, 0]
    b1 = cbam.channel.mlp[2].bias.detach().double().numpy()
    k = cbam.spatial.conv.weight.detach().double().numpy()[0]  # 2 x 7 x 7
    kb = float(cbam.spatial.conv.bias.detach()[0])

    def mlp(v: np.ndarray) -> np.ndarray:  # v: N x C
        return np.maximum(v @ w0.T + b0, 0) @ w1.T + b1

    channel_map = 1 + np.tanh(mlp(x.mean(axis=(2, 3))) + mlp(x.max(axis=(2, 3))))
    refined = channel_map[:, :, None, None] * x
    maps = np.stack([refined.mean(axis=1), refined.max(axis=1)], axis=1)  # N x 2 x H x W
    n, _, h, w = maps.shape
    padded = np.pad(maps, ((0, 0), (0, 0), (3, 3), (3, 3)))
    logits = np.full((n, h, w), kb)
    for dy in range(7):
        for dx in range(7):
            logits += np.einsum("c,nchw->nhw", k[:, dy, dx], padded[:, :, dy:dy + h, dx:dx + w])
    return (1 + np.tanh(logits))[:, None] * refined


def test_cbam_matches_numpy() -> None:
    torch.manual_seed(0)
    cbam = CBAM(32, CBAMSpec(reduction=4)).double()
    for p in cbam.parameters():  # non-trivial weights so every term matters
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(cbam(x).detach().numpy(), numpy_cbam(x.numpy(), cbam), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c_in,c_out,stride,residual", [(16, 16, 1, True), (16, 16, 2, False), (16, 24, 1, False)])
def test_inverted_residual_shortcut(c_in: int, c_out: int, stride: int, residual: bool) -> None:
    block = InvertedResidual(c_in, c_out, stride, expansion=2).eval()
    nn.init.zeros_(block.project.bn.weight)  # the branch now outputs exactly 0
    x = torch.randn(2, c_in, 8, 8)
    out = block(x)
    assert out.shape == (2, c_out, 8 // stride, 8 // stride)
    expected = x if residual else torch.zeros_like(out)
    assert torch.equal(out, expected)


# --- training and inference behaviour ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("mobilefacenet", 112), ("mobilefacenet", 56), ("airface", 112),
                                       ("airface", 56), ("iresnet18", 48)])
def test_one_training_step_has_finite_loss_and_grads(name: str, size: int) -> None:
    backbone = build(name, 64, size, seed=0).train()
    head = nn.Linear(64, 10)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4)
    labels = torch.tensor([0, 3, 7, 3])
    loss = nn.functional.cross_entropy(head(backbone(images(4, size))), labels)
    optimizer.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    for pname, parameter in backbone.named_parameters():
        assert parameter.grad is not None, pname
        assert torch.isfinite(parameter.grad).all(), pname
    first = next(backbone.parameters())
    before = first.detach().clone()
    optimizer.step()
    assert not torch.equal(before, first.detach())
    assert all(torch.isfinite(p).all() for p in backbone.parameters())


@pytest.mark.parametrize("name,size", [("mobilefacenet", 56), ("airface", 56), ("iresnet18", 48)])
def test_eval_deterministic_and_channels_last_agrees(name: str, size: int) -> None:
    model = build(name, 64, size, seed=0)
    with torch.no_grad():  # a few training batches so the BN running statistics are not the identity
        for seed in range(3):
            model(images(4, size, seed=seed))
    model.eval()
    x = images(2, size, seed=10)
    with torch.no_grad():
        first, second = model(x), model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        last = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(first, second)
    scale = first.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(last, first, rtol=1e-4, atol=1e-4 * scale)


def _with_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms as training leaves them: running statistics and affine parameters away from their defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.05)
                module.weight.copy_(torch.randn(n, generator=generator) * 0.5 + 1)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


@pytest.mark.parametrize("name", ["mobilefacenet", "airface"])
def test_folded_batchnorm_computes_the_same_embeddings(name: str) -> None:
    model = _with_trained_statistics(build(name, 64, 32, seed=0)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.eval()(x)
        got = folded(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_bf16 = folded(x).float()
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_bf16, reference, rtol=0.1, atol=0.1)  # bf16's 8-bit mantissa through the net
    remaining = [m for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(remaining) < sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched


def test_a_folded_conv_bn_is_the_inference_affine_map_and_survives_a_zero_variance() -> None:
    block = _with_trained_statistics(ConvBN(3, 4, 3, linear=True), seed=2).eval()
    block.bn.running_var[0] = 0.0  # a channel that never varied: the scale is gamma / sqrt(eps), finite
    folded = fold_batchnorm(block)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    bn = block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # Ioffe & Szegedy 2015, Algorithm 2, written out here
    expected = nn.functional.conv2d(x, block.conv.weight, padding=1) * scale[:, None, None] + (
        bn.bias - bn.running_mean * scale)[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(folded.bn, nn.Identity) and torch.isfinite(folded.conv.weight).all()
