"""`train --init`: each kind of source, and each adaptation the way timm makes it."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from scalavit.checkpoint import load_checkpoint
from scalavit.cli import main
from scalavit.config import TrainConfig
from scalavit.finetune import NOT_SLIMMABLE_WARNING, initialize
from scalavit.model import FASHION_MODEL

from conftest import FAST, make_image_folder, read_log


@pytest.fixture(scope='module')
def source(trained):
    """A trained scalavit run of the default model on 3 classes, and its weights."""
    return trained / 'scala', load_checkpoint(trained / 'scala')['model']


def _initialized(source_path, name=FASHION_MODEL, **kwargs):
    lines = []
    model = timm.create_model(name, **kwargs)
    initialize(model, str(source_path), log=lines.append)
    return model.state_dict(), lines


def test_a_scalavit_run_gives_its_weights_as_they_are(source):
    run, weights = source
    state, lines = _initialized(run, num_classes=3)
    assert lines == []
    assert all(torch.equal(state[name], tensor) for name, tensor in weights.items())


def test_other_classes_reinitialise_the_classifier_and_keep_the_rest(source):
    run, weights = source
    state, lines = _initialized(run, num_classes=5)
    assert lines == ['--init: head re-initialised for 5 classes (the source has 3)']
    assert state['head.weight'].shape == (5, 96)
    assert all(torch.equal(state[name], tensor) for name, tensor in weights.items() if not name.startswith('head'))


def test_a_larger_image_resamples_the_position_embedding_as_timm_does(source):
    run, weights = source
    state, lines = _initialized(run, num_classes=3, img_size=56)
    expected = resample_abs_pos_embed(weights['pos_embed'], [8, 8], num_prefix_tokens=1)
    assert torch.equal(state['pos_embed'], expected) and state['pos_embed'].shape == (1, 65, 96)
    assert lines == ['--init: pos_embed resampled from 16 to 64 patches (8x8)']


def test_other_input_channels_adapt_the_patch_embedding_as_timm_does(source):
    run, weights = source
    state, lines = _initialized(run, num_classes=3, in_chans=3)
    expected = adapt_input_conv(3, weights['patch_embed.proj.weight'], base_chans=1)
    assert torch.equal(state['patch_embed.proj.weight'], expected)
    assert lines == ['--init: patch embedding adapted from 1 to 3 input channels']


def test_a_distilled_model_from_a_plain_source_starts_its_distillation_parts_from_the_class_ones(source):
    run, weights = source
    state, lines = _initialized(run, 'scala_vit_mini_distilled_patch7_28', num_classes=3)
    assert torch.equal(state['dist_token'], weights['cls_token'])
    assert torch.equal(state['head_dist.weight'], weights['head.weight'])
    assert torch.equal(state['pos_embed'][:, 1], weights['pos_embed'][:, 0])
    assert torch.equal(state['pos_embed'][:, 2:], weights['pos_embed'][:, 1:])
    assert 'dist_token' in lines[0]


def test_safetensors_and_timm_folders_load_with_the_warning_for_plain_models(source, tmp_path):
    _, weights = source
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / 'model.safetensors')
    for path in (tmp_path / 'model.safetensors', f'local-dir:{tmp_path}'):
        state, lines = _initialized(path, num_classes=3)
        assert all(torch.equal(state[name], tensor) for name, tensor in weights.items())
        assert lines == [f"--init {path}: {NOT_SLIMMABLE_WARNING}"]


def test_another_architecture_is_an_error_naming_the_parameter(tmp_path):
    torch.save({'model': timm.create_model('scala_deit_tiny_patch16_224', num_classes=3).state_dict()},
               tmp_path / 'deit_tiny.pth')
    with pytest.raises(ValueError, match=r"--init: parameter \S+ has shape .*, the model expects"):
        _initialized(tmp_path / 'deit_tiny.pth', num_classes=3)


def test_a_missing_source_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match='--init .*nope.pt: .*nope.pt does not exist'):
        TrainConfig(init=str(tmp_path / 'nope.pt'), output=str(tmp_path / 'run'), device='cpu')
    with pytest.raises(FileNotFoundError, match='holds none of model.safetensors'):
        TrainConfig(init=f'local-dir:{tmp_path}', output=str(tmp_path / 'run'), device='cpu')
    with pytest.raises(ValueError, match='--layer-decay must be in'):
        TrainConfig(layer_decay=1.5, output=str(tmp_path / 'run'), device='cpu')


def test_fine_tuning_from_the_command_line_with_the_backbone_frozen(source, tmp_path, capsys):
    run, weights = source
    data = make_image_folder(tmp_path / 'five', classes=5)
    assert main(['train', '--data', str(data), '--init', str(run), '--freeze-backbone', '--output',
                 str(tmp_path / 'probe'), *FAST]) == 0
    assert 'head re-initialised for 5 classes' in capsys.readouterr().out
    tuned = load_checkpoint(tmp_path / 'probe')['model']
    assert all(torch.equal(tuned[name], tensor) for name, tensor in weights.items() if not name.startswith('head'))
    assert tuned['head.weight'].shape == (5, 96)


def test_layer_decay_gives_each_block_its_own_learning_rate(source, tmp_path):
    from scalavit.train import Trainer
    data = make_image_folder(tmp_path / 'three', classes=3)
    config = TrainConfig(data=str(data), output=str(tmp_path / 'run'), device='cpu', layer_decay=0.5, workers=0,
                         batch_size=8)
    scales = sorted({group['lr_scale'] for group in Trainer(config).optimizer.param_groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** 5)  # embeddings, 4 blocks, then norm and head


def test_each_kind_of_pth_source_loads(source, tmp_path):
    _, weights = source
    torch.save({'model': weights, 'epoch': 300}, tmp_path / 'authors.pth')  # the authors' (and DeiT's) format
    torch.save(dict(weights), tmp_path / 'timm.pth')  # a bare timm state dict
    for path in (tmp_path / 'authors.pth', tmp_path / 'timm.pth'):
        state, lines = _initialized(path, num_classes=3)
        assert all(torch.equal(state[name], tensor) for name, tensor in weights.items())
        assert lines == [f"--init {path}: {NOT_SLIMMABLE_WARNING}"]


def test_a_three_channel_source_into_a_one_channel_model_and_back(source, tmp_path):
    _, weights = source
    rgb = timm.create_model(FASHION_MODEL, num_classes=3, in_chans=3)
    initialize(rgb, str(source[0]), log=lambda line: None)
    torch.save({'model': rgb.state_dict()}, tmp_path / 'rgb.pth')
    state, lines = _initialized(tmp_path / 'rgb.pth', num_classes=3, in_chans=1)
    expected = adapt_input_conv(1, rgb.state_dict()['patch_embed.proj.weight'], base_chans=3)
    assert torch.equal(state['patch_embed.proj.weight'], expected)
    assert '--init: patch embedding adapted from 3 to 1 input channels' in lines
    # 1 -> 3 repeats the channel scaled by 1/3, 3 -> 1 sums them: the round trip gives the original weights back
    torch.testing.assert_close(state['patch_embed.proj.weight'], weights['patch_embed.proj.weight'])


def test_every_width_of_a_fine_tuned_run_evaluates(source, tmp_path):
    from scalavit.evaluate import evaluate
    run, _ = source
    data = make_image_folder(tmp_path / 'five', classes=5)
    assert main(['train', '--data', str(data), '--init', str(run), '--output', str(tmp_path / 'tuned'), *FAST]) == 0
    report = evaluate([str(tmp_path / 'tuned')], latency_repeats=1, throughput_repeats=1)
    assert [row['width'] for row in report['rows']] == list(timm.create_model(FASHION_MODEL).widths)
    final = read_log(tmp_path / 'tuned')[-1]  # what training measured on the same images after its last epoch
    assert all(row['top1'] == pytest.approx(final[f"top1@{row['width']:g}"], abs=1e-6) for row in report['rows'])


def test_timm_pretrained_from_a_file_takes_the_same_adaptations(source):
    """One load path: timm.create_model(pretrained=True) from a local file adapts as --init does (the file's number
    of classes given in the overlay, as timm expects of a local file)."""
    run, weights = source
    for kwargs in (dict(num_classes=3), dict(num_classes=5, img_size=56)):
        overlay = dict(file=str(run / 'last.pt'), num_classes=3)
        model = timm.create_model(FASHION_MODEL, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        expected, _ = _initialized(run, **kwargs)
        state = model.state_dict()
        same = [name for name in expected if not name.startswith('head')]
        assert [name for name in same if not torch.equal(state[name], expected[name])] == []
        if kwargs['num_classes'] == 3:
            assert [name for name, tensor in weights.items() if not torch.equal(state[name], tensor)] == []
        else:
            assert state['head.weight'].shape == (5, 96)
