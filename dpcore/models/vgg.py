"""CIFAR VGG-11: 3x3 convs with norm and ReLU, five 2x2 max-pools, one linear classifier."""

from __future__ import annotations

from torch import nn

from ._base import NORMS, Net, check_choice, flat_dim, norm2d, pooled

OPTIONS: dict[str, object] = {"norm": "batch"}
CFG_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def build(num_classes: int, in_shape: tuple[int, int, int], *, norm: str = "batch") -> Net:
    check_choice("vgg11", "norm", norm, NORMS)
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for v in CFG_VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), *norm2d(norm, v), nn.ReLU()]
            c = v
    pools = CFG_VGG11.count("M")
    dim = flat_dim("vgg11", c, pooled(h, pools), pooled(w, pools))
    return Net(nn.Sequential(*layers, nn.Flatten()), dim, num_classes)
