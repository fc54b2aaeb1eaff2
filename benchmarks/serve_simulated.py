"""SlackFit on the simulator over the grid of traces and machines, against every fixed width, with the fluid bound:
how far its accuracy per offered request is from the best any mix of widths could do each second.

The profile is a server's own (`/widths`, saved by `serve_load.py` as docs/data/<page>_profile.json), so the figures
are this machine's; forwards take their median with the spread the profile's p95 shows (``--no-noise``: the median).

    python benchmarks/serve_simulated.py --profile docs/data/serving_flash_profile.json --output docs/serving_simulated.md
"""
import argparse
import json
import sys
import time
from pathlib import Path

from scalavit.files import write_text_atomically
from scalavit.serve.policy import Fixed, SlackFit
from scalavit.serve.simulator import fluid_bound, served_profile, simulate, summarise
from scalavit.serve.traces import MACHINES, TRACES, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', type=Path, required=True, help="a server's /widths answer, as JSON")
    parser.add_argument('--slo-ms', type=float, default=100.0)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-noise', dest='noise', action='store_false')
    parser.add_argument('--traces', nargs='+', default=list(TRACES), choices=list(TRACES))
    parser.add_argument('--machines', nargs='+', default=list(MACHINES), choices=list(MACHINES))
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()
    profile = served_profile(json.loads(args.profile.read_text()))
    full, ceiling = 1 / profile.latency[(profile.most_accurate, 1)], profile.rate(profile.cheapest)
    smallest = Fixed(profile.cheapest)
    rows, started = [], time.perf_counter()
    for name in args.traces:
        trace = TRACES[name](full, ceiling)
        for pattern in args.machines:
            slowdown = machine(pattern, trace.seconds)
            runs = {policy.name: summarise(simulate(profile, policy, trace, slowdown, args.slo_ms / 1e3, args.seed,
                                                    noise=args.noise), profile.accuracy)
                    for policy in (SlackFit(), *(Fixed(w) for w in profile.widths))}
            ours = runs.pop('slackfit')
            best = max(runs, key=lambda n: runs[n]['overall']['attainment'])
            worst_phase = min(ours['phases'][p]['attainment'] - max(r['phases'][p]['attainment'] for r in runs.values())
                              for p in ours['phases'])
            bound = fluid_bound(profile, trace, slowdown, args.seed)['overall']
            o, s = ours['overall'], runs[smallest.name]['overall']
            rows.append(f"| {name} | {pattern} | {o['attainment']:.4f} | {best} {runs[best]['overall']['attainment']:.4f}"
                        f" | {o['attainment'] - runs[best]['overall']['attainment']:+.4f} | {worst_phase:+.4f} | "
                        f"{o['accuracy']:.2f} / {s['accuracy']:.2f} | {o['accuracy_per_offered']:.2f} | {bound:.2f} | "
                        f"{bound - o['accuracy_per_offered']:.2f} | {o['needless_refusals']} |")
            print(rows[-1], flush=True)
    command = 'python benchmarks/serve_simulated.py ' + ' '.join(sys.argv[1:])
    page = '\n'.join([
        '# SlackFit on the simulator: every trace and machine, against every fixed width and the fluid bound', '',
        f'Command: `{command}` ({(time.perf_counter() - started) / 60:.1f} min)', '',
        f"Profile: `{args.profile}` (full width {full:.0f} req/s at batch 1, the smallest width's ceiling "
        f"{ceiling:.0f} req/s batched); SLO {args.slo_ms:g} ms; forwards at their median"
        f"{' with the profiled spread' if args.noise else ''}. Attainment counts every offered request; accuracy "
        "is the table's top-1 of the widths that answered; accuracy per offered request counts a miss as wrong, and "
        'the fluid bound is the most accurate mix of widths whose cost fits in each second (per-second: a server '
        'can beat it by up to what carries over between seconds).', '',
        '| trace | machine | SlackFit attainment | best fixed width | difference | worst phase difference | '
        'accuracy: SlackFit / smallest | accuracy per offered | fluid bound | gap | needless refusals |',
        '|---|---|---|---|---|---|---|---|---|---|---|', *rows, ''])
    if args.output:
        write_text_atomically(args.output, page)
    print(f"wrote {args.output}" if args.output else page)


if __name__ == '__main__':
    main()
