"""Property-based fuzzing of what a client controls, with hypothesis: the Open Inference Protocol's JSON and binary
parsing, and the image decoder. Whatever arrives, the answer is a ``Problem`` of status 4xx naming it (or a valid
request), never another exception: the server turns the first into a 400 and would turn anything else into a 500.
(The real server under the same inputs: tests/test_serve_v2.py and tests/test_serve_hostile.py.)"""
import io
import json
import struct
from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from scalavit.images import BadImage, decode
from scalavit.serve import v2
from scalavit.serve.service import Problem

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERVICE = SimpleNamespace(runner=SimpleNamespace(input_size=(1, 28, 28), preprocess=lambda data, max_pixels: data),
                          settings=SimpleNamespace(max_pixels=1_000_000))

scalars = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
names = st.sampled_from(['image', 'pixel_values', 'labels', 'probabilities', 'other'])
shapes = st.lists(st.integers(-2, 2 ** 33) | st.booleans() | st.text(max_size=2), max_size=5) | json_values
parameters = st.dictionaries(st.sampled_from(['binary_data_size', 'binary_data', 'binary_data_output', 'slo_ms',
                                              'width', 'classification']), json_values, max_size=3) | json_values
tensors = st.fixed_dictionaries({}, optional={'name': names, 'datatype': st.sampled_from(['BYTES', 'FP32', 'INT8']),
                                              'shape': shapes, 'data': json_values, 'parameters': parameters})
requests = st.fixed_dictionaries({}, optional={'inputs': st.lists(tensors, max_size=3) | json_values,
                                               'outputs': st.lists(st.fixed_dictionaries(
                                                   {'name': names}, optional={'parameters': parameters}),
                                                   max_size=3) | json_values,
                                               'parameters': parameters, 'id': json_values})


def parse(body: bytes, header_length=None):
    """What the route does before the images are decoded: the request, then its inputs."""
    try:
        inference = v2.parse_request(body, header_length)
        v2.inputs(inference, SERVICE)
    except Problem as problem:
        assert 400 <= problem.status < 500 and str(problem) and '\n' not in str(problem)


@FUZZ
@given(requests, st.binary(max_size=64), st.none() | st.text(max_size=6))
def test_any_json_request_is_parsed_or_refused_with_a_4xx(request, tail, header_length):
    header = json.dumps(request).encode()
    parse(header + tail, header_length)
    parse(header + tail, str(len(header)))  # the binary extension: JSON, then raw tensor data


@FUZZ
@given(st.binary(max_size=256), st.none() | st.text(max_size=6))
def test_any_bytes_are_parsed_or_refused_with_a_4xx(body, header_length):
    parse(body, header_length)


@FUZZ
@given(st.lists(st.binary(max_size=12), max_size=4), st.integers(0, 4), st.binary(max_size=8))
def test_binary_bytes_elements_are_read_or_refused_with_a_4xx(elements, declared, junk):
    raw = b''.join(struct.pack('<I', len(e)) + e for e in elements) + junk
    header = json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [declared],
                                     'parameters': {'binary_data_size': len(raw)}}]}).encode()
    parse(header + raw, str(len(header)))


@FUZZ
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=8))
def test_pixel_values_are_taken_only_when_finite_and_in_range(few):
    values = (few * 784)[:784]  # an image of these values repeated
    body = json.dumps({'inputs': [{'name': 'pixel_values', 'datatype': 'FP32', 'shape': [1, 1, 28, 28],
                                   'data': values}]}).encode()
    finite = np.isfinite(values).all() and np.abs(values).max() <= v2.MAX_PIXEL_VALUE
    try:
        items = v2.inputs(v2.parse_request(body, None), SERVICE)
        assert finite and len(items) == 1
    except Problem as problem:
        assert problem.status == 400 and not finite


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format='PNG')
    return buffer.getvalue()


SEEDS = [png(mode, (7, 5)) for mode in ('L', 'RGB', 'RGBA', 'I;16', 'P', '1')]


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10 ** 6))
def test_a_damaged_image_file_is_decoded_or_refused_as_a_bad_image(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    try:
        image = decode(bytes(data[:max(1, cut % (len(data) + 1))]), 'L', max_pixels=10_000)
        assert image.mode == 'L'
    except BadImage as error:
        assert str(error) and '\n' not in str(error)
