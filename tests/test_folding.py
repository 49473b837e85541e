"""Batch norms folded into their convolutions: only the pairs that are certain, and the same numbers after."""

from __future__ import annotations

import timm
import torch
from torch import nn

from atlas.models.folding import FoldedNorm, fold_batch_norms, foldable_pairs
from atlas.models.view import ModelView


class Net(nn.Module):
    """Every case the folding must tell apart, with norms that hold real (non-trivial) running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_norm = nn.BatchNorm2d(8)  # conv -> norm: folds
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.shared_norm = nn.BatchNorm2d(8)  # its conv's output also feeds the skip below: must not fold
        self.twice = nn.Conv2d(8, 8, 1)
        self.twice_norm = nn.BatchNorm2d(8)  # its conv runs twice, the norm follows one call: must not fold
        self.pre_norm = nn.BatchNorm2d(8)  # a norm before a conv (pre-activation): nothing to fold into
        self.last = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)
        generator = torch.Generator().manual_seed(0)
        for norm in (self.stem_norm, self.shared_norm, self.twice_norm, self.pre_norm):
            norm.running_mean.copy_(torch.randn(8, generator=generator))
            norm.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(8, generator=generator))
            norm.bias.data.copy_(torch.randn(8, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))
        shared = self.shared(x)
        x = torch.relu(self.shared_norm(shared)) + shared
        x = self.twice_norm(self.twice(x)) + self.twice(x)
        x = self.last(self.pre_norm(x))
        return self.head(x.mean(dim=(2, 3)))


def test_only_the_certain_pairs_fold_and_the_model_computes_the_same() -> None:
    net = Net().eval()
    example = torch.rand(2, 3, 16, 16)
    assert foldable_pairs(net, example) == [("stem", "stem_norm")]
    view = ModelView.of_module(net, "shared", input_size=16)
    folded = fold_batch_norms(view)
    assert folded is not view and folded.module is not net
    assert isinstance(folded.module.stem_norm, FoldedNorm) and isinstance(net.stem_norm, nn.BatchNorm2d)  # the model is untouched
    assert isinstance(folded.module.shared_norm, nn.BatchNorm2d) and isinstance(folded.module.twice_norm, nn.BatchNorm2d)
    assert folded.layer is folded.module.shared and folded.layer_name == "shared" and folded.preprocessing == view.preprocessing

    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    ours, theirs = folded.module(x), net(y)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-3, atol=1e-5)  # gradient ascent climbs the same slope


def test_timm_norms_with_their_activation_fold_and_a_training_model_keeps_its_mode() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    for module in model.modules():  # non-trivial statistics, as trained weights have
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    view = ModelView.of_module(model, "blocks.2", input_size=64)
    folded = fold_batch_norms(view)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert norms > 30 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.module.modules())  # every one folds
    assert model.training  # tracing and checking put it back as it was
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.module(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_conv_whose_weights_its_forward_rewrites_leaves_the_model_unfolded() -> None:
    """timm's StdConv2d standardises its weights on every call, which would undo the folded scale: the check
    against the model's own output catches it, and the view comes back as it was."""
    from timm.layers import StdConv2d

    net = nn.Sequential(StdConv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2.0)
    net[1].weight.data.uniform_(0.5, 2.0)
    net.eval()(torch.rand(1, 3, 8, 8))  # materialise the lazy layer
    view = ModelView.of_module(net, "2", input_size=8)
    assert foldable_pairs(net, torch.rand(2, 3, 8, 8)) == [("0", "1")]  # the structure alone would fold it
    assert fold_batch_norms(view) is view


def test_a_model_without_norms_is_returned_as_it_is() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    view = ModelView.of_module(net, "1", input_size=8)
    assert fold_batch_norms(view) is view
