"""Compiled widths (torch.export + AOTInductor, and torch.compile for serving): the eager logits at every width,
cached, and behind --compile."""
import copy
import json
import shutil
import threading

import httpx
import pytest
import torch

from conftest import FAST, make_image_folder, randomize
from scalavit import compiled
from scalavit.checkpoint import load_model
from scalavit.cli import main
from scalavit.compiled import CompiledWidths, JitCompiledWidths
from scalavit.serve.runner import Runner
from test_serve_server import Server

pytestmark = pytest.mark.slow  # compiles every width (minutes): scripts/test.sh --fast skips it


@pytest.fixture(scope='module')
def cache(tmp_path_factory, monkeypatch_module):
    """One compile cache for the module: each width compiles once, then every test loads it."""
    folder = tmp_path_factory.mktemp('compile-cache')
    monkeypatch_module.setenv('SCALAVIT_CACHE_DIR', str(folder))
    return folder


@pytest.fixture(scope='module')
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A trained default model on a grid of three widths (compiling is seconds per width)."""
    root = tmp_path_factory.mktemp('compiled')
    folder = make_image_folder(root / 'data')
    assert main(['train', '--data', str(folder), '--output', str(root / 'run'), '--smallest', '0.5',
                 '--granularity', '1/4', *FAST]) == 0
    return root / 'run'


@pytest.fixture(scope='module')
def model(run):
    return load_model(str(run))[0].eval()


def assert_eager_logits(compiled_widths, model):
    """The compiled widths answer as the model at every width, for batches of 1, 3, 64 and 0 images."""
    with torch.no_grad():
        for batch in (1, 3, 64):
            x = torch.randn(batch, 1, 28, 28)
            for width in model.widths:
                torch.testing.assert_close(compiled_widths(x, width), model(x, width), atol=1e-5, rtol=1e-5)
        assert compiled_widths(torch.randn(0, 1, 28, 28), 0.5).shape == (0, model.num_classes)


def test_compiled_widths_give_the_eager_logits_at_every_width_and_batch(model, cache):
    built_before = {path.name for path in cache.glob('*.pt2')}  # by another test of this module, if it ran first
    compiled_widths = CompiledWidths(model, progress=False)
    assert set(compiled_widths.widths) == set(model.widths) == {0.5, 0.75, 1.0}
    assert len(list(cache.glob('*.pt2'))) >= 3
    assert all(compiled_widths.cached[w] == any(f'width-{w:g}-' in name for name in built_before)
               for w in model.widths)
    assert_eager_logits(compiled_widths, model)


def test_a_second_start_loads_every_width_from_the_cache_even_for_other_weights(model, cache):
    CompiledWidths(model, progress=False)  # compiled here, or by the test before
    other = randomize(copy.deepcopy(model), seed=3).eval()  # another checkpoint of the same architecture
    again = CompiledWidths(other, progress=False)
    assert all(again.cached.values())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for width in other.widths:
            torch.testing.assert_close(again(x, width), other(x, width), atol=1e-5, rtol=1e-5)
        other.head.bias.add_(1.0)  # in place: seen, no copy of any weight was taken
        torch.testing.assert_close(again(x, 0.75), other(x, 0.75), atol=1e-5, rtol=1e-5)


def test_a_damaged_cache_entry_is_built_again(model, cache):
    CompiledWidths(model, widths=[0.5], progress=False)
    for package in cache.glob('width-0.5-*.pt2'):
        package.write_bytes(b'not a package')
    rebuilt = CompiledWidths(model, widths=[0.5], progress=False)
    assert rebuilt.cached == {0.5: False}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, 0.5), model(x, 0.5), atol=1e-5, rtol=1e-5)


def test_compiled_widths_refuse_what_the_model_refuses(model, cache):
    compiled_widths = CompiledWidths(model, widths=[0.5], progress=False)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="width 0.3 is not on this model's grid"):
        compiled_widths(x, 0.3)
    with pytest.raises(ValueError, match='width 1.0 was not compiled'):
        compiled_widths(x)
    with pytest.raises(AssertionError, match='does not fit the model'):
        compiled_widths(torch.randn(2, 1, 32, 32), 0.5)
    with pytest.raises(ValueError, match='torch.float64'):
        compiled_widths(x.double(), 0.5)
    with pytest.raises(ValueError, match='eval mode'):
        CompiledWidths(model.train(), progress=False)
    model.eval()


def test_eval_and_pick_with_compile_measure_the_compiled_widths_with_the_eager_accuracy(run, tmp_path, cache, capsys):
    eager, compiled_run = tmp_path / 'eager', tmp_path / 'compiled'
    shutil.copytree(run, eager)
    shutil.copytree(run, compiled_run)
    assert main(['eval', str(eager), '--latency-repeats', '3']) == 0
    assert main(['eval', str(compiled_run), '--compile', '--latency-repeats', '3']) == 0
    assert 'fp32, compiled' in capsys.readouterr().out
    eager_report = json.loads((eager / 'results.json').read_text())
    compiled_report = json.loads((compiled_run / 'results.json').read_text())
    assert compiled_report['meta']['compiled'] and not eager_report['meta']['compiled']
    assert [r['top1'] for r in compiled_report['rows']] == [r['top1'] for r in eager_report['rows']]
    # pick on the eager report with --compile measures the compiled widths now, and says so
    assert main(['pick', str(eager), '--latency-ms', '1e6', '--compile', '--repeats', '3']) == 0
    out = capsys.readouterr().out
    assert 'measured now on' in out and 'threads, compiled, batch 1' in out
    assert main(['pick', str(compiled_run), '--latency-ms', '1e6', '--compile']) == 0
    out = capsys.readouterr().out
    assert 'measured by `scalavit eval`' in out and 'threads, compiled, batch 1' in out


def test_closing_compiled_widths_removes_their_unpacked_packages(model, cache, tmp_path, monkeypatch):
    monkeypatch.setenv('TMPDIR', str(tmp_path))  # where AOTInductor unpacks each package it loads
    compiled_widths = CompiledWidths(model, progress=False)
    assert len(list(tmp_path.glob('aotinductor_*'))) == 3
    compiled_widths.close()
    assert not list(tmp_path.glob('aotinductor_*'))
    with pytest.raises(ValueError, match='closed'):
        compiled_widths(torch.randn(2, 1, 28, 28), 0.5)


def test_jit_compiled_widths_give_the_eager_logits_at_every_batch_size_from_one_graph_a_width(model, cache):
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    with torch._dynamo.config.patch(recompile_limit=1):  # the widths make room for themselves
        jit = JitCompiledWidths(model, progress=False)
    assert set(jit.widths) == {0.5, 0.75, 1.0}
    assert_eager_logits(jit, model)
    with torch.inference_mode():
        x = torch.randn(5, 1, 28, 28)  # an inference tensor, as the server's
        torch.testing.assert_close(jit(x, 0.75), model(x, 0.75), atol=1e-5, rtol=1e-5)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs == 3  # no batch size compiled another
    assert list((cache / 'inductor').iterdir())  # inductor's cache, kept with the packages
    with pytest.raises(ValueError, match='torch.float64'):
        jit(torch.randn(2, 1, 28, 28).double(), 0.5)


def test_compile_widths_serves_on_the_cpu_from_widths_that_release_the_gil_and_evaluates_from_packages(
        model, monkeypatch):
    built = []
    for kind in (compiled.CompiledWidths, compiled.JitCompiledWidths):
        monkeypatch.setattr(compiled, kind.__name__, lambda *args, kind=kind, **kwargs: built.append(kind.__name__))
    compiled.compile_widths(model, serving=True)
    compiled.compile_widths(model)
    assert built == ['JitCompiledWidths', 'CompiledWidths']


def assert_answers_as_eager(server: Server, run, backend: str) -> None:
    """The server, on ``backend``, answers an image at each of the run's widths with the eager model's top 5."""
    png = next((run.parent / 'data' / 'val').glob('*/*.png')).read_bytes()
    widths = httpx.get(f'{server.url}/widths').json()
    assert widths['backend'] == backend and widths['widths'] == [0.5, 0.75, 1.0]
    eager = Runner(str(run))
    for width in widths['widths']:
        response = server.post(png, **{'X-Width': str(width)})
        assert response.status_code == 200, response.text
        assert response.json()['width'] == width
        expected = eager.run([eager.preprocess(png)], width)[0].top
        answered = [(row['label'], row['probability']) for row in response.json()['top5']]
        assert [label for label, _ in answered] == [label for label, _ in expected]
        assert [p for _, p in answered] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_serve_with_compile_answers_as_the_eager_model_at_every_width(run, cache, tmp_path):
    JitCompiledWidths(load_model(str(run))[0].eval(), progress=False)  # the server then builds nothing
    server = Server(run, '--compile', env={'TMPDIR': str(tmp_path)})
    try:
        assert_answers_as_eager(server, run, 'compiled')
    finally:
        server.stop()
    # nothing left in the temporary folder but inductor's precompiled headers, one folder that every start reuses
    assert all(path.name.startswith('torchinductor_') for path in tmp_path.iterdir())


def test_serve_with_onnxruntime_answers_at_every_width_from_the_exported_widths(run):
    server = Server(run, '--onnxruntime')
    try:
        assert_answers_as_eager(server, run, 'onnxruntime')
    finally:
        server.stop()


def test_an_aoti_export_is_a_package_that_answers_as_the_width(model, tmp_path, capsys):
    from scalavit.export import export_width
    check = export_width(model, 0.75, tmp_path / 'aoti', 'aoti')
    assert (tmp_path / 'aoti' / 'model_aoti.pt2').is_file()
    assert check['max_abs_logit_difference'] <= 1e-4 and check['top1_agreement'] == 1.0


def test_a_torch_that_crashes_loading_a_package_is_a_clear_error(model, cache, monkeypatch):
    CompiledWidths(model, widths=[0.5], progress=False)
    assert list(cache.glob('.packages-load-*'))  # checked once, in a child process, then remembered
    for marker in cache.glob('.packages-load-*'):
        marker.unlink()
    monkeypatch.setattr(compiled, '_LOAD_CHECK', 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)')
    with pytest.raises(compiled.CompileError, match='crashes when it loads an AOTInductor package'):
        CompiledWidths(model, widths=[0.5], progress=False)
    assert not list(cache.glob('.packages-load-*'))


def test_compile_without_a_compiler_is_one_clear_line(run, monkeypatch, capsys):
    monkeypatch.setattr(compiled.shutil, 'which', lambda name: None)
    assert main(['eval', str(run), '--compile']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--compile needs a C++ compiler' in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA graphs need a CUDA device')
def test_cuda_graphs_answer_as_eager_at_every_width_and_batch_size(model, cache):
    """On CUDA every width is captured as CUDA graphs at batches 1, 2, 4, ..., 64: a batch is padded up to the next
    captured size (3 -> 4), a larger one (100) runs the compiled graph; each answers as the eager model."""
    on_cuda = copy.deepcopy(model).cuda().eval()
    widths = JitCompiledWidths(on_cuda, cache_dir=cache, progress=False, cuda_graphs=True)
    with torch.no_grad():
        for batch in (1, 3, 64, 100):
            x = torch.randn(batch, 1, 28, 28, device='cuda')
            for width in on_cuda.widths:
                torch.testing.assert_close(widths(x, width), on_cuda(x, width), atol=1e-4, rtol=1e-4)
    threads = [threading.Thread(target=lambda: widths(torch.randn(2, 1, 28, 28, device='cuda'), 1.0))
               for _ in range(4)]  # replays from several threads, one at a time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
