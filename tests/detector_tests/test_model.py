import pytest
import torch

from effscale.detector.config import PRESET_NAMES, from_scaling, preset
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC

OFFICIAL_PARAMS = {
    "d0": 3_880_067,
    "d1": 6_625_898,
    "d2": 8_097_039,
    "d3": 12_032_296,
    "d4": 20_723_675,
    "d5": 33_653_315,
    "d6": 51_871_782,
    "d7": 51_871_782,
}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_built_presets_have_the_official_parameter_count(name):
    with torch.device("meta"):
        model = build_model(preset(name))
    assert _params(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", ["d0", "d2", "d6"])
def test_module_counts_match_effdet_reference(name):
    effdet = pytest.importorskip("effdet")
    with torch.device("meta"):
        ours = build_model(preset(name))
        ref = effdet.create_model(
            f"tf_efficientdet_{name}",
            pretrained=False,
            pretrained_backbone=False,
            num_classes=90,
            bench_task="",
        )
    assert _params(ours.backbone) == _params(ref.backbone)
    assert _params(ours.fpn) == _params(ref.fpn)
    assert _params(ours.class_head) == _params(ref.class_net)
    assert _params(ours.box_head) == _params(ref.box_net)


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (160, 64)])
def test_forward_shapes_every_level(size):
    config = from_scaling(PAPER_SPEC, -3, num_classes=5, image_size=size)
    model = build_model(config).eval()
    with torch.no_grad():
        cls, box = model(torch.randn(2, 3, *size))
    assert len(cls) == len(box) == 5
    h, w = size
    for level, (c, b) in enumerate(zip(cls, box), start=3):
        for _ in range(level):
            pass
        eh, ew = h, w
        for _ in range(level):
            eh, ew = (eh + 1) // 2, (ew + 1) // 2
        assert tuple(c.shape) == (2, 9 * 5, eh, ew)
        assert tuple(b.shape) == (2, 9 * 4, eh, ew)


def test_forward_rejects_sizes_that_are_not_multiples_of_8():
    model = build_model(from_scaling(PAPER_SPEC, -3, num_classes=2, image_size=(64, 64)))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 3, 64, 70))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))


def test_class_bias_starts_at_the_focal_prior():
    model = build_model(from_scaling(PAPER_SPEC, -3, num_classes=2, image_size=(64, 64))).eval()
    with torch.no_grad():
        cls, _ = model(torch.zeros(1, 3, 64, 64))
    probs = torch.cat([c.flatten() for c in cls]).sigmoid()
    # the prediction bias dominates at init: the mean probability is near the 0.01 prior
    assert 0.002 < probs.mean().item() < 0.05


@pytest.mark.parametrize("fusion", ["fastattn", "attn", "sum"])
def test_fusion_methods_build_and_run(fusion):
    config = from_scaling(PAPER_SPEC, -3, num_classes=3, image_size=(64, 96), fusion=fusion)
    model = build_model(config)
    cls, box = model(torch.randn(2, 3, 64, 96))
    loss = sum(c.mean() for c in cls) + sum(b.mean() for b in box)
    loss.backward()
    weights = [p for n, p in model.fpn.named_parameters() if n.endswith("nodes.0.weight")]
    assert (len(weights) == 0) == (fusion == "sum")
    if weights:
        assert weights[0].grad is not None


def test_tiny_config_overfits_one_batch():
    from effscale.detector.anchors import flatten_outputs, generate_anchors
    from effscale.detector.loss import DetectionLoss

    torch.manual_seed(0)
    config = from_scaling(PAPER_SPEC, -4, num_classes=3, image_size=(64, 64))
    model = build_model(config)
    images = torch.rand(2, 3, 64, 64)
    images[0, :, 8:40, 8:40] = 1.0
    images[1, :, 24:56, 16:48] = 0.0
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]], [[16.0, 24.0, 48.0, 56.0]]])
    labels = torch.tensor([[0], [2]])
    anchors = generate_anchors(config.anchors, config.image_size)
    criterion = DetectionLoss(num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        cls, box = flatten_outputs(*model(images), config.num_classes)
        loss = criterion(cls, box, anchors, boxes, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
