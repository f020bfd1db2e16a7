"""Images/s of one supernet training step vs the extracted standalone model of the same arch.

A supernet step (set_arch, forward through the sliced shared weights, loss, backward, AdamW step over
the shared weights) against the same step on `supernet.extract(arch)` (a plain ViT with copied
weights). Goal: the supernet step takes <= 1.10x the standalone step's time. Timed with the
codebase's one timing loop (`deployvit.timing.time_callable`; CUDA events on a GPU).
Prints a table and writes benchmarks/results/train_throughput-<device>.json.

    python benchmarks/train_throughput.py                          # GPU: autoformer-tiny; CPU: test space
    python benchmarks/train_throughput.py --space autoformer-tiny --batch-size 128 --amp bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from _record import RESULTS, save_result
from deployvit.counting import count_flops, count_params
from deployvit.devices import device_name
from deployvit.timing import time_callable
from deployvit.spaces import get_space
from deployvit.supernet import Supernet
from deployvit.train.distributed import pick_device

GOAL = 1.10


def train_step(model: torch.nn.Module, before: Callable[[], None], x, y, amp: torch.dtype | None) -> Callable[[], None]:
    """One optimizer step of `model` on (x, y); `before` runs first (the supernet's set_arch)."""
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)
    ctx = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp else contextlib.nullcontext

    def step() -> None:
        with torch.inference_mode(False), torch.enable_grad():  # time_callable times in inference mode
            before()
            with ctx():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=None, help="default: autoformer-tiny on CUDA, test on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 64 on CPU")
    ap.add_argument("--archs", type=int, default=3, help="random archs besides the largest and smallest")
    ap.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating supernet/standalone rounds")
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    space = get_space(args.space or ("autoformer-tiny" if cuda else "test"))
    batch = args.batch_size or (128 if cuda else 64)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if amp is not None and not cuda:
        raise SystemExit("--amp needs CUDA")
    torch.manual_seed(args.seed)
    supernet = Supernet(space).to(device).train()
    rng = np.random.default_rng(args.seed)
    archs = [("max", space.max_arch()), ("min", space.min_arch())] + [(f"random{i}", space.sample(rng)) for i in range(args.archs)]
    x = torch.randn(batch, space.in_chans, space.img_size, space.img_size, device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)

    rows = []
    for name, arch in archs:
        standalone = supernet.extract(arch).to(device).train()
        steps = {
            "supernet": train_step(supernet, lambda a=arch: supernet.set_arch(a), x, y, amp),
            "standalone": train_step(standalone, lambda: None, x, y, amp),
        }
        # alternate the two in rounds, so drift of a shared machine hits both alike; report medians
        timings: dict[str, list] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for kind, fn in steps.items():
                timings[kind].append(time_callable(fn, device=device, warmup_s=args.warmup_s, repeats=args.repeats,
                                                   label=f"{kind} step {name}"))
        ratios = [s.median_us / a.median_us for s, a in zip(timings["supernet"], timings["standalone"])]
        med = {k: statistics.median(t.median_us for t in v) for k, v in timings.items()}
        ratio = statistics.median(ratios)
        rows.append({
            "arch_name": name, "arch": arch.to_dict(), "params": count_params(arch), "flops": count_flops(arch),
            "supernet_img_s": batch / (med["supernet"] / 1e6), "standalone_img_s": batch / (med["standalone"] / 1e6),
            "time_ratio": ratio, "round_ratios": ratios, "meets_goal": ratio <= GOAL,
            "timings": {k: [t.to_dict() for t in v] for k, v in timings.items()},
        })

    dev_name = device_name(device.type)
    print(f"train step throughput, space {space.name}, batch {batch}, amp {args.amp}, {dev_name} ({args.threads} threads), "
          f"ratio = median over {args.rounds} alternating rounds")
    head = f"{'arch':<8} {'params':>9} {'MMACs':>8} {'supernet img/s':>15} {'standalone img/s':>17} {'ratio':>6} {'<=1.10':>6}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch_name']:<8} {r['params'] / 1e6:>8.3f}M {r['flops'] / 1e6:>8.2f} {r['supernet_img_s']:>15.1f} "
              f"{r['standalone_img_s']:>17.1f} {r['time_ratio']:>6.3f} {'yes' if r['meets_goal'] else 'NO':>6}")
    result = {
        "goal_time_ratio": GOAL, "device": dev_name,
        "torch": torch.__version__, "threads": args.threads, "space": space.name, "batch_size": batch, "amp": args.amp,
        "repeats": args.repeats, "rounds": args.rounds,
        "rows": rows,
    }
    save_result(RESULTS / f"train_throughput-{device.type}-{space.name}.json", "train_throughput", result, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
