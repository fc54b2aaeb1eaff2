import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from conftest import randomize, tiny_model
from scalavit import dense_model_args, dense_state_dict, to_timm


@torch.no_grad()
def assert_every_width_is_a_dense_timm_model(model, x):
    model.eval()
    for width in model.widths:
        dense = to_timm(model, width).eval()
        assert type(dense) is (VisionTransformerDistilled if model.distilled else VisionTransformer)
        assert dense.embed_dim == model.channels(width).dim
        expected = model(x, width)
        assert (dense(x) - expected).abs().max() <= 1e-5, width


@pytest.mark.parametrize('distilled', [False, True])
def test_every_width_of_deit_small_equals_a_dense_timm_vit(distilled):
    name = 'scala_deit_small_distilled_patch16_224' if distilled else 'scala_deit_small_patch16_224'
    model = randomize(timm.create_model(name, depth=2))
    assert_every_width_is_a_dense_timm_model(model, torch.randn(2, 3, 224, 224))


def test_every_width_of_the_default_model_equals_a_dense_timm_vit():
    model = randomize(timm.create_model('scala_vit_mini_patch7_28'))
    assert_every_width_is_a_dense_timm_model(model, torch.randn(3, 1, 28, 28))


def test_every_width_equals_a_dense_timm_vit_without_isolated_activation_and_with_eps_1e5(images):
    assert_every_width_is_a_dense_timm_model(tiny_model(isolated_activation=False), images)
    assert_every_width_is_a_dense_timm_model(tiny_model(norm_eps=1e-5), images)


def test_dense_weights_are_the_chosen_channels_with_the_attention_scale_folded_into_the_queries():
    model = tiny_model()
    D, H = model.embed_dim, model.num_heads
    for width, rows in ((0.25, slice(0, 36)), (0.5, slice(3 * D - 72, 3 * D))):
        d = int(width * D)
        state = dense_state_dict(model, width)
        qkv = model.blocks[1].attn.qkv
        expected = qkv.weight[rows, :d] if width == 0.25 else qkv.weight[rows, D - d:]
        expected = expected.clone()
        expected[:d] *= ((d // H) / (D // H)) ** 0.5
        torch.testing.assert_close(state['blocks.1.attn.qkv.weight'], expected, atol=0, rtol=0)
        assert all(t.is_contiguous() for t in state.values())
        assert dense_model_args(model, width)['embed_dim'] == d


def test_dense_state_dict_is_a_copy():
    model = tiny_model()
    state = dense_state_dict(model, 1.0)
    state['head.weight'].zero_()
    assert model.head.weight.abs().sum() > 0
