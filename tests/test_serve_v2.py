"""The Open Inference Protocol (KServe v2) of `scalavit serve`, spoken by NVIDIA's own client, tritonclient, to a real
server: JSON and the binary tensor data extension, encoded images and preprocessed tensors."""
import base64

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import serving
from serving import Server
from scalavit.serve.runner import Runner

MODEL = 'fashion'


@pytest.fixture(scope='module')
def labelled_png(trained):
    return serving.labelled_png(trained)


@pytest.fixture(scope='module')
def server(trained):
    running = Server(trained / 'scala', '--served-model-name', MODEL)
    yield running
    running.stop()


@pytest.fixture(scope='module')
def client(server):
    return triton.InferenceServerClient(f'127.0.0.1:{server.port}')


def image_input(pngs, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput('image', [len(pngs)], 'BYTES')
    elements = pngs if binary else [base64.b64encode(p) for p in pngs]  # JSON strings carry base64
    return tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)


def outputs(binary: bool) -> list:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in ('labels', 'probabilities')]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready('other')
    assert 'binary_tensor_data' in client.get_server_metadata()['extensions']
    metadata = client.get_model_metadata(MODEL)
    assert metadata['name'] == MODEL and metadata['versions'] == ['1']
    assert {(t['name'], t['datatype']) for t in metadata['inputs']} == {('image', 'BYTES'), ('pixel_values', 'FP32')}
    assert [t['shape'] for t in metadata['outputs']] == [[-1, 3], [-1, 3]]
    with pytest.raises(InferenceServerException, match="no model named 'other'"):
        client.get_model_metadata('other')


@pytest.mark.parametrize('binary', [True, False], ids=['binary', 'json'])
def test_an_image_gets_the_same_answer_as_predict(server, client, labelled_png, binary):
    png, label = labelled_png
    expected = server.post(png).json()['top5']
    result = client.infer(MODEL, [image_input([png], binary)], outputs=outputs(binary))
    labels, probabilities = result.as_numpy('labels'), result.as_numpy('probabilities')
    assert labels.shape == probabilities.shape == (1, 3)
    assert [label.decode() if binary else label for label in labels[0]] == [e['label'] for e in expected]
    assert labels[0][0] in (label, label.encode())
    np.testing.assert_allclose(probabilities[0], [e['probability'] for e in expected], atol=1e-6)
    parameters = result.get_response()['parameters']
    assert parameters['width'] in [0.25 + i / 16 for i in range(13)] and parameters['batch_size'] >= 1
    assert parameters['decode_ms'] > 0 and parameters['slo_ms'] == 100


@pytest.mark.parametrize('binary', [True, False], ids=['binary', 'json'])
def test_a_preprocessed_tensor_gets_the_same_answer(trained, client, labelled_png, binary):
    png, label = labelled_png
    pixels = Runner(str(trained / 'scala')).preprocess(png).numpy()[None]
    tensor = triton.InferInput('pixel_values', list(pixels.shape), 'FP32')
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=outputs(binary))
    assert result.as_numpy('labels')[0][0] in (label, label.encode())


def test_several_images_a_pinned_width_and_an_slo_as_parameters(client, labelled_png):
    result = client.infer(MODEL, [image_input([labelled_png[0]] * 3, True)],
                          parameters={'width': 0.375, 'slo_ms': 2000})
    assert result.as_numpy('probabilities').shape == (3, 3)
    assert result.get_response()['parameters']['width'] == 0.375
    assert result.get_response()['parameters']['slo_ms'] == 2000


def test_bad_requests_get_a_message(server, client, labelled_png):
    wrong = triton.InferInput('pixel_values', [1, 3, 28, 28], 'FP32')
    wrong.set_data_from_numpy(np.zeros((1, 3, 28, 28), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"pixel_values' as FP32 \[N, 1, 28, 28\]"):
        client.infer(MODEL, [wrong])
    with pytest.raises(InferenceServerException, match='the parameter width'):
        client.infer(MODEL, [image_input([labelled_png[0]], True)], parameters={'width': 0.3})
    with pytest.raises(InferenceServerException, match='not a readable image'):
        client.infer(MODEL, [image_input([b'not an image'], True)])
    for body, message in ((b'{"inputs": [', 'not valid JSON'), (b'{"inputs": []}', 'needs "inputs"'),
                          (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
                           'base64 strings')):
        response = server.post(body, 'application/json', path=f'/v2/models/{MODEL}/infer')
        assert response.status_code == 400 and message in response.json()['error'], response.text
