"""The install gives a torch/torchvision pair that loads together, and DALI with its index tool."""


def test_torch_torchvision_and_dali_import():
    import nvidia.dali
    import torch
    import torchvision
    from torchvision.ops import nms  # fails with "operator torchvision::nms does not exist" on a mismatched pair

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert torchvision.models.resnet18(weights=None).fc.in_features == 512
    assert int(nvidia.dali.__version__.split(".")[0]) >= 2


def test_dali_index_tool_is_installed():
    import importlib.util

    assert importlib.util.find_spec("wds2idx") is not None
