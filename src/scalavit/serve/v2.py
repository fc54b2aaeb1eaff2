"""The Open Inference Protocol (KServe v2, as Triton, KServe, MLServer and Seldon speak it) over the same service as
``/predict``, with the binary tensor data extension.

One model, named by ``--served-model-name``. Inputs: ``image`` (BYTES, shape [N] or [N, 1]: encoded image files; in
JSON each as a base64 string) or ``pixel_values`` (FP32, shape [N, C, H, W]: already preprocessed as the model expects).
Outputs: ``labels`` (BYTES, [N, k]) and ``probabilities`` (FP32, [N, k]), the top k. Request parameters ``width``
(pin a grid width) and ``slo_ms``; response parameters ``width`` (the narrowest that answered an image of the
request), ``batch_size`` (the largest batch one of them was answered in) and the times in milliseconds.
"""
import asyncio
import base64
import binascii
import json
import struct
from typing import Any, Optional

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .service import Problem, Served, Service, read_body, unless_disconnected

IMAGE, PIXELS = 'image', 'pixel_values'
LABELS, PROBABILITIES = 'labels', 'probabilities'
HEADER_LENGTH = 'inference-header-content-length'
MAX_PIXEL_VALUE = 1e4  # beyond it a forward overflows into NaN: no preprocessed image comes near


def v2_router(service: Service) -> APIRouter:
    router = APIRouter(prefix='/v2')
    name = service.settings.served_model_name
    model_paths = ('/models/{model}', '/models/{model}/versions/{version}')

    def problem(status: int, message: str) -> JSONResponse:
        return JSONResponse({'error': message}, status_code=status)

    def unknown(model: str, version: Optional[str]) -> Optional[JSONResponse]:
        if model != name:
            return problem(404, f"no model named {model!r}; this server serves {name!r}")
        if version not in (None, '1'):
            return problem(404, f"model {name!r} has only version 1, not {version!r}")
        return None

    @router.get('')
    async def server_metadata():
        return {'name': 'scalavit', 'version': __version__,
                'extensions': ['binary_tensor_data', 'model_configuration']}

    @router.get('/health/live')
    async def live():
        return Response(status_code=200)

    @router.get('/health/ready')
    async def ready():
        return Response(status_code=200 if service.not_ready() is None else 503)

    async def model_metadata(model: str, version: Optional[str] = None):
        if (missing := unknown(model, version)) is not None:
            return missing
        runner, k = service.runner, service.runner.top_k
        return {'name': name, 'versions': ['1'], 'platform': 'pytorch_scalavit',
                'inputs': [{'name': IMAGE, 'datatype': 'BYTES', 'shape': [-1]},
                           {'name': PIXELS, 'datatype': 'FP32', 'shape': [-1, *runner.input_size]}],
                'outputs': [{'name': LABELS, 'datatype': 'BYTES', 'shape': [-1, k]},
                            {'name': PROBABILITIES, 'datatype': 'FP32', 'shape': [-1, k]}],
                'parameters': {'widths': ','.join(f'{w:g}' for w in runner.widths)}}

    async def model_ready(model: str, version: Optional[str] = None):
        if (missing := unknown(model, version)) is not None:
            return missing
        return Response(status_code=200 if service.not_ready() is None else 503)

    async def model_config(model: str, version: Optional[str] = None):
        """Triton's model configuration extension, as `tritonclient`'s ``get_model_config`` reads it."""
        if (missing := unknown(model, version)) is not None:
            return missing
        runner, k = service.runner, service.runner.top_k
        return {'name': name, 'platform': 'pytorch_scalavit', 'backend': runner.backend,
                'max_batch_size': service.settings.max_batch_size,
                'input': [{'name': IMAGE, 'data_type': 'TYPE_STRING', 'dims': [1]},
                          {'name': PIXELS, 'data_type': 'TYPE_FP32', 'dims': list(runner.input_size)}],
                'output': [{'name': LABELS, 'data_type': 'TYPE_STRING', 'dims': [k]},
                           {'name': PROBABILITIES, 'data_type': 'TYPE_FP32', 'dims': [k]}],
                'parameters': {'widths': {'string_value': ','.join(f'{w:g}' for w in runner.widths)},
                               'slo_ms': {'string_value': f'{service.settings.slo_ms:g}'}}}

    @router.post('/repository/index')
    async def repository_index():
        """The one model this server serves and its state (what `tritonclient`'s ``get_model_repository_index``
        lists)."""
        reason = service.not_ready()
        return [{'name': name, 'version': '1', 'state': 'READY' if reason is None else 'UNAVAILABLE',
                 **({} if reason is None else {'reason': reason})}]

    async def infer(request: Request, model: str, version: Optional[str] = None):
        if (missing := unknown(model, version)) is not None:
            return missing
        with service.admitted():
            return await answer(request)

    for path in model_paths:
        router.add_api_route(path, model_metadata, methods=['GET'])
        router.add_api_route(path + '/ready', model_ready, methods=['GET'])
        router.add_api_route(path + '/config', model_config, methods=['GET'])
        router.add_api_route(path + '/infer', infer, methods=['POST'])

    async def answer(request: Request) -> Response:
        body = await read_body(request, service.settings.max_body_bytes)
        return await unless_disconnected(request, answer_body(body, request.headers.get(HEADER_LENGTH)))

    async def answer_body(body: bytes, header_length: Optional[str]) -> Response:
        # JSON, base64 and the tensors' conversion in the decoding pool: a large body would hold up the event loop
        inference, items = await asyncio.get_running_loop().run_in_executor(
            service.decoder, parse_with_inputs, body, header_length, service)
        parameters = inference['parameters']
        slo_s = service.slo_s(parameters.get('slo_ms'), 'the parameter slo_ms')
        width = service.width(parameters.get('width'), 'the parameter width')
        if len(items) > service.settings.max_batch_size:
            raise Problem(400, f"a request holds at most {service.settings.max_batch_size} images "
                               f"(--max-batch-size), this one {len(items)}")
        try:  # the first image refused cancels the others' decodes and forwards: the answer is that refusal
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(service.infer(item, slo_s, width)) for item in items]
        except* Problem as refused:
            raise refused.exceptions[0] from None
        return respond(inference, name, [task.result() for task in tasks], service.runner.top_k)

    return router


def parse_request(body: bytes, header_length: Optional[str]) -> dict:
    """The inference request's JSON, with each binary input's bytes put under its ``raw`` key."""
    if header_length is None:
        size = len(body)
    elif is_length(header_length) and int(header_length) <= len(body):
        size = int(header_length)
    else:
        raise Problem(400, f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the "
                           f"body's {len(body)} bytes")
    try:
        inference = json.loads(body[:size])
    except (ValueError, RecursionError):
        raise Problem(400, 'the inference request is not valid JSON') from None
    if not isinstance(inference, dict) or not isinstance(inference.get('inputs'), list) or not inference['inputs']:
        raise Problem(400, 'the inference request needs "inputs": a list of one input, "image" or "pixel_values"')
    offset = size
    for tensor in inference['inputs']:
        if not isinstance(tensor, dict):
            raise Problem(400, 'each input must be an object with name, datatype, shape and data')
        binary_size = parameters_of(tensor, f"input {str(tensor.get('name'))[:40]!r}").get('binary_data_size')
        if binary_size is not None:
            if not is_count(binary_size) or offset + binary_size > len(body):
                raise Problem(400, f"input {str(tensor.get('name'))[:40]!r}: binary_data_size {binary_size!r} "
                                   f"runs past the body's {len(body)} bytes")
            tensor['raw'] = body[offset:offset + binary_size]
            offset += binary_size
    parameters = parameters_of(inference, 'the request')
    parameters['binary_data_output'] = flag(parameters.get('binary_data_output', False),
                                            'the parameter binary_data_output')
    outputs = inference.get('outputs') or []
    if not isinstance(outputs, list):
        raise Problem(400, f'"outputs" must be a list of objects naming {LABELS!r} or {PROBABILITIES!r}')
    for wanted in outputs:
        if not isinstance(wanted, dict) or wanted.get('name') not in (LABELS, PROBABILITIES):
            raise Problem(400, f"unknown output {str(wanted)[:40]}; the outputs are {LABELS!r} and "
                               f"{PROBABILITIES!r}")
        wanted_parameters = parameters_of(wanted, f"output {wanted['name']!r}")
        wanted_parameters['binary_data'] = flag(wanted_parameters.get('binary_data', False),
                                                f"output {wanted['name']!r}'s binary_data")
    return inference


def is_length(text: str) -> bool:
    """ASCII digits, few enough to be a length ('²' is a digit to ``str.isdigit``, 5000 digits overflow ``int``)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 40


def parameters_of(thing: dict, what: str) -> dict:
    """``thing``'s parameters (set to {} where absent), refused unless an object."""
    parameters = thing.get('parameters')
    if parameters is None:
        parameters = thing['parameters'] = {}
    if not isinstance(parameters, dict):
        raise Problem(400, f'{what}\'s "parameters" must be an object, got {str(parameters)[:40]}')
    return parameters


def flag(value: Any, what: str) -> bool:
    """A boolean parameter: JSON true or false, or the strings 'true' and 'false' some clients send."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    raise Problem(400, f"{what} must be true or false, got {str(value)[:20]!r}")


def parse_with_inputs(body: bytes, header_length: Optional[str], service: Service) -> tuple[dict, list]:
    inference = parse_request(body, header_length)
    return inference, inputs(inference, service)


def inputs(inference: dict, service: Service) -> list:
    """One ``prepare`` callable per image, for the service's decoding pool."""
    if len(inference['inputs']) != 1:
        raise Problem(400, f"give one input, {IMAGE!r} (BYTES) or {PIXELS!r} (FP32); got {len(inference['inputs'])}")
    tensor = inference['inputs'][0]
    kind, datatype, shape = tensor.get('name'), tensor.get('datatype'), tensor.get('shape')
    if not (isinstance(shape, list) and shape and all(is_count(n) for n in shape)):
        raise Problem(400, f"input {str(kind)[:40]!r}: shape must be a list of sizes, got {str(shape)[:60]}")
    if shape[0] < 1:
        raise Problem(400, f"input {str(kind)[:40]!r}: shape {str(shape)[:60]} holds no image; give at least one")
    if kind == IMAGE and datatype == 'BYTES' and (len(shape) == 1 or shape[1:] == [1]):  # [N] or Triton's [N, 1]
        files = bytes_elements(tensor, shape[0])
        return [lambda data=data: service.runner.preprocess(data, service.settings.max_pixels) for data in files]
    expected = list(service.runner.input_size)
    if kind == PIXELS and datatype == 'FP32' and len(shape) == 4 and shape[1:] == expected:
        pixels = fp32_elements(tensor, shape)
        return [lambda image=image: torch.from_numpy(image.copy()) for image in pixels]
    raise Problem(400, f"input {str(kind)[:40]!r} of {str(datatype)[:10]} {str(shape)[:60]}: give {IMAGE!r} as "
                       f"BYTES [N] or [N, 1] (encoded image files) or {PIXELS!r} as FP32 "
                       f"[N, {', '.join(map(str, expected))}]")


def bytes_elements(tensor: dict, count: int) -> list[bytes]:
    if 'raw' in tensor:  # the binary extension: each element a 4-byte little-endian length, then its bytes
        raw, elements, offset = tensor['raw'], [], 0
        while offset < len(raw):
            if offset + 4 > len(raw) or offset + 4 + struct.unpack_from('<I', raw, offset)[0] > len(raw):
                raise Problem(400, f"input {IMAGE!r}: the binary BYTES data is truncated")
            length = struct.unpack_from('<I', raw, offset)[0]
            elements.append(raw[offset + 4:offset + 4 + length])
            offset += 4 + length
    else:  # JSON: each element a base64 string (JSON strings cannot hold an image file's bytes)
        data = tensor.get('data')
        if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
            raise Problem(400, f"input {IMAGE!r}: data must be a list of base64 strings, one per image file")
        try:
            elements = [base64.b64decode(element, validate=True) for element in data]
        except (ValueError, binascii.Error):
            raise Problem(400, f"input {IMAGE!r}: each JSON element must be the base64 of an image file") from None
    if len(elements) != count:
        raise Problem(400, f"input {IMAGE!r}: {count} images in its shape but {len(elements)} elements")
    return elements


def fp32_elements(tensor: dict, shape: list[int]) -> np.ndarray:
    size = int(np.prod(shape))
    if 'raw' in tensor:
        if len(tensor['raw']) != 4 * size:
            raise Problem(400, f"input {PIXELS!r}: {len(tensor['raw'])} bytes of binary data for shape {shape}, "
                               f"which needs {4 * size}")
        values = np.frombuffer(tensor['raw'], dtype='<f4')
    else:
        try:
            values = np.asarray(tensor.get('data'), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise Problem(400, f"input {PIXELS!r}: data must be {size} numbers") from None
        if values.size != size:
            raise Problem(400, f"input {PIXELS!r}: {values.size} numbers for shape {shape}, which needs {size}")
    if not (np.isfinite(values).all() and np.abs(values).max(initial=0.0) <= MAX_PIXEL_VALUE):
        raise Problem(400, f"input {PIXELS!r}: the values must be finite numbers within ±{MAX_PIXEL_VALUE:g} "
                           "(normalized pixels lie within about ±10)")
    return values.astype(np.float32).reshape(shape)


def respond(inference: dict, model: str, served: list[Served], k: int) -> Response:
    """The inference response: JSON, or JSON then binary tensors where the request asked for binary outputs."""
    labels = [[label for label, _ in s.output.top] for s in served]
    probabilities = np.array([[p for _, p in s.output.top] for s in served], dtype=np.float32).reshape(len(served), k)
    available = {LABELS: ('BYTES', labels), PROBABILITIES: ('FP32', probabilities)}
    requested = inference.get('outputs') or [{'name': n} for n in available]
    all_binary = inference['parameters']['binary_data_output']
    outputs, blobs = [], []
    for wanted in requested:
        datatype, values = available[wanted['name']]
        output: dict[str, Any] = {'name': wanted['name'], 'datatype': datatype, 'shape': [len(served), k]}
        if all_binary or wanted.get('parameters', {}).get('binary_data', False):
            blob = (b''.join(struct.pack('<I', len(e)) + e for row in values for e in (s.encode() for s in row))
                    if datatype == 'BYTES' else values.astype('<f4').tobytes())
            output['parameters'] = {'binary_data_size': len(blob)}
            blobs.append(blob)
        else:
            output['data'] = ([label for row in values for label in row] if datatype == 'BYTES'
                              else [float(p) for p in values.reshape(-1)])
        outputs.append(output)
    body = {'model_name': model, 'model_version': '1', 'outputs': outputs, 'parameters': dict(
        width=min(s.width for s in served), batch_size=max(s.batch_size for s in served),
        decode_ms=round(1e3 * max(s.decode_s for s in served), 3),
        queue_ms=round(1e3 * max(s.queue_s for s in served), 3),
        compute_ms=round(1e3 * max(s.compute_s for s in served), 3), slo_ms=round(1e3 * served[0].slo_s, 3))}
    stages = [s.stage for s in served if s.stage is not None]
    if stages:  # the server's cascade answered: the furthest stage any image reached (1 the first)
        body['parameters']['cascade_stage'] = max(stages) + 1
    if 'id' in inference:
        body['id'] = str(inference['id'])
    header = json.dumps(body).encode()
    if not blobs:
        return Response(header, media_type='application/json')
    return Response(header + b''.join(blobs), media_type='application/octet-stream',
                    headers={'Inference-Header-Content-Length': str(len(header))})
