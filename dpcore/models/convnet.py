"""MTT / DC ConvNet: depth x [conv3x3 -> norm -> ReLU -> pool], then a linear classifier.

Unlike MTT, 28x28 inputs are not padded to 32x32; the classifier's input size follows ``in_shape``.
"""

from __future__ import annotations

from torch import nn

from ._base import NORMS, Net, check_choice, check_positive_int, flat_dim, norm2d, pooled

OPTIONS: dict[str, object] = {"width": 128, "depth": 3, "norm": "instance", "pooling": "avg"}
POOLINGS = ("avg", "max", "none")


def build(num_classes: int, in_shape: tuple[int, int, int], *, width: int = 128, depth: int = 3,
          norm: str = "instance", pooling: str = "avg") -> Net:
    check_positive_int("convnet", "width", width)
    check_positive_int("convnet", "depth", depth)
    check_choice("convnet", "norm", norm, NORMS)
    check_choice("convnet", "pooling", pooling, POOLINGS)
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, kernel_size=3, padding=1), *norm2d(norm, width), nn.ReLU()]
        if pooling == "avg":
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
        elif pooling == "max":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        c = width
    times = 0 if pooling == "none" else depth
    dim = flat_dim("convnet", width, pooled(h, times), pooled(w, times))
    return Net(nn.Sequential(*layers, nn.Flatten()), dim, num_classes)
