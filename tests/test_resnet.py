"""The paper's networks: shapes, the θ/φ split and the bias-free head."""
import pytest
import torch

from resnet import MLP, build_network
from utils.errors import ConfigError


@pytest.mark.parametrize("dataset,shape,in_features", [("mnist", (1, 28, 28), 784),
                                                      ("digits", (1, 8, 8), 64)])
def test_mlp_784_400_400_with_bias_free_head(dataset, shape, in_features):
    net = build_network(dataset, shape, 10)
    assert isinstance(net, MLP)
    linears = [m for m in net.features if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(in_features, 400), (400, 400)]
    assert net.head.bias is None and tuple(net.head.weight.shape) == (10, 400)
    assert net(torch.randn(5, *shape)).shape == (5, 10)
    assert net.features(torch.randn(5, *shape)).shape == (5, 400)


def test_head_rows_are_the_logits():
    net = build_network("digits", (1, 8, 8), 4)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(net(x), net.features(x) @ net.head.weight.T)


def test_unknown_network():
    with pytest.raises(ConfigError, match="no network is defined for 'cifar100'"):
        build_network("cifar100", (3, 32, 32), 100)
