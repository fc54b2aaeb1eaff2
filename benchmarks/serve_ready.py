"""How long `scalavit serve` takes from its start to `/health/ready`: with no profile cache (it measures a short
profile), and restarted with the profile it cached (it checks it with nine forwards). Each start is a fresh process;
the two kinds alternate, ``--repeats`` times each, and the page reports the median and the range.

    python benchmarks/serve_ready.py --checkpoint runs/serve-tiny56 runs/default --output docs/serving_ready.md
"""
import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scalavit.evaluate import cpu_name
from scalavit.files import write_text_atomically


def time_to_ready(checkpoint: str, options: list[str]) -> tuple[float, str]:
    """Seconds from the process's start to /health/ready answering 200, and the server's line saying it is ready."""
    with tempfile.TemporaryDirectory() as folder:
        port = 8400 + os.getpid() % 500
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, '-m', 'scalavit', 'serve', checkpoint, '--port', str(port),
                                    *options], stdout=subprocess.DEVNULL, stderr=open(Path(folder) / 'log', 'w'))
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError((Path(folder) / 'log').read_text()[-2000:])
                try:
                    if httpx.get(f'http://127.0.0.1:{port}/health/ready', timeout=1).status_code == 200:
                        elapsed = time.perf_counter() - start
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        ready = next((line for line in (Path(folder) / 'log').read_text().splitlines() if 'ready in' in line), '')
    return elapsed, re.sub(r'^scalavit serve: ', '', ready)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', nargs='+', required=True)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--server-options', nargs='*', default=['--threads', '1', '--max-batch-size', '16'])
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()
    rows, notes = [], []
    for checkpoint in args.checkpoint:
        cache = Path(tempfile.mkdtemp(prefix='scalavit-profiles-'))
        try:
            time_to_ready(checkpoint, [*args.server_options, '--profile-cache', str(cache)])  # fills the cache
            times = {'no cache (a short profile)': [], 'restart with the cached profile': []}
            for _ in range(args.repeats):
                cold, cold_line = time_to_ready(checkpoint, [*args.server_options, '--no-profile-cache'])
                warm, warm_line = time_to_ready(checkpoint, [*args.server_options, '--profile-cache', str(cache)])
                times['no cache (a short profile)'].append(cold)
                times['restart with the cached profile'].append(warm)
                print(f"{checkpoint}: {cold:.1f} s without a cache, {warm:.1f} s with it", flush=True)
            notes += [f"- `{checkpoint}`, without a cache: {cold_line}", f"- `{checkpoint}`, restarted: {warm_line}"]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for kind, values in times.items():
            rows.append(f"| `{checkpoint}` | {kind} | {spread(values)} |")
    command = 'python benchmarks/serve_ready.py ' + ' '.join(sys.argv[1:])
    page = '\n'.join([
        '# From start to ready', '', f'Command: `{command}`', '',
        f'Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}. Each start a fresh '
        f'process (`scalavit serve RUN {" ".join(args.server_options)}`), timed from its launch to `/health/ready` '
        f'answering 200 (loading torch and the model included); {args.repeats} starts of each kind, alternating; '
        'median (range).', '', '| checkpoint | start | seconds to ready |', '|---|---|---|', *rows, '',
        'What the servers said when ready (the last start of each kind):', '', *notes, ''])
    print(page)
    if args.output:
        write_text_atomically(args.output, page)


if __name__ == '__main__':
    main()
