"""A real `scalavit serve` in its own process on a loopback port, for the serving tests."""
import asyncio
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from scalavit.checkpoint import load_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def read_all(stream) -> collections.deque:
    """The lines of a process's output, read all along by a thread: a full pipe would block the process's next
    write. The last 2000 are kept."""
    lines = collections.deque(maxlen=2000)
    threading.Thread(target=lines.extend, args=(stream,), daemon=True).start()
    return lines


class Server:
    def __init__(self, checkpoint, *options, env=None, ready_within: float = 180):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'scalavit', 'serve', str(checkpoint), '--port', str(self.port),
             '--profile-repeats', '3', '--max-batch-size', '8',
             *([] if '--profile-cache' in options else ['--no-profile-cache']), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        self.output = read_all(self.process.stdout)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(1)  # for the reader to take the last lines
                raise AssertionError(''.join(self.output))
            try:
                if httpx.get(f'{self.url}/health/ready', timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError('the server did not become ready')

    def post(self, body: bytes, content_type='image/png', path='/predict', **headers):
        return httpx.post(f'{self.url}{path}', content=body, headers={'Content-Type': content_type, **headers},
                          timeout=30)

    def burst(self, bodies, **headers):
        """All at once, as concurrent clients."""
        async def send():
            async with httpx.AsyncClient(base_url=self.url, timeout=60,
                                         limits=httpx.Limits(max_connections=len(bodies))) as client:
                return await asyncio.gather(*(client.post('/predict', content=body, headers={
                    'Content-Type': 'image/png', **headers}) for body in bodies))
        return asyncio.run(send())

    def connect(self, timeout: float = 10) -> socket.socket:
        connection = socket.create_connection(('127.0.0.1', self.port), timeout=timeout)
        return connection

    def rss_bytes(self) -> int:
        with open(f'/proc/{self.process.pid}/status') as status:
            kilobytes = next(line for line in status if line.startswith('VmRSS:')).split()[1]
        return int(kilobytes) * 1024

    def stop(self):
        """As an orchestrator stops it: SIGTERM, then SIGKILL if it has not ended within 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def descendants(pid: int) -> dict[int, str]:
    """The processes under ``pid``, with their command lines."""
    parents, commands = {}, {}
    for entry in Path('/proc').iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
                commands[int(entry.name)] = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
        except (OSError, IndexError):
            pass
    tree, grown = {pid}, True
    while grown:
        below = {p for p, parent in parents.items() if parent in tree} - tree
        tree, grown = tree | below, bool(below)
    return {p: commands.get(p, '') for p in tree - {pid}}


def labelled_png(run) -> tuple[bytes, str]:
    """A validation PNG of the run's data that the checkpoint classifies correctly, with its class name."""
    model, _ = load_model(str(run / 'scala'))
    classes = model.pretrained_cfg['label_names']
    for path in sorted((run / 'data' / 'val').glob('*/*.png')):
        pixels = torch.from_numpy(np.array(Image.open(path), dtype=np.float32)).reshape(1, 1, 28, 28) / 255
        x = (pixels - model.pretrained_cfg['mean'][0]) / model.pretrained_cfg['std'][0]
        with torch.no_grad():
            if classes[model.eval()(x).argmax()] == path.parent.name:
                return path.read_bytes(), path.parent.name
    raise AssertionError('the trained checkpoint classifies no validation image correctly')
