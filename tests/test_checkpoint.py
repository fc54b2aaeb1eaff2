import pytest
import torch

from conftest import tiny_model
from scalavit.checkpoint import load_checkpoint, load_weights, save_atomically


def test_save_is_atomic_and_reads_back(tmp_path):
    path = tmp_path / 'last.pt'
    save_atomically({'model': {'w': torch.arange(3)}, 'config': {}, 'model_kwargs': {}}, path)
    save_atomically({'model': {'w': torch.arange(4)}, 'config': {}, 'model_kwargs': {}}, path)  # replaces, never appends
    assert torch.equal(load_checkpoint(tmp_path)['model']['w'], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


def test_files_that_are_not_training_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_checkpoint(tmp_path / 'nothing.pt')
    (tmp_path / 'text.pt').write_text('hello')
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        load_checkpoint(tmp_path / 'text.pt')
    torch.save({'state_dict': {}}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='holds neither a scalavit checkpoint nor a state dict'):
        load_checkpoint(tmp_path / 'other.pt')


def test_load_weights_names_the_first_parameter_that_does_not_fit():
    model = tiny_model()
    state = model.state_dict()
    with pytest.raises(ValueError, match=r'parameter head.weight has shape \(3, 48\), the model expects \(7, 48\)'):
        load_weights(model, dict(state, **{'head.weight': torch.zeros(3, 48)}), 'test')
    with pytest.raises(ValueError, match='parameter extra does not exist'):
        load_weights(model, dict(state, extra=torch.zeros(1)), 'test')
    del state['norm.bias']
    with pytest.raises(ValueError, match=r'parameter norm.bias is missing \(1 in all\)'):
        load_weights(model, state, 'test')
