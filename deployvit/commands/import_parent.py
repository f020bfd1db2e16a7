"""`deployvit import`: start from weights you already have (thin: parse, read, call deployvit.importers)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deployvit import io
from deployvit.commands import bounds, conflicts
from deployvit.errors import DeployvitError
from deployvit.weights import check_timm_name
from deployvit.importers.ordering import ORDERS
from deployvit.importers.timm_vit import SUPPORTED


def _model_args(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; a value is read as JSON (32, 4.0, true, "avg"), else taken as a string."""
    args = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise DeployvitError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. img_size=32")
        try:
            args[key] = json.loads(text)
        except json.JSONDecodeError:
            args[key] = text
    return args


@click.command("import")
@click.option("--from", "source", required=True, metavar="SOURCE",
              help=f"timm:MODEL ({SUPPORTED}; refused by name: distillation tokens, LayerScale, register tokens, "
                   "no class token, QK-norm, other norms or activations), or autoformer (AutoFormer's released "
                   "supernet-tiny/small/base.pth, with --weights).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Weights file: a timm/DeiT state dict (.pth, .bin, .safetensors, or a {'model': ...} wrapper) or "
                   "AutoFormer's supernet-*.pth. Read safely (tensors and plain data only; argparse.Namespace for "
                   "AutoFormer). Without it, timm downloads its pretrained weights (needs internet).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New folder for supernet.pt, space.yaml, parent.arch.json and import.json (written whole or not at all).")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="timm only: an argument of timm.create_model, repeatable (e.g. embed_dim=96 depth=6 num_heads=3). "
                   "img_size, patch_size and num_classes are read from --weights when not given.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="Your own space (YAML/JSON) instead of the default one; its choices must fit within the parent's "
                   "weights. Default: timm: embed dims and MLP ratios at 1/2, 5/8, 3/4, 7/8 and 1 x the parent's, "
                   "heads and depth from half the parent's to all; autoformer: the released space.")
@click.option("--order", type=click.Choice(ORDERS),
              help="Importance ordering of channels, heads and MLP units before slicing: activation (mean activations "
                   "on 4 batches of --data; the default for timm with --data), magnitude (weights only; the default "
                   "without --data), none (the parent's order; the default for AutoFormer, whose supernet was trained "
                   "for its order).")
@click.option("--data", help="Your labelled data ('digits', a CIFAR folder or an ImageFolder root): held-out images "
                             "are carved from its train split for `search --score supernet` (use images the parent "
                             "did not train on); --order activation measures on a few other training batches.")
@click.option("--held-out-per-class", type=bounds.ints(1, 100_000), default=25, show_default=True,
              help="Held-out images per class carved from --data (as train-supernet does).")
@click.option("--name", help="Name of the imported space (default: the timm model's name, or autoformer-<size>-released).")
def import_cmd(source, weights, out, model_args, space_file, order, data, held_out_per_class, name) -> None:
    """Import a parent's weights as a searchable deployvit supernet (a timm ViT/DeiT, or an AutoFormer supernet)."""
    from deployvit.importers import common

    out_dir = io.check_out_path(out, "--out", folder=True)
    common.check_out(out_dir)  # before reading anything
    kind, model_name = _source(source, name)
    conflicts.check("import", {"kind": kind})
    with io.output_lock(out_dir, "--out"):  # one import per output folder; the kernel frees it if killed
        common.remove_dead_temp(out_dir)  # what a killed import into this folder left (it held the lock)
        io.check_writable(out_dir.parent, "--out's parent folder")  # a full or read-only disk, before the weights are read
        _import(kind, model_name, weights, out_dir, model_args, space_file, order, data, held_out_per_class, name)


def _source(source: str, name: str | None) -> tuple[str, str]:
    """(kind, model name) of --from, every name checked before anything is read: the model name is
    a plain timm name (no hub reference: nothing is downloaded by name; no path), --name a new space
    name that can be a file name."""
    from deployvit.spaces import PRESETS, SPACE_NAME_MAX

    if name is not None:
        io.safe_component(name, "--name", SPACE_NAME_MAX)
        if name in PRESETS:
            raise DeployvitError(f"--name {name!r}: give a new space name (not a preset's)")
    kind, _, model_name = source.partition(":")
    if kind == "timm" and model_name:
        return kind, check_timm_name(model_name, "--from timm:MODEL", "--weights")
    if source == "autoformer":
        return source, ""
    raise DeployvitError(f"--from {source!r}: expected timm:MODEL (e.g. timm:deit_tiny_patch16_224) or autoformer")


def _import(kind, model_name, weights, out_dir, model_args, space_file, order, data, held_out_per_class, name) -> None:
    """The import proper (`import_cmd` has checked its names and holds the output folder's lock)."""
    from deployvit.importers import common, read_state
    from deployvit.spaces import load_space

    if kind == "timm":
        if order is None:  # activation ordered better on digits (benchmarks/from_parent.py), and needs data
            order = "activation" if data is not None else "magnitude"
        parent = _timm(model_name, weights, _model_args(model_args), name)
    else:
        from deployvit.importers.autoformer import ALLOWED_GLOBALS, autoformer_parent

        order = order or "none"
        parent = autoformer_parent(read_state(weights, ALLOWED_GLOBALS), weights, name)
    space = common.fit_user_space(load_space(space_file), parent.model.arch) if space_file else None
    held_out, data_meta, batches = {"ids": []}, None, None
    if data is not None:
        from deployvit.train.data import open_data

        data_source = open_data(data)
        if data_source.num_classes != parent.model.arch.num_classes:
            raise DeployvitError(f"--data {data} has {data_source.num_classes} classes, the parent {parent.model.arch.num_classes}")
        held_out, batches = common.held_out_and_batches(data_source, parent.model.arch.img_size, held_out_per_class)
        data_meta = {"kind": data_source.kind, "root": data_source.root}
    echo = lambda msg: click.echo(msg, err=True)  # noqa: E731
    for note in parent.notes:
        echo(f"note: {note}")
    supernet, record = common.build_import(parent, space, order, batches, log=echo)
    imported = _imported(parent, supernet, record, held_out, data_meta, weights, echo)
    files = common.write_import(out_dir, imported)
    _summary(imported, out_dir, files, data)


def _timm(model_name: str, weights: str | None, args: dict, name: str | None):
    from deployvit.importers import read_state, state_dict_of
    from deployvit.importers.timm_vit import timm_parent

    state = state_dict_of(read_state(weights), weights) if weights else None
    return timm_parent(model_name, args, state, weights, name)


def _imported(parent, supernet, record, held_out, data_meta, weights, echo):
    from deployvit.importers import common

    space = supernet.space
    archs = {}
    for arch_name, arch in parent.archs.items():
        if space.contains(arch):
            archs[arch_name] = arch
        else:
            echo(f"note: {arch_name} is not in space {space.name!r}; not written")
    source = dict(parent.source, **({"sha256": io.sha256(weights)} if weights else {}))
    record = dict(record, source=source, space={"name": space.name, "hash": space.hash(), "size": space.size()},
                  notes=parent.notes, held_out_images=len(held_out["ids"]))
    return common.Imported(supernet, space.max_arch(), record, archs, held_out, data_meta)


def _summary(imported, out_dir: Path, files: list[Path], data: str | None) -> None:
    from deployvit.counting import count_flops, count_params
    from deployvit.importers.common import CHECKPOINT, PARENT_ARCH, SPACE_FILE

    parent, space = imported.parent, imported.supernet.space
    click.echo(f"imported {imported.record['source']['from']}: {parent.summary()} "
               f"({count_params(parent) / 1e6:.2f}M params, {count_flops(parent) / 1e9:.3f} GFLOPs)")
    click.echo(f"space {space.name}: {space.size():,} archs; files: {', '.join(f.name for f in files)} in {out_dir}")
    scoring = (f"--score supernet --supernet {out_dir / CHECKPOINT} --data {data}" if data else
               "--score dss (import with --data to search by inherited accuracy)")
    half = count_flops(parent) / 2
    flops = f"{half / 1e9:.3g}G" if half >= 1e8 else f"{half / 1e6:.3g}M"
    click.echo(f"next: deployvit search --space {out_dir / SPACE_FILE} --flops {flops} {scoring}")
    click.echo(f"      deployvit export --arch {out_dir / PARENT_ARCH} --checkpoint {out_dir / CHECKPOINT} --format onnx")
