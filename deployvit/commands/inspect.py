"""`deployvit inspect`: params, FLOPs, depth and width of an arch file or of sampled archs."""

from __future__ import annotations

import json

import click
import numpy as np

from deployvit.arch import Arch, load_arch
from deployvit.commands import bounds
from deployvit.counting import count_flops, count_params
from deployvit.errors import DeployvitError
from deployvit.spaces import get_space


def describe(arch: Arch) -> dict:
    """The machine-readable facts `inspect --json` prints for one arch."""
    return {
        "space": arch.space,
        "params": count_params(arch),
        "flops": count_flops(arch),
        "depth": arch.depth,
        "embed_dim": [s.embed_dim for s in arch.stages] if arch.multi_stage else arch.embed_dim,
        "arch": arch.to_dict(),
    }


@click.command()
@click.argument("arch_file", required=False, type=click.Path())
@click.option("--space", "space_name", help="Space name or file: validate ARCH_FILE against it, or sample from it.")
@click.option("--sample", type=bounds.SAMPLES, help="Describe N archs sampled uniformly from --space.")
@click.option("--seed", type=bounds.SEED, default=0, show_default=True, help="Seed for --sample.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or a list with --sample).")
def inspect(arch_file: str | None, space_name: str | None, sample: int | None, seed: int, as_json: bool) -> None:
    """Print params, FLOPs (MACs), depth and embed dim of ARCH_FILE (an arch JSON or a run folder) or of
    --sample N archs."""
    if (arch_file is None) == (sample is None):
        raise DeployvitError("give either ARCH_FILE or --space NAME --sample N")
    if arch_file is not None:
        from deployvit.runs import arch_file as arch_of

        arch = load_arch(arch_of(arch_file, "ARCH_FILE"))
        # resolution and class count are the deployment's (a supernet trained on CIFAR-10 has 10 classes)
        get_space(space_name or arch.space).with_overrides(img_size=arch.img_size, num_classes=arch.num_classes).validate(arch)
        archs = [arch]
    else:
        if space_name is None:
            raise DeployvitError("--sample needs --space NAME")
        space = get_space(space_name)
        rng = np.random.default_rng(seed)
        archs = [space.sample(rng) for _ in range(sample)]
    rows = [describe(a) for a in archs]
    if as_json:
        click.echo(json.dumps(rows if sample else rows[0], indent=2))
        return
    click.echo(f"{'#':>3}  {'params':>10}  {'FLOPs (MACs)':>12}  {'depth':>5}  embed_dim")
    for i, row in enumerate(rows):
        click.echo(f"{i:>3}  {row['params'] / 1e6:>9.3f}M  {row['flops'] / 1e9:>11.3f}G  {row['depth']:>5}  {row['embed_dim']}")
