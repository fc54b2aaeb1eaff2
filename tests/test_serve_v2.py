"""The Open Inference Protocol (KServe v2) of `scalavit serve`, spoken by NVIDIA's own client, tritonclient, to a real
server: JSON and the binary tensor data extension, encoded images and preprocessed tensors."""
import base64
import json

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


def image_json(**fields) -> dict:
    return {'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1], 'data': ['AAAA'], **fields}]}


def pixels_json(values: list, shape=(1, 1, 28, 28)) -> dict:
    return {'inputs': [{'name': 'pixel_values', 'datatype': 'FP32', 'shape': list(shape), 'data': values}]}


HUGE = int('9' * 400)  # a JSON integer that no float holds
PROBE = {  # what once got a 500 and a traceback, or a 200 with NaN inside, and the 400 each gets now
    'no image in [0]': (image_json(shape=[0], data=[]), {}, 'holds no image'),
    'no image in [0, C, H, W]': (pixels_json([], (0, 1, 28, 28)), {}, 'holds no image'),
    'a 400-digit slo_ms': ({**image_json(), 'parameters': {'slo_ms': HUGE}}, {}, 'slo_ms must be a positive'),
    'a 400-digit width': ({**image_json(), 'parameters': {'width': HUGE}}, {}, 'is not on the grid'),
    "an input's parameters not an object": (image_json(parameters=5), {}, '"parameters" must be an object'),
    "an output's parameters not an object": ({**image_json(), 'outputs': [{'name': 'labels', 'parameters': [1]}]},
                                             {}, '"parameters" must be an object'),
    'the request\'s parameters not an object': ({**image_json(), 'parameters': 'x'}, {},
                                                '"parameters" must be an object'),
    '"outputs": 5': ({**image_json(), 'outputs': 5}, {}, '"outputs" must be a list'),
    "a header length of '²'": (image_json(), {'Inference-Header-Content-Length': '²'.encode('latin-1')},
                               'is not a length'),  # a digit to str.isdigit, not to int()
    'a header length of 5000 digits': (image_json(), {'Inference-Header-Content-Length': '9' * 5000},
                                       'is not a length'),
    'FP32 values of 3e38': (pixels_json([3e38] * 784), {}, 'finite numbers within'),
    'binary_data_output "maybe"': ({**image_json(), 'parameters': {'binary_data_output': 'maybe'}}, {},
                                   'binary_data_output must be true or false'),
    'a shape of true': (image_json(shape=[True]), {}, 'shape must be a list of sizes'),
}


@pytest.mark.parametrize('request_json, headers, message', PROBE.values(), ids=PROBE.keys())
def test_each_malformed_request_of_the_probe_gets_a_400_naming_its_problem(server, request_json, headers, message):
    before = len(server.output)
    response = server.post(json.dumps(request_json).encode(), 'application/json', path=f'/v2/models/{MODEL}/infer',
                           **headers)
    assert response.status_code == 400 and message in response.json()['error'], response.text
    assert response.json()['error'].count('\n') == 0
    assert not any('Traceback' in line for line in list(server.output)[before:])


def test_binary_data_output_spelled_as_a_string_is_read_as_what_it_says(server, labelled_png):
    png, label = labelled_png
    body = {'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                        'data': [base64.b64encode(png).decode()]}]}
    for spelled, binary in (('false', False), ('False', False), ('true', True)):
        response = server.post(json.dumps({**body, 'parameters': {'binary_data_output': spelled}}).encode(),
                               'application/json', path=f'/v2/models/{MODEL}/infer')
        assert response.status_code == 200
        assert ('Inference-Header-Content-Length' in response.headers) == binary, spelled
        if not binary:
            assert response.json()['outputs'][0]['data'][0] == label


def test_the_model_configuration_the_repository_index_and_triton_shaped_bytes(client, labelled_png):
    config = client.get_model_config(MODEL)
    assert config['name'] == MODEL and config['max_batch_size'] == 8
    assert {(t['name'], t['data_type']) for t in config['input']} == {('image', 'TYPE_STRING'),
                                                                      ('pixel_values', 'TYPE_FP32')}
    assert client.get_model_repository_index() == [{'name': MODEL, 'version': '1', 'state': 'READY'}]
    assert 'model_configuration' in client.get_server_metadata()['extensions']
    with pytest.raises(InferenceServerException, match="no model named 'other'"):
        client.get_model_config('other')
    png, label = labelled_png
    tensor = triton.InferInput('image', [1, 1], 'BYTES')  # Triton's usual dims for a batch of strings
    tensor.set_data_from_numpy(np.array([[png]], dtype=np.object_), binary_data=True)
    result = client.infer(MODEL, [tensor], outputs=outputs(True))
    assert result.as_numpy('labels')[0][0].decode() == label
