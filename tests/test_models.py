import pytest
import torch
from torch import nn

from dpcore.errors import ConfigError
from dpcore.models import MODEL_NAMES, build_model, model_options


def prunable(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize(
    ("name", "classes", "shape", "expected"),
    [
        ("convnet", 10, (3, 32, 32), 318_848),
        ("convnet", 100, (3, 32, 32), 503_168),
        ("alexnet", 10, (3, 32, 32), 1_871_232),
        ("lenet-300-100", 10, (1, 28, 28), 266_200),
    ],
)
def test_pinned_prunable_counts(name, classes, shape, expected):
    assert prunable(build_model(name, num_classes=classes, in_shape=shape)) == expected


CASES = [(n, (3, 32, 32)) for n in MODEL_NAMES] + [("convnet", (1, 28, 28)), ("lenet-300-100", (1, 28, 28))]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_embed_classifier(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_shape=shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    assert logits.shape == (2, 7)
    assert emb.shape == (2, model.classifier.in_features)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert isinstance(model.classifier, nn.Linear) and linears[-1] is model.classifier
    torch.testing.assert_close(model.classifier(emb), logits)
    weighted = {type(m) for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    assert weighted <= {nn.Conv2d, nn.Linear, nn.GroupNorm, nn.BatchNorm2d}


@pytest.mark.parametrize("name", ["convnet", "conv2", "alexnet"])
def test_same_seed_same_parameters(name):
    def params():
        torch.manual_seed(123)
        return [p.detach().clone() for p in build_model(name, num_classes=10, in_shape=(3, 32, 32)).parameters()]

    for a, b in zip(params(), params(), strict=True):
        assert torch.equal(a, b)


def test_convnet_options():
    assert model_options("convnet") == {"width": 128, "depth": 3, "norm": "instance", "pooling": "avg"}
    m = build_model("convnet", num_classes=10, in_shape=(3, 32, 32), width=8, depth=2, norm="batch", pooling="max")
    assert m.classifier.in_features == 8 * 8 * 8
    m = build_model("convnet", num_classes=10, in_shape=(3, 32, 32), width=4, depth=1, norm="none", pooling="none")
    assert m.classifier.in_features == 4 * 32 * 32


def test_unknown_name_or_option_raises_config_error():
    with pytest.raises(ConfigError, match="allowed"):
        build_model("resnet50", num_classes=10, in_shape=(3, 32, 32))
    with pytest.raises(ConfigError, match="width"):
        build_model("convnet", num_classes=10, in_shape=(3, 32, 32), widht=64)
    with pytest.raises(ConfigError, match="instance"):
        build_model("vgg11", num_classes=10, in_shape=(3, 32, 32), norm="layer")
    with pytest.raises(ConfigError):
        model_options("nope")
    with pytest.raises(ConfigError, match="too small"):
        build_model("vgg11", num_classes=10, in_shape=(1, 28, 28))
