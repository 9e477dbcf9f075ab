"""Generated from the backbone registry: every name builds, its declared head exists and is the
last layer (so pruning ignores it and transfer learning replaces it), the output fits the classes."""

from __future__ import annotations

import pytest
import torch

from trainer.models.backbones import backbone_info, build_model, head_module, list_backbones


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_builds_with_head(name):
    torch.manual_seed(0)
    model = build_model(name, 5).eval()
    head = head_module(model, name)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 5
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert backbone_info(name).library in ("torchvision", "timm")


def test_timm_passthrough_name():
    model = build_model("timm:resnet10t", 3).eval()
    assert head_module(model, "timm:resnet10t").out_features == 3


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("alexnet2", 3)
