"""The timm model interface on every scala_* model, mirroring the checks of timm's own tests/test_models.py.

Each test names the timm test it mirrors. Inputs are each model's own (fixed) input size, as timm's tests use for
models with ``fixed_input_size``.
"""
import math

import pytest
import timm
import torch

import scalavit  # noqa: F401  (registers the models)
from scalavit.widths import scaled

NAMES = timm.list_models('scala_*')


def _inputs(model, batch_size=1):
    torch.manual_seed(0)
    return torch.randn(batch_size, *model.pretrained_cfg['input_size'])


@pytest.mark.parametrize('name', NAMES)
def test_default_cfgs_non_std(name):
    """timm: test_model_default_cfgs_non_std."""
    model = timm.create_model(name).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    x = _inputs(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[-1] == model.num_features and pre_logits.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape and pooled.shape[1] == model.head_hidden_size
        assert timm.create_model(name, num_classes=0).eval()(x).shape[-1] == model.num_features
    classifiers = model.pretrained_cfg['classifier']
    for classifier in (classifiers,) if isinstance(classifiers, str) else classifiers:
        assert f'{classifier}.weight' in state_dict
    assert f"{model.pretrained_cfg['first_conv']}.weight" in state_dict


def test_reset_classifier_reads_every_width_and_refuses_other_pooling():
    model = timm.create_model('scala_vit_mini_patch7_28')
    model.reset_classifier(3)
    x = _inputs(model, 2)
    for width in (0.25, 0.5, 1.0):
        assert model.eval()(x, width).shape == (2, 3)
    with pytest.raises(ValueError, match='class token only'):
        model.reset_classifier(3, 'avg')


@pytest.mark.parametrize('name', NAMES)
def test_forward_intermediates(name):
    """timm: test_model_forward_intermediates (and its grad-checkpointing part)."""
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3
    x = _inputs(model)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        assert len(intermediates) == len(channels)
        size = x.shape[-2:]
        for expected, reduction, feature in zip(channels, reductions, intermediates):
            assert feature.shape[1] == expected and feature.shape[0] == 1
            assert feature.shape[2] <= math.ceil(size[0] / reduction) + 1
            assert feature.shape[3] <= math.ceil(size[1] / reduction) + 1
            assert not torch.isnan(feature).any()
        assert torch.allclose(output, model.forward_features(x))
        model.set_grad_checkpointing()
        assert torch.allclose(model.forward_intermediates(x)[0], output, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_forward_intermediates_features(name):
    """timm: test_model_forward_intermediates_features (the features_only backbone)."""
    backbone = timm.create_model(name, features_only=True).eval()
    channels, reductions = backbone.feature_info.channels(), backbone.feature_info.reduction()
    x = _inputs(backbone.model)
    with torch.no_grad():
        outputs = backbone(x)
    assert len(outputs) == len(channels)
    for expected, reduction, feature in zip(channels, reductions, outputs):
        assert feature.shape[1] == expected
        assert feature.shape[2] <= math.ceil(x.shape[-2] / reduction) + 1
        assert not torch.isnan(feature).any()


def test_a_features_only_backbone_keeps_the_width_a_forward_argument():
    backbone = timm.create_model('scala_deit_tiny_patch16_224', features_only=True, out_indices=(3, 7, 11)).eval()
    model = backbone.model
    x = _inputs(model)
    with torch.no_grad():
        for width in (0.25, 0.5, 1.0):
            maps = backbone(x, width=width)
            assert [m.shape[1] for m in maps] == [scaled(model.embed_dim, width)] * 3
            assert all(m.shape[2:] == (14, 14) for m in maps)
        with pytest.raises(ValueError, match='grid'):
            backbone(x, width=0.3)


def test_intermediates_at_a_width_are_that_widths_features():
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    x = _inputs(model, 2)
    with torch.no_grad():
        for width in (0.25, 0.625, 1.0):
            final, maps = model.forward_intermediates(x, indices=[1, 3], width=width, output_fmt='NLC')
            assert torch.equal(final, model.forward_features(x, width))
            assert [m.shape for m in maps] == [(2, 16, scaled(96, width))] * 2


def test_prune_intermediate_layers_keeps_what_the_indices_need():
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    x = _inputs(model)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and len(model.blocks) == 2 and model.num_classes == 0
        assert all(torch.equal(a, b) for a, b in zip(full, model.forward_intermediates(
            x, indices=[0, 1], intermediates_only=True)))


@pytest.mark.parametrize('width', [0.25, 0.5, 1.0])
def test_gradient_checkpointing_gives_the_plain_runs_gradients(width):
    torch.manual_seed(0)
    plain = timm.create_model('scala_vit_mini_patch7_28', drop_path_rate=0.0).train()
    checkpointed = timm.create_model('scala_vit_mini_patch7_28', drop_path_rate=0.0).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    x = _inputs(plain, 4)
    for model in (plain, checkpointed):
        model(x, width).logsumexp(-1).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is None:
            assert b.grad is None, name
        else:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_layer_decay_groups_the_blocks():
    from timm.optim import param_groups_layer_decay
    model = timm.create_model('scala_vit_mini_patch7_28')
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in groups})
    assert len(scales) == model.depth + 2  # the embeddings, each block, the final norm and head


def _fx_model(model, train=False):
    """timm's _create_fx_model: torchvision's feature extractor with timm's tracer settings, returning the output."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return_nodes = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-names.index(name)] for name in output_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('name', NAMES)
def test_forward_fx(name):
    """timm: test_model_forward_fx."""
    model = timm.create_model(name).eval()
    x = _inputs(model)
    with torch.inference_mode():
        expected = model(x)
        traced = _fx_model(model)
        assert torch.equal(torch.cat(tuple(traced(x).values())), expected)


@pytest.mark.parametrize('name', ['scala_vit_mini_patch7_28', 'scala_vit_mini_distilled_patch7_28'])
def test_backward_fx(name):
    """timm: test_model_backward_fx, on the small models (the 224 ones only cost time here)."""
    model = timm.create_model(name, num_classes=42).train()
    traced = _fx_model(model, train=True)
    outputs = torch.cat(tuple(traced(_inputs(model, 2)).values()))
    outputs.mean().backward()
    assert outputs.shape[-1] == 42
    assert all(p.grad is not None for p in traced.parameters())


def test_a_traced_model_answers_at_every_width_and_refuses_what_the_eager_one_refuses():
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    traced = torch.fx.symbolic_trace(model)
    x = _inputs(model, 2)
    with torch.no_grad():
        for width in model.widths:
            assert torch.equal(traced(x, width), model(x, width))
        with pytest.raises(ValueError, match='grid'):
            traced(x, 0.3)
        with pytest.raises(AssertionError, match='does not fit the model'):
            traced(torch.randn(2, 1, 32, 32))


def test_torch_export_of_a_width_gives_that_widths_logits():
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    x = _inputs(model, 2)
    program = torch.export.export(model, (x,), kwargs={'width': 0.5})
    with torch.no_grad():
        assert torch.equal(program.module()(x, width=0.5), model(x, 0.5))


@pytest.mark.parametrize('name', NAMES)
def test_forward_torchscript(name):
    """timm: test_model_forward_torchscript (a distilled model scripts to the mean of its two heads, as timm's)."""
    model = timm.create_model(name).eval()
    x = _inputs(model)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', ['scala_vit_mini_patch7_28', 'scala_vit_mini_distilled_patch7_28'])
def test_forward_fx_torchscript(name):
    """timm: test_model_forward_fx_torchscript."""
    model = timm.create_model(name).eval()
    x = _inputs(model)
    scripted = torch.jit.script(_fx_model(model))
    with torch.inference_mode():
        assert torch.equal(torch.cat(tuple(scripted(x).values())), model(x))


def test_a_scripted_model_saved_and_loaded_answers_at_every_width_and_refuses_what_the_eager_one_refuses(tmp_path):
    model = timm.create_model('scala_vit_mini_patch7_28', granularity=1 / 8).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / 'model.pt')
    loaded = torch.jit.load(tmp_path / 'model.pt')
    x = _inputs(model, 2)
    with torch.no_grad():
        for width in model.widths:
            torch.testing.assert_close(loaded(x, width), model(x, width), atol=1e-5, rtol=1e-5)
        with pytest.raises(torch.jit.Error, match=r"ValueError: width 0\.29+ is not on this model's grid"):
            loaded(x, 0.3)
        with pytest.raises(torch.jit.Error, match='does not fit the model'):
            loaded(torch.randn(2, 1, 32, 32))


def test_forward_head_keeps_timms_argument_order():
    """timm's forward_head(x, pre_logits): a positional pre_logits means pre_logits, the width comes after it."""
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    x = torch.randn(2, 1, 28, 28)
    features = model.forward_features(x)
    assert model.forward_head(features, True).shape == (2, 96)
    half = model.forward_head(model.forward_features(x, 0.5), False, 0.5)
    assert torch.equal(half, model(x, 0.5))
    assert torch.equal(model.forward_head(features, True), model.forward_head(features, pre_logits=True))
