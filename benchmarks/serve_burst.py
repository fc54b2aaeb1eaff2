"""Many clients at once against `scalavit serve` with its default limits: every one must get an answer, 200 or 503
with Retry-After, never a reset connection or another status.

    python benchmarks/serve_burst.py --checkpoint runs/serve-tiny56 --clients 1000 --repeats 3
"""
import argparse
import asyncio
import collections
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import Server, test_images  # noqa: E402


async def burst(url: str, images: list[bytes], clients: int) -> collections.Counter:
    """``clients`` predicts sent at once, each on its own connection; what came back, by status ('reset' for a
    connection that ended without an answer)."""
    outcomes = collections.Counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(i: int):
            try:
                async with session.post('/predict', data=images[i % len(images)],
                                        headers={'Content-Type': 'image/png'}) as response:
                    await response.read()
                    retry = response.status != 503 or int(response.headers.get('Retry-After', '0')) >= 1
                    outcomes[str(response.status) if retry else f'{response.status} without Retry-After'] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                outcomes[f'reset ({type(error).__name__})'] += 1
        await asyncio.gather(*(one(i) for i in range(clients)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--clients', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--server-options', nargs='*', default=['--threads', '1'])
    args = parser.parse_args()
    images, _ = test_images(200)
    server = Server(args.checkpoint, 'slackfit', 100.0, args.server_options)
    try:
        for repeat in range(args.repeats):
            outcomes = asyncio.run(burst(server.url, images, args.clients))
            print(f"[{repeat + 1}/{args.repeats}] {args.clients} at once: "
                  + ', '.join(f'{status}: {count}' for status, count in sorted(outcomes.items())))
    finally:
        server.stop()


if __name__ == '__main__':
    main()
