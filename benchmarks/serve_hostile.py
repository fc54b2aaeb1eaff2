"""`scalavit serve` against hostile and careless clients: each figure of the serving issue beside its target.

A real server (default limits) in its own process; this process plays the clients:

- one upload sent over 5 s, then 20 normal requests: how many are answered 200 within their SLO;
- 300 idle connections: how long `/health/live` takes meanwhile, and when the server has closed them all;
- six large images (4000x4000 RGB PNGs) decoded at once: the longest `/health/live` meanwhile;
- a 10000x10000 PNG: its status and how long the refusal took;
- four connections sending 100 MB of headers each: resident memory before and after, and what the server read;
- SIGTERM while an upload stalls: how long until the process has exited;
- Fashion-MNIST test images through `/predict` and through the Open Inference Protocol: how many get the same top-1.

    python benchmarks/serve_hostile.py --checkpoint runs/serve-tiny56 --repeats 3
"""
import argparse
import asyncio
import io
import json
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time

import httpx
import numpy as np
from PIL import Image

from serve_load import Server, test_images


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def head(port: int, length: int, slo_ms: float) -> bytes:
    return (f'POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n'
            f'Content-Length: {length}\r\nX-SLO-Ms: {slo_ms:g}\r\n\r\n').encode()


def read_until_closed(connection: socket.socket, timeout: float) -> bytes:
    connection.settimeout(timeout)
    data = b''
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def live_latency(url: str) -> float:
    start = time.monotonic()
    httpx.get(f'{url}/health/live', timeout=30)
    return time.monotonic() - start


def slow_upload(server: Server, image: bytes) -> int:
    """Requests of 20 answered 200 within their SLO after one upload sent over 5 s."""
    with socket.create_connection(('127.0.0.1', server.port)) as slow:
        slow.sendall(head(server.port, len(image), 20000))
        for piece in np.array_split(np.frombuffer(image, dtype=np.uint8), 10):
            time.sleep(0.5)
            slow.sendall(piece.tobytes())
        slow.recv(65536)
    within = 0
    for _ in range(20):
        answer = httpx.post(f'{server.url}/predict', content=image, headers={'Content-Type': 'image/png'}, timeout=30)
        body = answer.json()
        within += answer.status_code == 200 and body['queue_ms'] + body['compute_ms'] <= body['slo_ms']
    return within


def idle_connections(server: Server, count: int = 300) -> tuple[float, float]:
    """The longest of three /health/live while ``count`` connections stay idle, and the seconds until the server
    has closed them all."""
    idle = [socket.create_connection(('127.0.0.1', server.port)) for _ in range(count)]
    start = time.monotonic()
    longest = max(live_latency(server.url) for _ in range(3))
    for connection in idle:
        read_until_closed(connection, timeout=max(0.1, 30 - (time.monotonic() - start)))
        connection.close()
    return longest, time.monotonic() - start


def parallel_decodes(server: Server) -> float:
    """The longest /health/live while six 4000x4000 PNGs are decoded."""
    pattern = np.tile(np.arange(256, dtype=np.uint8), (4000, 16))[:, :4000]
    large = png(Image.fromarray(np.stack([pattern, pattern.T, 255 - pattern], -1), 'RGB'))
    latencies = []

    async def send_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await asyncio.gather(*(client.post('/predict', content=large, headers={
                'Content-Type': 'image/png', 'X-SLO-Ms': '20000'}) for _ in range(6)))

    sender = threading.Thread(target=lambda: asyncio.run(send_all()))
    sender.start()
    while sender.is_alive():
        latencies.append(live_latency(server.url))
        time.sleep(0.02)
    return max(latencies)


def bomb(server: Server) -> tuple[int, float]:
    data = png(Image.new('L', (10000, 10000)))
    start = time.monotonic()
    answer = httpx.post(f'{server.url}/predict', content=data, headers={'Content-Type': 'image/png'}, timeout=60)
    return answer.status_code, time.monotonic() - start


def rss_mb(server: Server) -> float:
    with open(f'/proc/{server.process.pid}/status') as status:
        return int(next(line for line in status if line.startswith('VmRSS:')).split()[1]) / 1024


def header_flood(server: Server) -> tuple[float, float, float]:
    """Resident MB before and after four connections sent up to 100 MB of headers each, and the most MB one of
    them got into the server before it was cut off."""
    before, sent = rss_mb(server), []

    def flood():
        total = 0
        with socket.create_connection(('127.0.0.1', server.port)) as connection:
            connection.sendall(b'GET /health/live HTTP/1.1\r\nHost: x\r\nX-Flood: ')
            try:
                for _ in range(100):
                    connection.sendall(b'a' * 2 ** 20)
                    total += 2 ** 20
            except OSError:
                pass
        sent.append(total / 2 ** 20)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1)
    return before, rss_mb(server), max(sent)


def sigterm_with_a_stalled_upload(checkpoint: str, options: list[str]) -> float:
    server = Server(checkpoint, 'slackfit', 100, options)
    stalled = socket.create_connection(('127.0.0.1', server.port))
    stalled.sendall(head(server.port, 100_000, 100) + b'x' * 100)
    time.sleep(0.5)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
        return time.monotonic() - start
    except subprocess.TimeoutExpired:
        return float('inf')  # still running a minute later
    finally:
        stalled.close()
        server.stop()


def same_top1(server: Server, images: list[bytes]) -> float:
    """Images whose top-1 label is the same through /predict and through /v2 (the binary tensor extension); NaN
    where the server has no /v2."""
    if httpx.get(f'{server.url}/v2', timeout=10).status_code != 200:
        return float('nan')
    agree = 0
    for image in images:
        plain = httpx.post(f'{server.url}/predict', content=image, headers={'Content-Type': 'image/png'},
                           timeout=30).json()['top5'][0]['label']
        request = json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                          'parameters': {'binary_data_size': 4 + len(image)}}],
                              'outputs': [{'name': 'labels'}]}).encode()
        answer = httpx.post(f'{server.url}/v2/models/scalavit/infer', content=request + struct.pack('<I', len(image))
                            + image, headers={'Inference-Header-Content-Length': str(len(request))}, timeout=30)
        agree += answer.json()['outputs'][0]['data'][0] == plain
    return agree


def spread(values: list[float], digits: int = 3) -> str:
    values = [round(v, digits) for v in values]
    return f"{statistics.median(values):g}" + (f" ({min(values):g}-{max(values):g})" if len(values) > 1 else '')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--images', type=int, default=200, help='test images through /predict and /v2')
    parser.add_argument('--server-options', nargs='*', default=['--threads', '1', '--profile-repeats', '10'])
    args = parser.parse_args()
    images, _ = test_images(args.images)
    rows = {}
    for repeat in range(args.repeats):
        server = Server(args.checkpoint, 'slackfit', 100, args.server_options)
        try:
            figures = dict(slow=slow_upload(server, images[0]))
            figures['idle_live_s'], figures['idle_closed_s'] = idle_connections(server)
            figures['decode_live_s'] = parallel_decodes(server)
            figures['bomb_status'], figures['bomb_s'] = bomb(server)
            figures['rss_before'], figures['rss_after'], figures['flood_mb'] = header_flood(server)
            figures['same_top1'] = same_top1(server, images)
        finally:
            server.stop()
        figures['sigterm_s'] = sigterm_with_a_stalled_upload(args.checkpoint, args.server_options)
        print(f"[{repeat + 1}/{args.repeats}] {figures}", flush=True)
        for key, value in figures.items():
            rows.setdefault(key, []).append(value)
    print(f"\n| case (default limits; {args.repeats} repeats: median (range)) | target | measured |\n|---|---|---|")
    print(f"| after one 5-s upload, of 20 requests answered 200 within their SLO | at least 18 | "
          f"{spread(rows['slow'])} |")
    print(f"| /health/live with 300 idle connections open, s | under 1 | {spread(rows['idle_live_s'])} |")
    print(f"| the 300 idle connections all closed after, s | within the header timeout (10) | "
          f"{spread(rows['idle_closed_s'], 1)} |")
    print(f"| longest /health/live while six 4000x4000 PNGs decode, s | (7.3 before) | {spread(rows['decode_live_s'])} |")
    print(f"| a 10000x10000 PNG: status, s | 413 before any large allocation | {spread(rows['bomb_status'])}, "
          f"{spread(rows['bomb_s'])} |")
    print(f"| 4 x 100 MB of headers: resident MB before, after; MB one sent before the cut | bounded (0.8 -> 2.5 GB "
          f"before) | {spread(rows['rss_before'], 0)}, {spread(rows['rss_after'], 0)}; {spread(rows['flood_mb'], 0)} |")
    print(f"| SIGTERM with one stalled upload: s to exit | within --drain-timeout (10) | {spread(rows['sigterm_s'], 1)} |")
    print(f"| same top-1 through /v2 as through /predict, of {args.images} | all | {spread(rows['same_top1'])} |")


if __name__ == '__main__':
    main()
