"""CIFAR ResNet-18: 3x3 stem (no max-pool), BasicBlocks [2, 2, 2, 2], global average pool."""

from __future__ import annotations

from torch import Tensor, nn

from ._base import Net, check_choice, norm2d

OPTIONS: dict[str, object] = {"norm": "batch"}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), *norm2d(norm, c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), *norm2d(norm, c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), *norm2d(norm, c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def build(num_classes: int, in_shape: tuple[int, int, int], *, norm: str = "batch") -> Net:
    check_choice("resnet18", "norm", norm, ("batch", "instance"))
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 64, 3, padding=1, bias=False), *norm2d(norm, 64), nn.ReLU()]
    c = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c, width, stride, norm), BasicBlock(width, width, 1, norm)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Net(nn.Sequential(*layers), 512, num_classes)
