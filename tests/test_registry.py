import pytest
import timm
import torch

from conftest import randomize

NAMES = [f'scala_deit_{size}{distilled}_patch16_224'
         for size in ('tiny', 'small', 'base') for distilled in ('', '_distilled')] + [
    f'scala_vit_mini{kind}_patch7_28' for kind in ('', '_distilled', '_deep', '_deep_distilled')]
WIDTHS = {'tiny': 192, 'small': 384, 'base': 768, 'mini': 96}


def test_every_model_is_in_timms_registry():
    assert set(NAMES) <= set(timm.list_models('scala_*'))


@pytest.mark.parametrize('name', NAMES)
def test_create_model_builds_the_configuration_and_takes_the_options(name):
    model = timm.create_model(name, smallest=0.5, largest=1.0, granularity=0.125, num_classes=5, in_chans=2,
                              img_size=112 if 'deit' in name else 56, drop_path_rate=0.2)
    assert model.embed_dim == WIDTHS[name.split('_')[2]]
    assert model.distilled == ('distilled' in name)
    assert model.widths == (0.5, 0.625, 0.75, 0.875, 1.0)
    assert model.head.weight.shape == (5, model.embed_dim)
    assert model.patch_embed.proj.in_channels == 2
    assert model.pos_embed.shape[1] == model.patch_embed.num_patches + model.num_prefix_tokens
    assert model.patch_embed.num_patches == (49 if 'deit' in name else 64)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.blocks[0].drop_path1.__class__.__name__ == 'Identity'


def test_default_model_takes_fashion_mnist_shaped_input():
    model = timm.create_model('scala_vit_mini_patch7_28').eval()
    assert model.pretrained_cfg['input_size'] == (1, 28, 28)
    assert model(torch.zeros(2, 1, 28, 28), 0.25).shape == (2, 10)


def test_pretrained_weights_load_from_a_local_checkpoint_in_the_authors_format(tmp_path):
    source = randomize(timm.create_model('scala_vit_mini_patch7_28'))
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': source.state_dict(), 'epoch': 99}, path)
    model = timm.create_model('scala_vit_mini_patch7_28', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for (name, expected), actual in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(actual, expected), name
