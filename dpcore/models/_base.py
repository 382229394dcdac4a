"""Shared pieces: the feature-extractor + linear-classifier base class and small layer helpers."""

from __future__ import annotations

from torch import Tensor, nn

from dpcore.errors import ConfigError


class Net(nn.Module):
    """``features`` maps an image batch to flat embeddings; ``classifier`` (the output layer) maps
    embeddings to logits. ``classifier`` is registered last, so it is the last ``nn.Linear``."""

    def __init__(self, features: nn.Module, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feat_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def check_choice(model: str, option: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"model {model!r}: {option}={value!r} is not allowed; choose one of: {', '.join(allowed)}"
        )


def check_positive_int(model: str, option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {model!r}: {option}={value!r} must be a positive integer")


NORMS = ("instance", "batch", "none")


def norm2d(kind: str, channels: int) -> list[nn.Module]:
    """A per-channel normalisation layer ("instance" = GroupNorm with one group per channel)."""
    if kind == "instance":
        return [nn.GroupNorm(channels, channels, affine=True)]
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    return []


def pooled(size: int, times: int) -> int:
    """Spatial size after ``times`` 2x2/stride-2 poolings (floor, as PyTorch does)."""
    for _ in range(times):
        size //= 2
    return size


def flat_dim(model: str, channels: int, h: int, w: int) -> int:
    if h < 1 or w < 1:
        raise ConfigError(f"model {model!r}: input images are too small (features shrink to {h}x{w})")
    return channels * h * w
