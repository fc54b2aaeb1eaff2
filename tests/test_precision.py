"""Precision as a knob: each width taken out in fp32, bf16 and int8 answers as fp32 does, within the rounding of its
precision, and the processor's units are read from what the system says."""
import pytest
import torch

from scalavit.export import to_timm
from scalavit.precision import PRECISIONS, at_precision, check_precision, cpu_flags, fast_units
from conftest import randomize
import timm


@pytest.fixture(scope='module')
def dense():
    model = randomize(timm.create_model('scala_vit_mini_patch7_28'), seed=0).eval()
    return to_timm(model, 0.5).eval()


def test_an_unknown_precision_is_one_line_naming_the_choices():
    assert check_precision('bf16') == 'bf16'
    with pytest.raises(ValueError, match="precision 'fp16': choose among fp32, bf16, int8"):
        check_precision('fp16')


def test_the_units_are_read_from_the_processors_flags(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2 '
                       'avx512f avx512_vnni\n')
    flags = cpu_flags(cpuinfo)
    assert {'avx2', 'avx512_vnni'} <= flags and 'avx512_bf16' not in flags
    assert fast_units('int8', flags) == ['avx512_vnni'] and fast_units('bf16', flags) == []
    assert fast_units('fp32', flags) == []
    assert cpu_flags(tmp_path / 'missing') == set()


@pytest.mark.parametrize('precision, tolerance', [('fp32', 0.0), ('bf16', 0.05), ('int8', 0.05)])
def test_each_precision_answers_as_fp32_within_its_rounding_and_leaves_the_width_as_it_was(dense, precision,
                                                                                             tolerance):
    x = torch.randn(8, 1, 28, 28)
    weights = {name: tensor.clone() for name, tensor in dense.state_dict().items()}
    with torch.inference_mode():
        expected = dense(x)
        logits = at_precision(dense, precision)(x)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    # relative to the logits' spread: bf16 keeps 8 bits of mantissa, int8 quantizes weights and activations
    error = (logits - expected).abs().max() / expected.abs().max()
    assert error <= tolerance, (precision, float(error))
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75
    for name, tensor in dense.state_dict().items():  # the fp32 width is untouched
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)


def test_int8_quantizes_the_linear_layers_of_a_copy(dense):
    quantized = at_precision(dense, 'int8')
    assert quantized is not dense and 'Int8' in type(quantized.blocks[0].mlp.fc1.weight).__name__
    assert type(dense.blocks[0].mlp.fc1.weight).__name__ == 'Parameter'
    assert set(PRECISIONS) == {'fp32', 'bf16', 'int8'}
