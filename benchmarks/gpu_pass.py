"""The one prepared GPU pass: everything deployvit needs measured on a GPU, in one call under 9 minutes
on one H100/H200, every result under one output folder.

    python benchmarks/gpu_pass.py --out OUT            # on the GPU machine
    python benchmarks/gpu_pass.py --dry-run --out OUT  # every step on the CPU, tiny settings (CI runs this)
    python benchmarks/gpu_pass.py --install OUT        # here, afterwards: copy OUT's results into the repo

Steps, in order (each a subprocess with its own time limit, so a crash or a hang in one is a failed row,
never the end of the pass; optional steps are skipped when the time left is below their estimate):
1. `pytest -m gpu`: the GPU tests; their summary line is kept.
2. measured latency tables: autoformer-tiny cudagraph fp16 at batch 1 and 64 (50 repeats, 10
   calibration and 50 validation archs each), with their validation statistics;
3. supernet scoring throughput on the GPU (archs/s, AMP, streamed and cached held-out batches),
   on a random-weight autoformer-tiny supernet and the built-in digits data at 224x224;
4. `export_speed` GPU rows at batch 1 and 64: eager, compile, cudagraph, and onnxruntime's CUDA
   provider when onnxruntime-gpu is installed (else a "not measured" row with the install line);
5. time permitting (about 2 minutes left), the autoformer-small cudagraph fp16 table at batch 64;
6. `lut_accuracy` on fresh archs (30 per table, fewer when time is short) for every measured table.
It prints a table of what it did and what failed, and exits 1 when a step failed, timed out or (not
being optional) was skipped, 0 otherwise.

Files (7, at most 2 folders down, as the device tool brings back): OUT/summary.json (steps, pytest summary
line, scoring throughput, machine facts, the exact commands), OUT/log.txt (every step's output),
OUT/tables/*.json (3), OUT/lut_accuracy.json, OUT/export_speed.json. On a real GPU the tables are also
copied into latency_tables/<label>/ of the checkout it ran in (lost with the device machine: run
`--install OUT` here to put them, and the benchmark JSON, where they belong in the repo, then commit
with the command recorded in summary.json). A dry run writes only OUT.

Running it on the project's device machine (the `run` tool; one H200, torch 2.11 cu130, timm, onnx,
onnxruntime CPU, no TensorRT, no network): one call,
    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_pass.py --out $OUT/gpu_pass", timeout_s=600)
The pass keeps to --budget-s (default 540 s) including its own start, so the call ends inside 10 min.
For the onnxruntime CUDA rows bring onnxruntime-gpu (a CUDA 13 build, e.g. 1.23+ for cp312; its wheel
is ~250 MB, over one call's 64 MiB): here, `echo /.whl/ >> .git/info/exclude`, download the wheel with
`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 -d .whl onnxruntime-gpu==VERSION`, split it with
`split -b 50M .whl/onnxruntime_gpu-*.whl .whl/ort.part.` and remove the wheel; then one part per call,
with the machine kept warm (calls less than 30 s apart), each call carrying only that part
(`carry=[".whl/ort.part.aa"]`, command `mkdir -p /tmp/ortp && cp .whl/ort.part.* /tmp/ortp/`), and the last call
joining and installing beside (not over) the CPU package, then running the pass:
    cat /tmp/ortp/ort.part.* > /tmp/onnxruntime_gpu-VERSION-cp312-cp312-manylinux_2_28_x86_64.whl &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu /tmp/onnxruntime_gpu-*.whl &&
    PYTHONPATH=/tmp/ortgpu PYTHONUNBUFFERED=1 python3 benchmarks/gpu_pass.py --out $OUT/gpu_pass
(PYTHONPATH puts onnxruntime-gpu's module first: the CPU package stays installed but is shadowed, so
they never mix in one folder; deployvit imports torch first, which loads the CUDA 13 libraries the
CUDA provider needs). The wheel name must keep its real file name for pip to accept it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BUDGET_S = 540.0  # 9 minutes: the whole pass, start-up included
TABLES = (("autoformer-tiny", 1), ("autoformer-tiny", 64), ("autoformer-small", 64))
DRY_TABLES = (("test", 1), ("test", 4), ("test", 2))


@dataclass
class Step:
    """One thing the pass does: a command (argv), a limit, and the time it needs to be worth starting."""

    name: str
    argv: Callable[["Pass"], list[str] | None]  # None: nothing to do (a reason is set on the pass)
    limit_s: float
    needs_s: float = 0.0  # a step starts only with at least this much time left
    optional: bool = False  # "time permitting": a skip is not a failure
    reserve_s: float = 0.0  # time kept back for the steps after this one


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, timeout, skipped
    seconds: float
    note: str = ""
    command: str = ""
    cpu_s: float | None = None  # CPU time of the step's processes (wall time is inflated on a shared machine)


@dataclass
class Pass:
    out: Path
    dry_run: bool
    label: str
    deadline: float
    outcomes: list[Outcome] = field(default_factory=list)
    pytest_summary: str | None = None
    scoring: dict | None = None
    skip_reason: str = ""

    @property
    def tables_dir(self) -> Path:
        return self.out / "tables"

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _python() -> list[str]:
    return [sys.executable]


def _table_path(p: Pass, space: str, batch: int) -> Path:
    from deployvit.latency.table import table_filename

    runtime, precision = ("eager", "fp32") if p.dry_run else ("cudagraph", "fp16")
    return p.tables_dir / table_filename(space, runtime, precision, batch)


def pytest_argv(p: Pass) -> list[str]:
    # the dry run collects one file: collecting the whole suite only to skip its GPU tests costs CI 20 s
    where = ROOT / "tests" / "test_latency_timing.py" if p.dry_run else ROOT / "tests"
    # one process (not pyproject's `-n auto`): GPU tests that time kernels must not share the GPU with
    # each other, and the GPU machine need not have pytest-xdist
    return _python() + ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", "-p", "no:xdist", str(where)]


def table_argv(index: int) -> Callable[[Pass], list[str]]:
    def argv(p: Pass) -> list[str]:
        space, batch = (DRY_TABLES if p.dry_run else TABLES)[index]
        common = ["--space", space, "--batch-size", str(batch), "--out", str(_table_path(p, space, batch))]
        if p.dry_run:
            return _python() + ["-m", "deployvit", "profile", "--device", "cpu", "--runtime", "eager", "--precision", "fp32",
                                *common, "--warmup", "0.05", "--repeats", "20", "--calib-archs", "4", "--val-archs", "2",
                                "--threads", "1", "--clock", "cpu"]  # CPU time and medians of 20: robust on a loaded CI machine
        return _python() + ["-m", "deployvit", "profile", "--device", p.label, "--runtime", "cudagraph", "--precision", "fp16",
                            *common, "--warmup", "0.2", "--repeats", "50", "--calib-archs", "10", "--val-archs", "50"]

    return argv


def finished_tables(folder: Path) -> list[Path]:
    """The tables a pass finished (a failed profile leaves only its `.progress.json`)."""
    return sorted(t for t in folder.glob("*.json") if not t.name.endswith(".progress.json")) if folder.is_dir() else []


def lut_argv(p: Pass) -> list[str] | None:
    tables = finished_tables(p.tables_dir)
    if not tables:
        p.skip_reason = "no table was measured"
        return None
    # fresh archs per table: 30, or what the time left allows (a GPU arch takes about 1 s to build and time)
    archs = 2 if p.dry_run else max(5, min(30, int((p.left() - 30) / (1.2 * len(tables)))))
    sizing = ["--archs", str(archs)] + (["--repeats", "3"] if p.dry_run else [])
    return _python() + [str(ROOT / "benchmarks" / "lut_accuracy.py"), *[a for t in tables for a in ("--table", str(t))],
                        *sizing, "--out", str(p.out / "lut_accuracy.json")]


def export_speed_argv(p: Pass) -> list[str]:
    script = [str(ROOT / "benchmarks" / "export_speed.py"), "--runtimes", "eager,compile,cudagraph,onnxruntime",
              "--out", str(p.out / "export_speed.json")]
    if p.dry_run:  # no compile row: a cold inductor compile costs a CPU 10-50 s (tests cover it)
        script[2] = "eager,cudagraph,onnxruntime"
        return _python() + script + ["--archs", "test", "--batches", "1", "--device", "cpu", "--precision", "fp32",
                                     "--warmup", "0", "--repeats", "3", "--peak-n", "128"]
    return _python() + script + ["--archs", "autoformer-tiny,autoformer-small", "--batches", "1,64", "--device", "cuda",
                                 "--precision", "fp16", "--warmup", "0.5", "--repeats", "50"]


def scoring_argv(p: Pass) -> list[str]:
    return _python() + [str(Path(__file__).resolve()), "--step", "scoring", "--out", str(p.out)] + (["--dry-run"] if p.dry_run else [])


#: run in this order: the cheap and most wanted first; the autoformer-small table only with time to
#: spare, and lut_accuracy last, sized to the time left, over every table that was measured
STEPS = (
    Step("pytest -m gpu", pytest_argv, limit_s=180),
    Step("table autoformer-tiny b1", table_argv(0), limit_s=120),
    Step("table autoformer-tiny b64", table_argv(1), limit_s=120),
    Step("supernet scoring", scoring_argv, limit_s=90, needs_s=20),
    Step("export_speed", export_speed_argv, limit_s=200, needs_s=60, reserve_s=60),
    Step("table autoformer-small b64", table_argv(2), limit_s=150, needs_s=130, optional=True, reserve_s=40),
    Step("lut_accuracy", lut_argv, limit_s=150, needs_s=20),
)


def run_step(p: Pass, step: Step, log) -> Outcome:
    """Run one step as a subprocess within its limit and the pass's deadline; never raises."""
    left = p.left()
    if left < max(step.needs_s, 5.0):
        return Outcome(step.name, "skipped", 0.0, f"{left:.0f} s left, needs {max(step.needs_s, 5.0):.0f} s")
    p.skip_reason = ""
    try:
        argv = step.argv(p)
    except Exception as exc:  # a step that cannot even be set up is a failed row, not a stopped pass
        return Outcome(step.name, "failed", 0.0, f"setup: {exc}")
    if argv is None:
        return Outcome(step.name, "skipped", 0.0, p.skip_reason)
    command = " ".join(argv)
    limit = min(step.limit_s, max(left - step.reserve_s, step.needs_s, 5.0), left)
    log.write(f"\n===== {step.name}: {command}\n")
    log.flush()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONUNBUFFERED="1")
    if p.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is a CPU run, also on a GPU machine
    start, cpu_start = time.monotonic(), _children_cpu_s()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        log.write(text + f"\n[timed out after {limit:.0f} s]\n")
        return Outcome(step.name, "timeout", time.monotonic() - start, f"over its {limit:.0f} s limit", command)
    seconds, cpu_s = time.monotonic() - start, round(_children_cpu_s() - cpu_start, 1)
    log.write(proc.stdout)
    log.flush()
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    note = _note(p, step, lines)
    if proc.returncode != 0:
        return Outcome(step.name, "failed", seconds, f"exit {proc.returncode}: {note}", command, cpu_s)
    return Outcome(step.name, "ok", seconds, note, command, cpu_s)


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _note(p: Pass, step: Step, lines: list[str]) -> str:
    """The line that says what a step found (and keeps what the summary needs)."""
    if step.argv is pytest_argv:
        summary = next((line for line in reversed(lines) if " in " in line and any(w in line for w in ("passed", "skipped", "failed", "error", "deselected"))),
                       None)
        p.pytest_summary = summary.strip("= ") if summary else None
        return p.pytest_summary or (lines[-1] if lines else "")
    if step.argv is scoring_argv:
        for line in lines:
            if line.startswith("RESULT "):
                p.scoring = json.loads(line[len("RESULT "):])
        if p.scoring:
            return (f"{p.scoring['cached']['archs_per_s']:.1f} archs/s cached, {p.scoring['streamed']['archs_per_s']:.1f} streamed "
                    f"({p.scoring['cached']['precision']})")
    if step.argv is lut_argv:
        return next((line for line in lines if line.startswith("LUT accuracy")), lines[-1] if lines else "")
    wrote = [line for line in lines if line.startswith("wrote ")]
    return (wrote[-1] if wrote else lines[-1] if lines else "")[:160]


# --- step 5, run in its own process: supernet scoring throughput ------------------------------------


def scoring(dry_run: bool) -> dict:
    """archs/s of the supernet score on this machine's GPU (CPU in a dry run): autoformer-tiny's
    supernet with random weights (throughput does not depend on them) on digits held-out images at the
    space's 224x224, first streamed from the data set (decode + resize every arch), then from the
    on-device cache."""
    import numpy as np
    import torch

    from deployvit.compute import compute_device
    from deployvit.search.supernet_score import SupernetAccuracy
    from deployvit.spaces import get_space
    from deployvit.supernet import Supernet
    from deployvit.train.augment import get_aug
    from deployvit.train.data import held_out_split, open_data
    from deployvit.train.setup import eval_dataset, fit_space, transforms_for

    device = compute_device("cpu" if dry_run else "cuda")
    source = open_data("digits")
    space = fit_space(get_space("test" if dry_run else "autoformer-tiny"), source)
    held = held_out_split(source, per_class=2 if dry_run else 50)
    dataset = eval_dataset(source, "held-out", transforms_for(source, get_aug("none"), space.img_size).eval, held)
    torch.manual_seed(0)
    supernet = Supernet(space)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(3 if dry_run else 40)]
    result = {"device": str(device), "space": space.name, "images": len(dataset), "img_size": space.img_size}
    for mode, cache_bytes, chosen in (("streamed", 0, archs[:2]), ("cached", 8 << 30, archs)):
        score = SupernetAccuracy(supernet, dataset, device=device, batch_size=256, cache_bytes=cache_bytes,
                                 workers=0 if dry_run else None)
        if mode == "cached":
            score(archs[0])  # fills the cache: the timed passes read it
            score._scored, score._seconds = 0, 0.0
        for arch in chosen:
            score(arch)
        result[mode] = score.throughput()
    return result


# --- the pass --------------------------------------------------------------------------------------


def detect_label() -> str:
    import torch

    from deployvit.devices import KNOWN_LABELS, label_matches

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0)
    return next((label for label in KNOWN_LABELS if label != "cpu" and label_matches(label, name)),
                "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:64])


def format_table(outcomes: list[Outcome]) -> str:
    rows = [f"{'step':<28} {'status':<8} {'wall s':>7} {'cpu s':>6}  note", "-" * 110]
    rows += [f"{o.name:<28} {o.status:<8} {o.seconds:>7.1f} {'' if o.cpu_s is None else f'{o.cpu_s:.1f}':>6}  {o.note}"
             for o in outcomes]
    return "\n".join(rows)


def install(folder: Path) -> int:
    """Copy a finished pass's tables into latency_tables/<label>/ and its benchmark JSON into
    benchmarks/results/ (on this machine, after bringing the folder back from the GPU machine)."""
    summary = json.loads((folder / "summary.json").read_text())
    if summary.get("dry_run") or summary.get("label") == "cpu":
        print(f"gpu_pass: {folder} is a dry run or a CPU run: nothing to install", file=sys.stderr)
        return 2
    label = summary["label"]
    dest = ROOT / "latency_tables" / label
    dest.mkdir(parents=True, exist_ok=True)
    for table in finished_tables(folder / "tables"):
        shutil.copy2(table, dest / table.name)
        print(f"installed {dest / table.name}")
    for name, target in (("lut_accuracy.json", f"lut_accuracy-{label}.json"), ("export_speed.json", "export_speed-cuda.json"),
                         ("summary.json", f"gpu_pass-{label}.json")):
        if (folder / name).is_file():
            shutil.copy2(folder / name, ROOT / "benchmarks" / "results" / target)
            print(f"installed benchmarks/results/{target}")
    return 0


def run_pass(out: Path, dry_run: bool, budget_s: float, started: float) -> int:
    from deployvit import io
    from deployvit.devices import machine_facts

    label = "cpu" if dry_run else detect_label()
    if not dry_run and label == "cpu":
        print("gpu_pass: torch sees no CUDA GPU on this machine (use --dry-run for the CPU rehearsal)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    p = Pass(out, dry_run, label, started + budget_s)
    print(f"gpu pass{' (dry run, CPU)' if dry_run else ''} on {label}: budget {budget_s:.0f} s, writing {out}", flush=True)
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        for step in STEPS:
            outcome = run_step(p, step, log)
            p.outcomes.append(outcome)
            print(f"  {outcome.name}: {outcome.status} ({outcome.seconds:.1f} s) {outcome.note}", flush=True)
    installed = []
    if not dry_run:  # a measured GPU table belongs in the repo's latency_tables/<label>/
        dest = ROOT / "latency_tables" / label
        for table in finished_tables(p.tables_dir):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(table, dest / table.name)
            installed.append(str(dest.relative_to(ROOT) / table.name))
    optional = {s.name for s in STEPS if s.optional}
    failed = [o for o in p.outcomes if o.status in ("failed", "timeout")]
    not_done = [o for o in p.outcomes if o.status == "skipped" and o.name not in optional]
    summary = {
        "benchmark": "gpu_pass",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/gpu_pass.py", *sys.argv[1:]]),
        "dry_run": dry_run,
        "label": label,
        "machine": machine_facts("cpu" if dry_run else "cuda"),
        "budget_s": budget_s,
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(sum(o.cpu_s or 0.0 for o in p.outcomes), 1),
        "load_average_1m_at_end": os.getloadavg()[0],
        "steps": [asdict(o) for o in p.outcomes],
        "pytest_gpu_summary": p.pytest_summary,
        "supernet_scoring": p.scoring,
        "tables_installed": installed,
        "failed": [o.name for o in failed],
        "not_done": [o.name for o in not_done],  # required steps skipped (no time left, or nothing to do)
    }
    io.write_json(out / "summary.json", summary)
    print("\n" + format_table(p.outcomes))
    ok = sum(o.status == "ok" for o in p.outcomes)
    print(f"\n{ok} of {len(p.outcomes)} steps ok, {len(failed)} failed, {len(p.outcomes) - ok - len(failed)} skipped; "
          f"{summary['seconds']:.0f} s ({summary['cpu_seconds']:.0f} s CPU); summary: {out / 'summary.json'}")
    return 1 if failed or not_done else 0


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results/gpu_pass[-dry-run])")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny settings (the test space)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time for the whole pass (default 540)")
    parser.add_argument("--install", type=Path, metavar="FOLDER", help="copy a finished pass's results into the repo")
    parser.add_argument("--step", choices=["scoring"], help=argparse.SUPPRESS)  # the pass runs its own steps this way
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:  # deployvit from this checkout, also without PYTHONPATH
        sys.path.insert(0, str(ROOT))
    if args.install:
        return install(args.install)
    if args.step == "scoring":
        print("RESULT " + json.dumps(scoring(args.dry_run)), flush=True)
        return 0
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu_pass-dry-run" if args.dry_run else "gpu_pass")
    return run_pass(out, args.dry_run, args.budget_s, started)


if __name__ == "__main__":
    sys.exit(main())
