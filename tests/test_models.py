"""The model zoo: published parameter counts, any input size, checkpoints across sizes, timm."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from typer.testing import CliRunner

import astrocli  # noqa: F401  (registers the zoo with timm)
from astrocli.errors import AstroError
from astrocli.models import (
    adapt_state_dict,
    count_params,
    create_model,
    get_model_info,
    list_models,
    meta_param_count,
    set_fused_attn,
)

# Too costly for a CPU forward/backward at their default size: only built on meta.
BIG = {"vit_b_16", "vit_l_16", "vit_h_14", "cct_14_7x2_224", "cct_14_7x2_224_sine", "cct_14_7x2_384"}
BIG |= {"cct_14_7x2_384_sine", "vit_12_16"} | {f"astroformer_{i}" for i in range(6)}
WITH_PAPER_COUNT = [name for name in list_models() if get_model_info(name).paper_params is not None]


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_zoo_has_every_issue_name() -> None:
    names = set(list_models())
    expected = {f"astroformer_{i}" for i in range(6)} | {"vit_b_16", "vit_l_16", "vit_h_14", "vit_12_16"}
    for stem in ("2_3x2_32", "4_3x2_32", "6_3x1_32", "6_3x2_32", "7_3x1_32", "7_3x2_32", "7_7x2_224"):
        expected |= {f"cct_{stem}", f"cct_{stem}_sine"}
    expected |= {"cct_14_7x2_224", "cct_14_7x2_224_sine", "cct_14_7x2_384", "cct_14_7x2_384_sine"}
    expected |= {f"cvt_{s}_4_32" for s in (2, 4, 6, 7)} | {"cvt_7_8_32"}
    expected |= {f"vit_lite_{s}_4_32" for s in (2, 4, 6, 7)} | {"vit_lite_7_8_32", "vit_lite_7_16_32"}
    expected |= {f"resnet{d}" for d in (20, 32, 44, 56, 110)} | {"resnet18", "resnet34"}
    expected |= {"mobilenetv2_050", "mobilenetv2_200", "efficientnet_b0"}
    assert expected <= names, expected - names


@pytest.mark.parametrize("name", WITH_PAPER_COUNT)
def test_parameter_count_matches_paper_within_1_percent(name: str) -> None:
    info = get_model_info(name)
    count = meta_param_count(name, num_classes=info.paper_num_classes, img_size=info.paper_img_size)
    assert count / 1e6 == pytest.approx(info.paper_params, rel=0.01), (name, count)


def test_paper_counts_cover_the_issue() -> None:
    published = {name: get_model_info(name).paper_params for name in WITH_PAPER_COUNT}
    assert published["astroformer_5"] == 593.56 and published["cct_7_3x1_32"] == 3.760
    assert published["resnet110"] == 1.73 and published["mobilenetv2_200"] == 8.72
    assert published["vit_12_16"] == 85.63 and published["vit_lite_7_16_32"] == 3.89
    assert len(published) == 30  # every count the issue lists (ResNet-20/32/44 from He et al.)


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_on_meta(name: str) -> None:
    info = get_model_info(name)
    model = _meta(name, num_classes=10).eval()
    out = model(torch.zeros(1, 3, info.default_img_size, info.default_img_size, device="meta"))
    assert out.shape == (1, 10)
    assert model.pretrained_cfg["input_size"] == (3, info.default_img_size, info.default_img_size)


# The _sine variants differ only by a fixed buffer: their forward is checked in the sine test.
@pytest.mark.parametrize("name", [n for n in list_models() if n not in BIG and not n.endswith("_sine")])
def test_forward_backward_on_cpu_at_default_size(name: str) -> None:
    torch.manual_seed(0)
    size = get_model_info(name).default_img_size
    batch = 2 if size <= 32 else 1  # BatchNorm needs two values per channel at a 1x1 final map
    model = create_model(name, num_classes=10).train()
    out = model(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, 10) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("size", [32, 64, 224, 256])
def test_astroformer_builds_at_multiples_of_32(size: str) -> None:
    model = _meta("astroformer_0", num_classes=10, img_size=size)
    assert model(torch.zeros(1, 3, size, size, device="meta")).shape == (1, 10)
    tables = [b for n, b in model.named_parameters() if n.endswith("relative_position_bias_table")]
    side = size // 32  # stage 4 runs at 1/32 of the input
    assert tables and all(t.shape[0] == (2 * side - 1) ** 2 for t in tables)


@pytest.mark.parametrize("size", [32, 64])
def test_astroformer_real_forward_backward(size: int) -> None:
    torch.manual_seed(0)
    model = create_model("astroformer_0", num_classes=10, img_size=size)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    grad = model.stem.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_astroformer_rejects_bad_sizes() -> None:
    with pytest.raises(AstroError, match="multiple of 32"):
        _meta("astroformer_0", img_size=48)
    model = _meta("astroformer_0", img_size=32)
    with pytest.raises(ValueError, match="built for 32 px"):
        model(torch.zeros(1, 3, 64, 64, device="meta"))


def test_astroformer_checkpoint_at_32_loads_at_64() -> None:
    torch.manual_seed(0)
    small = create_model("astroformer_0", num_classes=10, img_size=32)
    large = create_model("astroformer_0", num_classes=10, img_size=64)
    with pytest.raises(RuntimeError):
        large.load_state_dict(small.state_dict())  # the relative-position tables differ in size
    adapted = adapt_state_dict(large, small.state_dict())
    large.load_state_dict(adapted)
    key = "stages.3.blocks.0.attn.rel_pos.relative_position_bias_table"
    assert small.state_dict()[key].shape[0] == 1 and large.state_dict()[key].shape[0] == 9
    # A 1x1 table interpolates to a constant 3x3 one, per head.
    assert torch.allclose(large.state_dict()[key], small.state_dict()[key].expand(9, -1), atol=1e-5)
    assert torch.equal(large.stem.conv1.weight, small.stem.conv1.weight)
    assert torch.isfinite(large.eval()(torch.randn(1, 3, 64, 64))).all()


@pytest.mark.parametrize(
    ("name", "tokens_32", "tokens_64"), [("cct_7_3x1_32", 256, 1024), ("vit_lite_7_4_32", 65, 257)]
)
def test_position_embedding_resampled_to_new_size(name: str, tokens_32: int, tokens_64: int) -> None:
    torch.manual_seed(0)
    small = create_model(name, num_classes=10, img_size=32)
    large = create_model(name, num_classes=10, img_size=64)
    adapted = adapt_state_dict(large, small.state_dict())
    large.load_state_dict(adapted)
    old = small.classifier.positional_emb
    new = large.classifier.positional_emb
    assert old.shape[1] == tokens_32 and new.shape[1] == tokens_64
    if tokens_32 % 2:  # class token kept as is
        assert torch.equal(new[:, 0], old[:, 0])
    assert abs(float(new.detach().mean()) - float(old.detach().mean())) < 0.05


def test_adapt_keeps_real_mismatches_loud() -> None:
    ten = _meta("cct_2_3x2_32", num_classes=10)
    five = _meta("cct_2_3x2_32", num_classes=5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        five.load_state_dict(adapt_state_dict(five, ten.state_dict()), assign=True)


def test_sine_models_really_use_sinusoidal_embedding() -> None:
    torch.manual_seed(0)
    model = create_model("cct_7_3x1_32_sine", num_classes=10).eval()
    learnable = create_model("cct_7_3x1_32", num_classes=10)
    assert model.classifier.positional_emb is None
    assert count_params(learnable) - count_params(model) == 256 * 256  # no learnable table
    table = model.classifier.sine_emb
    assert table.shape == (1, 256, 256)
    for position, channel in [(0, 0), (3, 4), (17, 9), (255, 254)]:
        angle = position / 10000 ** (2 * (channel // 2) / 256)
        expected = math.sin(angle) if channel % 2 == 0 else math.cos(angle)
        assert float(table[0, position, channel]) == pytest.approx(expected, abs=1e-6)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with_table = model(image)
        model.classifier.sine_emb.zero_()
        without_table = model(image)
    assert not torch.allclose(with_table, without_table, atol=1e-4)


def test_unknown_keyword_names_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown keyword.*positional_embeding.*valid keywords.*attn_drop_rate"
    ):
        create_model("cct_7_3x1_32", positional_embeding="sine")
    with pytest.raises(ValueError, match="did you mean cct_7_3x1_32"):
        create_model("cct_7_3x1_3")
    with pytest.raises(AstroError, match="multiple of the patch size"):
        _meta("vit_lite_7_16_32", img_size=40)


@pytest.mark.parametrize(("name", "size"), [("cct_7_3x1_32", 32), ("astroformer_0", 32), ("resnet20", 32)])
def test_grayscale_input(name: str, size: int) -> None:
    model = create_model(name, num_classes=3, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 3)
    assert model.pretrained_cfg["input_size"][0] == 1 and len(model.pretrained_cfg["mean"]) == 1


def test_timm_create_model_round_trip() -> None:
    assert (
        timm.is_model("cct_7_3x1_32") and timm.is_model("astroformer_5") and timm.is_model("mobilenetv2_200")
    )
    model = timm.create_model("cct_7_3x1_32", num_classes=7)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert count_params(model) == count_params(create_model("cct_7_3x1_32", num_classes=7))
    with torch.device("meta"):
        astro = timm.create_model("astroformer_0", num_classes=10, img_size=32, pretrained_cfg_overlay={})
    assert astro(torch.zeros(1, 3, 32, 32, device="meta")).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown keyword"):
        timm.create_model("cvt_7_4_32", num_clases=10)


def test_timm_prefix_builds_any_timm_model() -> None:
    vit = _meta("timm/vit_tiny_patch16_224", num_classes=4, img_size=32)
    assert vit(torch.zeros(1, 3, 32, 32, device="meta")).shape == (1, 4)
    resnet = _meta("timm/resnet10t", num_classes=4, img_size=32, in_chans=1).eval()  # CNNs take no img_size
    assert resnet(torch.zeros(1, 1, 32, 32, device="meta")).shape == (1, 4)
    assert get_model_info("timm/resnet10t").family == "timm"
    with pytest.raises(ValueError, match="timm has no model"):
        create_model("timm/not_a_model")


@pytest.mark.parametrize(
    ("name", "size"), [("cct_7_3x2_32", 32), ("vit_lite_7_8_32", 32), ("astroformer_0", 64)]
)
def test_fused_and_explicit_attention_agree(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=size).eval()
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    assert flags and all(flags)  # SDPA by default
    image = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fused = model(image)
        set_fused_attn(model, False)
        assert not any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
        explicit = model(image)
    assert torch.allclose(fused, explicit, atol=1e-4, rtol=1e-4)


def test_astro_models_command_json() -> None:
    from astrocli.cli import app

    result = CliRunner().invoke(app, ["models", "--family", "resnet_cifar", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["model"] for row in rows] == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert rows[3]["params"] == meta_param_count("resnet56", num_classes=10)
    assert all(row["macs"] > 0 and row["img_size"] == 32 for row in rows)
    assert rows[4]["macs"] > rows[0]["macs"] * 5  # 110 layers against 20


def test_astro_models_command_table_and_bad_family() -> None:
    from astrocli.cli import app

    table = CliRunner().invoke(app, ["models", "--family", "cvt", "--no-macs"])
    assert table.exit_code == 0 and "cvt_7_4_32" in table.output and "3.717 M" in table.output
    bad = CliRunner().invoke(app, ["models", "--family", "transformers"])
    assert bad.exit_code != 0 and isinstance(bad.exception, AstroError)


@pytest.mark.parametrize(
    ("name", "n_convs", "embedding"), [("cct_7_3x2_32", 2, "learnable"), ("cct_7_3x1_32_sine", 1, "sine")]
)
def test_cct_matches_the_authors_reference_given_the_same_weights(
    name: str, n_convs: int, embedding: str
) -> None:
    """vit-pytorch's CCT (contributed by the CCT authors) computes the same function with our weights."""
    cct = pytest.importorskip("vit_pytorch.cct")
    torch.manual_seed(0)
    ours = create_model(name, num_classes=10).eval()
    reference = cct.cct_7(
        img_size=32, n_conv_layers=n_convs, kernel_size=3, num_classes=10, positional_embedding=embedding
    ).eval()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    # The reference keeps its sine table as a frozen parameter; ours is a (non-saved) buffer.
    assert missing == ([] if embedding == "learnable" else ["classifier.positional_emb"]) and not unexpected
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(image), reference(image), atol=1e-5)


def test_vit_position_embedding_with_class_token_adapts_on_meta() -> None:
    small, large = (
        _meta("vit_b_16", num_classes=10, img_size=32),
        _meta("vit_b_16", num_classes=10, img_size=64),
    )
    adapted = adapt_state_dict(large, small.state_dict())
    assert adapted["pos_embed"].shape == (1, 1 + 4 * 4, 768)
    large.load_state_dict(adapted, assign=True)
