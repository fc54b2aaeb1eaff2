"""`scalavit serve` against hostile and careless clients: a real server on a loopback port, fuzzed with malformed HTTP,
slow and idle connections, header floods, odd and oversized images and garbage headers. After each burst it must
still be ready, hold its memory within a bound, and give a normal request the right class; no answer is a 500 and
nothing it prints is a traceback."""
import asyncio
import collections
import io
import random
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import serving
from serving import Server

pytestmark = pytest.mark.slow  # holds a real server against slow clients: scripts/test.sh --fast skips it

LIMITS = ['--max-queue', '64', '--header-timeout', '2', '--body-timeout', '8', '--keep-alive-timeout', '2',
          '--max-connections', '256', '--max-body-bytes', '2000000', '--max-pixels', '16000000']
MEMORY_BOUND = 300 * 2 ** 20  # resident memory may grow this much over the server's at the start of the tests


@pytest.fixture(scope='module')
def labelled_png(trained):
    return serving.labelled_png(trained)


@pytest.fixture(scope='module')
def server(trained, labelled_png):
    running = Server(trained / 'scala', *LIMITS)
    for _ in range(3):
        running.post(labelled_png[0])  # first answers allocate what every later one reuses
    running.baseline_rss = running.rss_bytes()
    yield running
    running.stop()
    assert not [line for line in running.output if 'Traceback' in line], ''.join(running.output)


@pytest.fixture
def still_serving(server, labelled_png):
    """After the test: ready, memory within the bound, and a normal request answered with the right class."""
    yield
    assert httpx.get(f'{server.url}/health/ready', timeout=5).status_code == 200
    assert server.rss_bytes() - server.baseline_rss < MEMORY_BOUND, (server.rss_bytes(), server.baseline_rss)
    answer = server.post(labelled_png[0])
    assert answer.status_code == 200 and answer.json()['top5'][0]['label'] == labelled_png[1], answer.text


def request_head(server, body_length: int, **headers) -> bytes:
    lines = ['POST /predict HTTP/1.1', f'Host: 127.0.0.1:{server.port}', 'Content-Type: image/png',
             f'Content-Length: {body_length}', *(f'{k.replace("_", "-")}: {v}' for k, v in headers.items())]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode()


def read_response(connection: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes the connection (or the timeout passes)."""
    connection.settimeout(timeout)
    received = b''
    try:
        while chunk := connection.recv(65536):
            received += chunk
            if b'\r\n\r\n' in received and b'connection: close' not in received.lower():
                head, _, body = received.partition(b'\r\n\r\n')
                length = [int(line.split(b':')[1]) for line in head.split(b'\r\n')
                          if line.lower().startswith(b'content-length:')]
                if length and len(body) >= length[0]:
                    break
    except (socket.timeout, ConnectionResetError):
        pass
    return received


def connection_closed(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        return connection.recv(1) == b''
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        connection.setblocking(True)


def status(response: bytes) -> int:
    return int(response.split(b' ', 2)[1]) if response.startswith(b'HTTP/1.1 ') else 0


def png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=options.pop('format', 'PNG'), **options)
    return buffer.getvalue()


def test_one_slow_upload_does_not_make_the_server_refuse_the_others(server, labelled_png, still_serving):
    image = labelled_png[0]
    with server.connect() as slow:
        slow.sendall(request_head(server, len(image), X_SLO_Ms='20000'))
        pieces = np.array_split(np.frombuffer(image, dtype=np.uint8), 10)
        for piece in pieces:  # 5 s in all
            time.sleep(0.5)
            slow.sendall(piece.tobytes())
        assert status(read_response(slow)) == 200
    answers = [server.post(image, **{'X-SLO-Ms': '1000'}) for _ in range(20)]
    within = [a for a in answers if a.status_code == 200 and a.json()['queue_ms'] + a.json()['compute_ms'] <= 1000]
    assert len(within) >= 18, [a.text for a in answers]


def test_decoding_happens_off_the_event_loop_and_large_images_are_refused_before_it(server, still_serving):
    # 4000x4000 RGB with a pattern: a 56 KB file that takes the decoder about 0.2 s
    pattern = np.tile(np.arange(256, dtype=np.uint8), (4000, 16))[:, :4000]
    large = png(Image.fromarray(np.stack([pattern, pattern.T, 255 - pattern], -1), 'RGB'))
    latencies, answers = [], []

    def send_all():
        answers.extend(server.burst([large] * 10, **{'X-SLO-Ms': '5000'}))

    sender = threading.Thread(target=send_all)
    sender.start()
    while sender.is_alive():
        start = time.monotonic()
        httpx.get(f'{server.url}/health/live', timeout=10)
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    sender.join()
    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json()['decode_ms'] > 0 for a in answers)
    assert max(latencies) < 1.0, latencies
    bomb = png(Image.new('L', (10000, 10000)))  # 100 M pixels in about 100 KB
    refused = server.post(bomb)
    assert refused.status_code == 413 and '--max-pixels' in refused.json()['error']


def test_more_concurrent_requests_than_connections_get_answers_or_503_never_a_reset(server, labelled_png):
    answers = server.burst([labelled_png[0]] * 400)  # over --max-connections 256, all of them busy at once
    statuses = collections.Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 503} and statuses[200] > 0 and statuses[503] > 0, statuses
    assert all(int(a.headers['retry-after']) >= 1 for a in answers if a.status_code == 503)
    assert all('overloaded' in a.json()['error'] for a in answers if a.status_code == 503)


def gone_away(server) -> int:
    metrics = httpx.get(f'{server.url}/metrics').text
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith('scalavit_requests_total{') and 'status="400"' in line)


def test_clients_that_go_away_while_queued_have_their_work_given_up(server, labelled_png, still_serving):
    before = gone_away(server)
    image = png(Image.new('L', (2000, 2000), 128))  # a second or so of decoding each on this server's pool
    connections = [server.connect() for _ in range(40)]
    for connection in connections:
        connection.sendall(request_head(server, len(image), X_SLO_Ms='30000') + image)
    time.sleep(0.2)
    for connection in connections:  # all gone before most were decoded
        connection.close()
    deadline = time.monotonic() + 30
    while gone_away(server) - before < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone_away(server) - before >= 20  # answered 400 (to no one) at once, rather than decoded and computed


def test_idle_connections_neither_lock_out_health_checks_nor_stay_open(server, still_serving):
    idle = [server.connect() for _ in range(200)]
    try:
        time.sleep(1.2)  # silent past the first second: idle, though not yet past --header-timeout 2
        idle += [server.connect() for _ in range(100)]
        time.sleep(0.3)
        closed = sum(read_response(connection, timeout=0.01) == b'' and connection_closed(connection)
                     for connection in idle[:200])
        assert closed >= 300 - 256  # --max-connections: the longest idle made room for the newest
        start = time.monotonic()
        assert httpx.get(f'{server.url}/health/live', timeout=5).status_code == 200
        assert time.monotonic() - start < 1.0
        assert httpx.get(f'{server.url}/health/ready', timeout=5).status_code == 200
        time.sleep(3)  # past the header timeout (2 s)
        for connection in idle:
            assert read_response(connection, timeout=2) == b''  # closed by the server, nothing said
    finally:
        for connection in idle:
            connection.close()


def test_slowloris_and_stalled_uploads_are_cut_off_with_408(server, labelled_png, still_serving):
    slow_heads = [server.connect() for _ in range(20)]
    for connection in slow_heads:
        connection.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\n')
    for _ in range(6):  # a header line every half second, never the end of the head
        time.sleep(0.5)
        for connection in slow_heads:
            try:
                connection.sendall(b'X-a: b\r\n')
            except OSError:
                pass
    stalled = server.connect()
    stalled.sendall(request_head(server, len(labelled_png[0])) + labelled_png[0][:100])
    for connection in slow_heads:
        response = read_response(connection, timeout=5)
        assert status(response) == 408 and b'head did not arrive within 2 s' in response
        connection.close()
    response = read_response(stalled, timeout=12)
    assert status(response) == 408 and b'body did not arrive within 8 s' in response
    stalled.close()


def test_header_floods_are_cut_off_and_cost_no_memory(server, still_serving):
    def flood():
        sent = 0
        with server.connect() as connection:
            connection.sendall(b'GET /health/live HTTP/1.1\r\nHost: x\r\nX-Flood: ')
            chunk = b'a' * 2 ** 20
            try:
                for _ in range(100):  # up to 100 MB of one header's value
                    connection.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # the server closed the connection
                pass
        return sent

    threads, sent = [], []
    for _ in range(4):
        threads.append(threading.Thread(target=lambda: sent.append(flood())))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert len(sent) == 4 and max(sent) < 20 * 2 ** 20, sent  # cut off after a few buffers' worth
    many = server.connect()
    many.sendall(b'GET /health/live HTTP/1.1\r\nHost: x\r\n' + b''.join(b'X-%d: 1\r\n' % i for i in range(200))
                 + b'\r\n')
    assert status(read_response(many)) == 431
    many.close()


def test_malformed_http_and_garbage_headers_get_4xx_never_500(server, labelled_png, still_serving):
    image = labelled_png[0]
    raw_cases = [
        b'\x00\x01\x02garbage\r\n\r\n',
        b'GET\r\n\r\n',
        b'GET / HTTP/9.9\r\n\r\n',
        b'POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n',
        b'POST /predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n',
        b'POST /predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello',
        b'POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\nzz\r\nxx\r\n',
        b'POST /predict HTTP/1.1\r\nBad Header\r\n\r\n',
        b'POST /predict HTTP/1.1\r\nX-A: \x00\x7f\r\n\r\n',
        b'GET /' + b'a' * 40000 + b' HTTP/1.1\r\n\r\n',
    ]
    for case in raw_cases:
        with server.connect() as connection:
            connection.sendall(case)
            response = read_response(connection, timeout=5)
        assert 400 <= status(response) < 500, (case[:60], response[:200])
    headers = [{'X-SLO-Ms': value} for value in ('inf', '-inf', 'nan', '-1', '0', '1e309', '', '99999999', 'ms')]
    headers += [{'X-Width': value} for value in ('inf', 'nan', '0.3', 'abc', '', '-1', '1e400')]
    for extra in headers:
        response = server.post(image, **extra)
        assert response.status_code == 400 and 'error' in response.json(), (extra, response.text)
    deep = b'{"image": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
    assert server.post(deep, content_type='application/json').status_code == 400
    broken_form = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc'
    response = server.post(broken_form, content_type='multipart/form-data; boundary=xyz')
    assert response.status_code == 400 and 'error' in response.json(), response.text
    for method, path in (('GET', '/nowhere'), ('DELETE', '/predict'), ('GET', '/predict')):
        response = httpx.request(method, f'{server.url}{path}')
        assert response.status_code in (404, 405) and 'error' in response.json(), response.text


def test_a_client_leaving_mid_body_is_not_an_error(server, labelled_png, still_serving):
    lines_before = len(server.output)
    with server.connect() as connection:
        connection.sendall(request_head(server, 10_000) + labelled_png[0][:50])
    time.sleep(0.5)
    assert not [line for line in list(server.output)[lines_before:] if 'Traceback' in line or 'ERROR' in line]


def test_mutated_requests_never_get_a_500(server, labelled_png, still_serving):
    """A seeded fuzz: valid requests with bytes flipped, cut, repeated or inserted, in head and body alike, sent at
    once (an incomplete one waits for its header or body timeout) with ten unchanged ones among them."""
    rng = random.Random(0)
    image = labelled_png[0]
    valid = request_head(server, len(image), X_SLO_Ms='5000') + image
    requests = []
    for _ in range(150):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            if not data:
                break
            position = rng.randrange(len(data))
            kind = rng.random()
            if kind < 0.5:
                data[position] = rng.randrange(256)
            elif kind < 0.7:
                del data[position:position + rng.randint(1, 50)]
            elif kind < 0.85:
                data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
            else:
                data = data[:position]
        requests.append(bytes(data))
    requests[::15] = [valid] * 10

    async def send(data: bytes) -> int:
        reader, writer = await asyncio.open_connection('127.0.0.1', server.port)
        writer.write(data)
        try:
            response = await asyncio.wait_for(reader.read(), timeout=15)  # until the server closes
        except (asyncio.TimeoutError, ConnectionResetError):
            response = b''
        writer.close()
        return status(response)

    async def send_all():
        return await asyncio.gather(*(send(data) for data in requests))

    statuses = asyncio.run(send_all())
    assert all(s < 500 or s == 503 for s in statuses), statuses
    assert statuses[::15] == [200] * 10, statuses[::15]


IMAGE_CASES = {
    'RGBA': lambda gray: png(Image.merge('RGBA', [gray] * 3 + [Image.new('L', gray.size, 255)])),
    'palette with transparency': lambda gray: png(gray.convert('P'), transparency=0),
    'CMYK JPEG': lambda gray: png(Image.merge('RGB', [gray] * 3).convert('CMYK'), format='JPEG', quality=95),
    '1-bit': lambda gray: png(gray.convert('1')),
    'LA': lambda gray: png(gray.convert('LA')),
    'animated GIF': lambda gray: png(gray, format='GIF', save_all=True, append_images=[gray]),
    'BMP': lambda gray: png(gray, format='BMP'),
    'WebP': lambda gray: png(gray, format='WEBP', lossless=True),
    'TIFF': lambda gray: png(gray, format='TIFF'),
}


def test_every_mode_is_read_as_the_picture_it_shows(server, labelled_png, still_serving):
    original, label = labelled_png
    gray = Image.open(io.BytesIO(original))
    values = np.asarray(gray, dtype=np.float64)
    sixteen = png(Image.fromarray((values * 257).astype(np.uint16)))
    floating = png(Image.fromarray((values / 255).astype(np.float32)), format='TIFF')
    pinned = {'X-Width': '1'}  # the same pixels at the same width: the same answer, whatever the load does
    expected = server.post(original, **pinned).json()['top5']
    for name, body in [('16-bit PNG', sixteen), ('float TIFF', floating),
                       *((name, make(gray)) for name, make in IMAGE_CASES.items())]:
        answer = server.post(body, content_type='application/octet-stream', **pinned)
        assert answer.status_code == 200, (name, answer.text)
        if name in ('16-bit PNG', 'float TIFF', 'TIFF', 'BMP', 'WebP', 'LA', 'RGBA'):
            assert answer.json()['top5'] == expected, name  # the same pixels, so the same answer exactly
        else:
            assert answer.json()['top5'][0]['label'] == label or name in ('1-bit', 'CMYK JPEG'), name
    out_of_range = png(Image.fromarray((values * 3).astype(np.float32)), format='TIFF')
    refused = server.post(out_of_range, content_type='application/octet-stream')
    assert refused.status_code == 415 and 'mode F' in refused.json()['error']
    lab = png(Image.new('LAB', (28, 28)), format='TIFF')
    refused = server.post(lab, content_type='application/octet-stream')
    assert refused.status_code == 415 and 'mode LAB' in refused.json()['error']
    eps = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n'
    assert server.post(eps, content_type='application/octet-stream').status_code == 400  # never run by Ghostscript
    for body in (b'', original[:30], b'\x89PNG\r\n\x1a\n' + b'\x00' * 100):
        assert server.post(body).status_code == 400


def test_sigterm_with_a_stalled_upload_exits_within_the_drain_timeout(trained, labelled_png):
    server = Server(trained / 'scala', '--drain-timeout', '2', '--body-timeout', '60')
    stalled = server.connect()
    stalled.sendall(request_head(server, 100_000) + labelled_png[0][:100])
    time.sleep(0.3)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
        assert time.monotonic() - start < 2 + 2 + 3  # in-flight drain, queue drain, and the exit itself
    finally:
        stalled.close()
        server.stop()
