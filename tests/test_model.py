import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import randomize, tiny_model
from scalavit import SlimmableVisionTransformer, to_timm


def reference_forward(model, x, width, first_channels):
    """SPEC sections 1 and 3 written out naively: explicit indices, explicit softmax attention."""
    D, H = model.embed_dim, model.num_heads
    d, h = int(width * D), int(width * model.mlp_hidden_dim)
    e = slice(0, d) if first_channels else slice(D - d, D)
    q = slice(0, 3 * d) if first_channels else slice(3 * D - 3 * d, 3 * D)
    m = slice(0, h) if first_channels else slice(model.mlp_hidden_dim - h, model.mlp_hidden_dim)
    eps = model.norm.eps
    p = dict(model.named_parameters())

    x = F.conv2d(x, p['patch_embed.proj.weight'][e], p['patch_embed.proj.bias'][e], stride=model.patch_embed.proj.stride)
    x = x.flatten(2).transpose(1, 2)
    tokens = [p['cls_token']] + ([p['dist_token']] if model.distilled else [])
    x = torch.cat([t[:, :, e].expand(len(x), -1, -1) for t in tokens] + [x], 1) + p['pos_embed'][:, :, e]
    B, N, _ = x.shape
    for i in range(model.depth):
        b = f'blocks.{i}.'
        y = F.layer_norm(x, (d,), p[b + 'norm1.weight'][e], p[b + 'norm1.bias'][e], eps)
        qkv = y @ p[b + 'attn.qkv.weight'][q, e].T + p[b + 'attn.qkv.bias'][q]
        qq, kk, vv = qkv.reshape(B, N, 3, H, d // H).permute(2, 0, 3, 1, 4)
        attn = (qq @ kk.transpose(-2, -1) * (D // H) ** -0.5).softmax(-1)
        y = (attn @ vv).transpose(1, 2).reshape(B, N, d)
        x = x + y @ p[b + 'attn.proj.weight'][e, e].T + p[b + 'attn.proj.bias'][e]
        y = F.layer_norm(x, (d,), p[b + 'norm2.weight'][e], p[b + 'norm2.bias'][e], eps)
        y = F.gelu(y @ p[b + 'mlp.fc1.weight'][m, e].T + p[b + 'mlp.fc1.bias'][m])
        x = x + y @ p[b + 'mlp.fc2.weight'][e, m].T + p[b + 'mlp.fc2.bias'][e]
    x = F.layer_norm(x, (d,), p['norm.weight'][e], p['norm.bias'][e], eps)
    logits = x[:, 0] @ p['head.weight'][:, e].T + p['head.bias']
    if model.distilled:
        logits = (logits + x[:, 1] @ p['head_dist.weight'][:, e].T + p['head_dist.bias']) / 2
    return logits


@pytest.mark.parametrize('distilled', [False, True])
@pytest.mark.parametrize('norm_eps', [1e-6, 1e-5])
@torch.no_grad()
def test_every_width_matches_the_spec_written_out(images, distilled, norm_eps):
    model = tiny_model(distilled=distilled, norm_eps=norm_eps)
    for width in model.widths:
        first = width in (model.grid.smallest, model.grid.largest)
        expected = reference_forward(model, images, width, first_channels=first)
        out = model(images, width=width)
        assert out.shape == (4, 7)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_without_isolated_activation_every_width_takes_the_first_channels(images):
    model = tiny_model(isolated_activation=False)
    for width in model.widths:
        torch.testing.assert_close(model(images, width), reference_forward(model, images, width, True),
                                   atol=1e-5, rtol=1e-5)


# Which axes of each parameter are sliced, and by which dimension (SPEC section 1).
SLICED_AXES = {
    'patch_embed.proj.weight': {0: 'embed'}, 'patch_embed.proj.bias': {0: 'embed'},
    'cls_token': {2: 'embed'}, 'dist_token': {2: 'embed'}, 'pos_embed': {2: 'embed'},
    'norm1.weight': {0: 'embed'}, 'norm1.bias': {0: 'embed'}, 'norm2.weight': {0: 'embed'}, 'norm2.bias': {0: 'embed'},
    'norm.weight': {0: 'embed'}, 'norm.bias': {0: 'embed'},
    'attn.qkv.weight': {0: 'qkv', 1: 'embed'}, 'attn.qkv.bias': {0: 'qkv'},
    'attn.proj.weight': {0: 'embed', 1: 'embed'}, 'attn.proj.bias': {0: 'embed'},
    'mlp.fc1.weight': {0: 'hidden', 1: 'embed'}, 'mlp.fc1.bias': {0: 'hidden'},
    'mlp.fc2.weight': {0: 'embed', 1: 'hidden'}, 'mlp.fc2.bias': {0: 'embed'},
    'head.weight': {1: 'embed'}, 'head_dist.weight': {1: 'embed'},
}


@torch.no_grad()
def perturb_outside(model, width, keep_first):
    """Add noise to every parameter entry outside the block of the first (or last) channels ``width`` would use."""
    counts = {'embed': int(width * model.embed_dim), 'hidden': int(width * model.mlp_hidden_dim)}
    counts['qkv'] = 3 * counts['embed']
    for name, param in model.named_parameters():
        axes = next((a for suffix, a in SLICED_AXES.items() if name == suffix or name.endswith('.' + suffix)), {})
        inside = torch.ones_like(param, dtype=torch.bool)
        for axis, kind in axes.items():
            index = torch.arange(param.shape[axis])
            used = index < counts[kind] if keep_first else index >= param.shape[axis] - counts[kind]
            inside &= used.reshape([-1 if a == axis else 1 for a in range(param.dim())])
        param.add_(torch.randn_like(param) * ~inside)


def test_smallest_width_ignores_the_last_channels_and_depends_on_the_first(images):
    model = tiny_model()
    smallest = model.grid.smallest
    before = model(images, smallest)
    perturb_outside(model, smallest, keep_first=True)
    torch.testing.assert_close(model(images, smallest), before, atol=0, rtol=0)
    perturb_outside(model, smallest, keep_first=False)  # now the first channels move too
    assert not torch.allclose(model(images, smallest), before, atol=1e-3)


def test_intermediate_width_ignores_the_first_channels(images):
    model = tiny_model()
    width = 0.5
    before = model(images, width)
    perturb_outside(model, width, keep_first=False)
    torch.testing.assert_close(model(images, width), before, atol=0, rtol=0)
    perturb_outside(model, width, keep_first=True)
    assert not torch.allclose(model(images, width), before, atol=1e-3)


def test_off_grid_width_is_rejected_with_the_valid_widths(images):
    model = tiny_model()
    with pytest.raises(ValueError, match=r'width 0.3 is not on .*valid widths are \[0.25, 0.3125'):
        model(images, width=0.3)
    with pytest.raises(ValueError, match='not on'):
        model(images, width=1.5)


def test_a_width_that_is_not_a_number_is_a_type_error(images):
    with pytest.raises(TypeError, match=r"width must be a number on the grid .*got str '0.5'"):
        tiny_model()(images, width='0.5')


@pytest.mark.parametrize('shape', [(2, 3, 40, 40), (2, 3, 24, 24), (2, 3, 32, 40), (2, 1, 32, 32), (3, 32, 32)])
def test_an_input_the_model_does_not_take_is_refused_as_the_exported_timm_model_refuses_it(shape):
    model = tiny_model()
    x = torch.randn(*shape)
    with pytest.raises(AssertionError, match=r'does not fit the model, which takes images of 3x32x32'):
        model(x, 0.5)
    with pytest.raises((AssertionError, RuntimeError, ValueError)):  # timm's own checks, the same width deployed
        to_timm(model, 0.5)(x)


def test_grid_that_does_not_divide_into_heads_fails_at_construction():
    with pytest.raises(ValueError, match=r'width 0.25 of embed_dim 100 gives 25 channels.*4 heads'):
        SlimmableVisionTransformer(embed_dim=100, num_heads=4, depth=1)


def test_default_width_is_the_largest(images):
    model = tiny_model(largest=0.75, granularity=0.125)
    assert model.widths == (0.25, 0.375, 0.5, 0.625, 0.75)
    torch.testing.assert_close(model(images), model(images, 0.75))


@pytest.mark.parametrize('name', ['deit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224'])
@torch.no_grad()
def test_timm_deit_state_dict_loads_strictly_and_gives_timm_logits(name):
    reference = randomize(timm.create_model(name)).eval()
    model = timm.create_model('scala_' + name).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    expected = reference(x)
    assert expected.abs().max() > 1  # the comparison below is not between near-zero numbers
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_distilled_model_returns_both_heads_in_training_and_their_mean_in_eval(images):
    model = tiny_model(distilled=True)
    for width in (0.25, 0.5, 1.0):
        model.train()
        cls_logits, dist_logits = model(images, width)
        assert cls_logits.shape == dist_logits.shape == (4, 7)
        assert not torch.allclose(cls_logits, dist_logits)
        model.eval()
        torch.testing.assert_close(model(images, width), (cls_logits + dist_logits) / 2)


def test_gradients_reach_only_the_channels_a_width_uses(images):
    model = tiny_model().train()
    model(images, 0.5).sum().backward()
    grad = model.blocks[0].attn.proj.weight.grad
    d = int(0.5 * model.embed_dim)
    assert grad[-d:, -d:].abs().sum() > 0
    assert grad[:-d].abs().sum() == 0 and grad[:, :-d].abs().sum() == 0
