"""`deployvit train-supernet`, `retrain` and `evaluate` (thin: parse, set up, call deployvit.train).

All three run under torchrun unchanged: `torchrun --nproc-per-node N -m deployvit train-supernet ...`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from deployvit.commands import bounds
from deployvit.errors import DeployvitError
from deployvit.train.focus import FocusOptions
from deployvit.train.recipe import REGIMES
from deployvit.train.sampler_base import SAMPLERS
from deployvit.train.retrain import DISTILL_MODES, Distill
from deployvit.train.samplers import SamplerOptions


#: the bound of every numeric recipe flag (shown in --help; see commands/bounds.py)
RECIPE_BOUNDS = {
    "epochs": bounds.EPOCHS, "batch_size": bounds.BATCH, "lr": bounds.LR, "lr_base": bounds.LR, "lr_base_size": bounds.BATCH,
    "min_lr": bounds.NON_NEGATIVE, "warmup_lr": bounds.NON_NEGATIVE, "warmup_epochs": bounds.ints(0, 100_000),
    "weight_decay": bounds.NON_NEGATIVE, "clip_grad": bounds.NON_NEGATIVE, "ema_decay": bounds.RATE, "drop_path": bounds.RATE,
    "pos_embed_std": bounds.floats(0, 100, min_open=True), "mixup": bounds.floats(0, 100), "cutmix": bounds.floats(0, 100),
    "smoothing": bounds.RATE, "re_prob": bounds.FRACTION, "seed": bounds.SEED,
}


def _flag_type(f):
    """click type of a recipe field (annotations are strings under `from __future__ import annotations`)."""
    if "choices" in f.metadata:
        return click.Choice(f.metadata["choices"])
    if f.name in RECIPE_BOUNDS:
        return RECIPE_BOUNDS[f.name]
    return {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)


def _recipe_options(out_default: str):
    """The flags shared by train-supernet and retrain: one per `Recipe` field (default and help read
    from the dataclass, so the CLI's default run is `Recipe()`'s), then how the run executes."""
    from dataclasses import fields

    from deployvit.train.recipe import Recipe

    def decorate(fn):
        opts = [
            click.option("--data", required=True, help="'digits', a CIFAR-10/100 python folder, or an ImageFolder root (train/, val/)."),
            click.option("--out", type=click.Path(file_okay=False), default=out_default, show_default=True, help="Run directory."),
        ]
        for f in fields(Recipe):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            opts.append(click.option(flag, f.name, type=_flag_type(f), default=f.default, show_default=f.default is not None,
                                     help=f.metadata["help"]))
        opts += [
            click.option("--ckpt-every", type=bounds.STEPS, default=0, show_default=True, help="Also checkpoint every K steps (0: per epoch only)."),
            click.option("--num-workers", type=bounds.WORKERS, default=0, show_default=True, help="DataLoader workers per rank."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
            click.option("--deterministic", is_flag=True, help="torch deterministic algorithms (exact resume on CPU)."),
            click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt."),
            click.option("--log-every", type=bounds.STEPS, default=50, show_default=True, help="Print every N steps (0: epochs only)."),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


def _recipe(kw: dict, facts, info):
    """The user's recipe flags resolved against the data and world size."""
    from dataclasses import fields

    from deployvit.train.recipe import Recipe

    return Recipe(**{f.name: kw[f.name] for f in fields(Recipe)}).resolve(facts, info.world_size)


def _run(fn):
    """Join torchrun's process group (if any) around a command; only rank 0 prints."""

    @functools.wraps(fn)
    def wrapper(**kw):
        from deployvit.train.distributed import init_distributed, shutdown
        from deployvit.train.loop import RunOptions

        info = init_distributed(kw["device"])
        log = (lambda msg: click.echo(msg, err=True)) if info.is_main else (lambda msg: None)
        opts = RunOptions(Path(kw["out"]), kw["resume"], kw["ckpt_every"], kw["num_workers"], kw["deterministic"], log, kw["log_every"])
        if opts.num_workers < 0 or opts.log_every < 0:
            raise DeployvitError("--num-workers and --log-every must be >= 0")
        try:
            fn(kw, info, opts)
        finally:
            shutdown(info)

    return wrapper


@click.command("train-supernet")
@click.option("--space", "space_name", required=True, help="Space preset or file (class count follows the data).")
@click.option("--sampler", type=click.Choice(["auto", *SAMPLERS]), default="auto", show_default=True,
              help=f"Which subnets each step trains. auto: the recipe's ({', '.join(f'{r.sampler} {n}' for n, r in REGIMES.items())}); "
                   f"{SAMPLERS.describe()}.")
@click.option("--sandwich-random", type=bounds.ints(0, 64), default=SamplerOptions.sandwich_random, show_default=True,
              help="sandwich: random subnets per step.")
@click.option("--groups", type=bounds.ints(1, 256), default=SamplerOptions.groups, show_default=True,
              help="multi-arch: subnets per batch (>= 16 images each).")
@click.option("--unlock-epochs", type=bounds.ints(0, 100_000), default=SamplerOptions.unlock_epochs, show_default=True,
              help="multi-arch: epochs to unlock all widths.")
@click.option("--focus-budgets", default=None, help="focus: comma-separated normalised FLOPs budgets in [0,1] (default uniform).")
@click.option("--focus-epsilon", type=bounds.FRACTION, default=None,
              help=f"focus: initial share of uniform draws ({FocusOptions.epsilon}).")
@click.option("--focus-update-every", type=bounds.ints(1, 10**6), default=None,
              help=f"focus: steps between sampler updates ({FocusOptions.update_every}).")
@click.option("--cyclic", is_flag=True, help="ViTAS-style cyclic weight sharing of the embedding channels.")
@click.option("--identity-shift", is_flag=True, help="ViTAS-style identity shifting of skipped layers.")
@click.option("--held-out-per-class", type=bounds.ints(0, 100_000), default=25, show_default=True, help="Train images per class kept for search scoring.")
@_recipe_options("runs/supernet")
@_run
def train_supernet_cmd(kw, info, opts) -> None:
    """Train the weight-sharing supernet of --space on --data with a subnet --sampler."""
    from deployvit.spaces import get_space
    from deployvit.train.data import data_facts, held_out_split, open_data
    from deployvit.train.samplers import MIN_GROUP, make_sampler
    from deployvit.train.setup import fit_space
    from deployvit.train.supernet_train import default_sampler, new_supernet, sampler_caveat, train_supernet

    source = open_data(kw["data"])
    facts = data_facts(source)
    recipe = _recipe(kw, facts, info)
    space = fit_space(get_space(kw["space_name"]), source)
    held = held_out_split(source, kw["held_out_per_class"])
    steps = len(held.train) // max(recipe.batch_size * info.world_size, 1) * recipe.epochs
    budgets = None
    if kw["focus_budgets"]:
        try:
            budgets = [float(b) for b in kw["focus_budgets"].split(",")]
        except ValueError:
            raise DeployvitError(f"--focus-budgets: expected numbers like 0.25,0.5, got {kw['focus_budgets']!r}") from None
    name = default_sampler(recipe) if kw["sampler"] == "auto" else kw["sampler"]
    if name == "multi-arch" and kw["groups"] * MIN_GROUP > recipe.batch_size:
        raise DeployvitError(f"--groups {kw['groups']} needs --batch-size >= {kw['groups'] * MIN_GROUP} "
                             f"({MIN_GROUP} images per group), got {recipe.batch_size}")
    sampler = make_sampler(
        name, space, recipe.seed, total_steps=steps, sandwich_random=kw["sandwich_random"], groups=kw["groups"],
        unlock_epochs=kw["unlock_epochs"], focus_budgets=budgets, focus_epsilon=kw["focus_epsilon"],
        focus_update_every=kw["focus_update_every"],
    )
    caveat = sampler_caveat(recipe, name)
    opts.banner = f"{recipe.describe(facts, info.world_size)}; sampler {name}" + (f"\n{caveat}" if caveat else "")
    supernet = new_supernet(space, recipe, cyclic=kw["cyclic"], identity_shift=kw["identity_shift"])
    history = train_supernet(supernet, source, held, sampler, recipe, opts, info)
    opts.log(f"supernet saved to {opts.out / 'last.pt'} ({len(history)} epochs)")
    if info.is_main:
        click.echo(f"next: `deployvit search --score supernet --supernet {opts.out}` (its space and data are in the checkpoint)")


@click.command("retrain")
@click.option("--arch", "arch_file", required=True, type=click.Path(),
              help="Arch JSON to train, or a search run folder (its best.arch.json).")
@click.option("--init", "init", default="scratch", show_default=True,
              help="'scratch', or a supernet checkpoint (train-supernet's last.pt, import's supernet.pt) or supernet run folder "
                   "to inherit weights from.")
@click.option("--distill", type=click.Choice(DISTILL_MODES), is_flag=False, flag_value="soft", default=None,
              help="Knowledge distillation from the --init supernet's largest arch (an import's parent), DeiT's soft "
                   "(KL at temperature --distill-tau; the default when given without a value) or hard (the teacher's top-1 as label).")
@click.option("--distill-alpha", type=bounds.FRACTION, default=Distill.alpha, show_default=True,
              help="--distill: the teacher's share of the loss (the recipe's loss gets 1 - alpha).")
@click.option("--distill-tau", type=bounds.floats(0, 100, min_open=True), default=Distill.tau, show_default=True,
              help="--distill soft: temperature of both softmaxes.")
@_recipe_options("runs/retrain")
@_run
def retrain_cmd(kw, info, opts) -> None:
    """Train the standalone model of --arch (from inherited supernet weights or from scratch, optionally
    distilling from the supernet's largest arch)."""
    from deployvit.arch import load_arch
    from deployvit.train.checkpoint import load_supernet
    from deployvit.train.data import data_facts, open_data
    from deployvit.train.retrain import new_model, retrain
    from deployvit.train.setup import seed_init

    from deployvit.runs import arch_file, supernet_file

    arch = load_arch(arch_file(kw["arch_file"]))
    if kw["distill"] and kw["init"] == "scratch":
        raise DeployvitError("--distill needs --init SUPERNET (its largest arch is the teacher)")
    source = open_data(kw["data"])
    facts = data_facts(source)
    recipe = _recipe(kw, facts, info)
    teacher = distill = None
    if kw["init"] == "scratch":
        model = new_model(arch, recipe)
    else:
        seed_init(recipe.seed)
        kw["init"] = str(supernet_file(kw["init"], "--init"))
        supernet, _ = load_supernet(kw["init"])
        supernet.space.validate(arch)
        model = supernet.extract(arch, drop_path_rate=recipe.drop_path)
        if kw["distill"]:
            teacher = supernet.extract(supernet.space.max_arch()).eval()
            distill = Distill(kw["distill"], kw["distill_alpha"], kw["distill_tau"])
    opts.banner = recipe.describe(facts, info.world_size)
    result = retrain(model, source, recipe, kw["init"], opts, info, teacher=teacher, distill=distill)
    last = result["history"][-1] if result["history"] else {}
    opts.log(f"val top1 {result['initial']['val_top1']:.2f} -> {last.get('val_top1', float('nan')):.2f}; "
             f"model saved to {opts.out / 'checkpoint.safetensors'}")
    if info.is_main:
        click.echo(f"next: `deployvit export --arch {opts.out}` (export, verify and time the trained model), "
                   f"or `deployvit evaluate --model {opts.out} --data {kw['data']}`")


@click.command("evaluate")
@click.option("--model", "model_file", type=click.Path(), help="checkpoint.safetensors written by retrain, or its run folder.")
@click.option("--supernet", "supernet_file", type=click.Path(),
              help="Supernet checkpoint (last.pt / checkpoint.pt) or supernet run folder; needs --arch.")
@click.option("--arch", "arch_file", type=click.Path(),
              help="Arch JSON (or a search run folder: its best.arch.json) to evaluate with inherited supernet weights.")
@click.option("--data", required=True, help="'digits', a CIFAR folder or an ImageFolder root.")
@click.option("--split", type=click.Choice(["val", "held-out", "train"]), default="val", show_default=True,
              help="held-out: the supernet run's recorded held-out images.")
@click.option("--batch-size", type=bounds.BATCH, default=256, show_default=True, help="Images per evaluation batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the result as JSON.")
def evaluate_cmd(model_file, supernet_file, arch_file, data, split, batch_size, device, json_out) -> None:
    """Top-1 / top-5 accuracy of a retrained model, or of an arch with inherited supernet weights."""
    from deployvit import io
    from deployvit.arch import load_arch
    from deployvit.train.augment import get_aug
    from deployvit.train.checkpoint import load_model, load_supernet
    from deployvit.train.data import held_out_from_ids, open_data
    from deployvit.train.distributed import pick_device
    from deployvit.train.evaluate import eval_loader, evaluate_accuracy
    from deployvit.train.setup import eval_dataset, transforms_for

    from deployvit import runs

    if (model_file is None) == (supernet_file is None):
        raise DeployvitError("give either --model checkpoint.safetensors or --supernet CKPT --arch A.json")
    model_file = model_file and runs.model_file(model_file, "--model")
    supernet_file = supernet_file and runs.supernet_file(supernet_file)
    arch_file = arch_file and runs.arch_file(arch_file)
    held_ids = None
    if model_file is not None:
        if arch_file is not None:
            raise DeployvitError("--arch goes with --supernet; a --model checkpoint carries its own arch")
        model, arch = load_model(model_file)
    else:
        if arch_file is None:
            raise DeployvitError("--supernet needs --arch A.json")
        supernet, meta = load_supernet(supernet_file)
        arch = load_arch(arch_file)
        supernet.space.validate(arch)
        supernet.set_arch(arch)
        model, held_ids = supernet, meta["held_out"]["ids"]
    if split == "held-out" and held_ids is None:
        raise DeployvitError("--split held-out needs --supernet (the held-out images are recorded in its checkpoint)")
    source = open_data(data)
    if source.num_classes != arch.num_classes:
        raise DeployvitError(f"arch has {arch.num_classes} classes but {data} has {source.num_classes}")
    held = held_out_from_ids(source, held_ids) if split == "held-out" else None
    dataset = eval_dataset(source, split, transforms_for(source, get_aug("none"), arch.img_size).eval, held)
    dev = pick_device(device)
    model.to(dev)
    result = {**evaluate_accuracy(model, eval_loader(dataset, batch_size), dev), "split": split, "arch": arch.to_dict()}
    click.echo(f"top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  ({result['n']} images, {split})")
    if json_out:
        io.write_json(json_out, result)
