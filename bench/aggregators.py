"""Benchmark the aggregation rules and pre-aggregations (and ByzFL's, when installed).

    python bench/aggregators.py [--sizes 16x1000000,32x1000000,64x250000]
                                [--repeats 3] [--device cpu|cuda|all] [--no-byzfl]
                                [--no-memory] [--output bench/results/aggregators.md]

Prints a markdown table: median wall time of ``--repeats`` calls after one
warm-up call, the speed-up over ByzFL's equivalent on the same input, and the
peak extra memory of one call as a multiple of the input's size.

Memory, honestly measured:

* CPU: torch's CPU allocations are plain ``malloc``, invisible to
  ``tracemalloc``. Each size is measured in a fresh child process started with
  ``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks are mmapped and go back to the
  kernel when freed, so freed memory is not silently reused); before each call
  the child resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), and
  the figure is ``VmHWM`` after the call minus ``VmRSS`` before it. It counts
  the result too (``nnm`` returns an ``(n, d)`` tensor: 1x by itself).
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus the memory allocated before the call.

ByzFL is optional and must never become a dependency. Install it for this
benchmark only, without its dependencies (plain ``pip install byzfl`` pulls a
multi-GB CUDA torch over the CPU one)::

    pip install --no-deps byzfl scipy

Its package ``__init__`` imports torchvision and seaborn, so only its
``aggregators`` modules are loaded, through stub parent packages.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ostracon.aggregator import get_pre_aggregation, get_rule  # noqa: E402

RULE_NAMES = [
    "mean", "cwmed", "cwtm", "meamed", "krum", "multikrum", "geometric_median", "centered_clipping", "mda", "nna",
]
PRE_NAMES = ["nnm", "bucketing", "clipping", "arc"]
MAX_SUBSETS = 100_000  # mda's default refusal threshold
BYZFL_MDA_MAX_SUBSETS = 2_000  # ByzFL's MDA loops over subsets in Python; beyond this it takes minutes


def declared_f(n: int) -> int:
    """The ``f`` every rule gets: about a quarter of the rows, less than krum's bound n > 2f + 2."""
    return max(0, min(n // 4 - 1, (n - 3) // 2))


def mda_f(n: int, f: int) -> int:
    """Largest ``f' <= f`` whose exact search fits ``MAX_SUBSETS`` subsets."""
    while f > 0 and math.comb(n, f) > MAX_SUBSETS:
        f -= 1
    return f


# --------------------------------------------------------------------------- the calls


def ours(name: str, x: torch.Tensor, f: int):
    """A closure running our rule/pre-aggregation ``name`` on ``x`` with the benchmark's parameters."""
    if name in PRE_NAMES:
        fn = get_pre_aggregation(name)
        gen = torch.Generator(device=x.device).manual_seed(0)
        params = {"bucketing": {"bucket_size": 2, "generator": gen}}.get(name, {})
        return lambda: fn(x, f=f, **params)
    fn = get_rule(name)
    if name == "nna":
        return lambda: fn(x, f=f, pivot=x[0])
    if name == "centered_clipping":  # ByzFL's defaults: centre 0, tau 100, one iteration
        zero = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        return lambda: fn(x, f=f, pivot=zero, tau=100.0, iterations=1)
    if name == "mda":
        return lambda: fn(x, f=mda_f(x.shape[0], f))
    return lambda: fn(x, f=f)


def load_byzfl():
    """ByzFL's aggregator modules, without running ``byzfl/__init__`` (it needs torchvision); None if absent."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for pkg in ("byzfl", "byzfl.utils", "byzfl.aggregators"):
        if pkg not in sys.modules:
            stub = types.ModuleType(pkg)
            stub.__path__ = [str(root.joinpath(*pkg.split(".")[1:]))]
            sys.modules[pkg] = stub
    try:
        aggs = importlib.import_module("byzfl.aggregators.aggregators")
        pres = importlib.import_module("byzfl.aggregators.preaggregators")
    except ImportError as exc:  # e.g. scipy missing
        print(f"byzfl found but not loadable ({exc}); skipping it", file=sys.stderr)
        return None
    try:
        from importlib.metadata import version

        ver = version("byzfl")
    except Exception:  # noqa: BLE001 - the version is only printed: any failure reads "?"
        ver = "?"
    return types.SimpleNamespace(aggs=aggs, pres=pres, version=ver)


def byzfl_call(byz, name: str, x: torch.Tensor, f: int):
    """ByzFL's equivalent of ``name`` on ``x`` (a fresh clone per call where ByzFL writes its input), or None."""
    a, p = byz.aggs, byz.pres
    makers = {
        "mean": lambda: a.Average(),
        "cwmed": lambda: a.Median(),
        "cwtm": lambda: a.TrMean(f=f),
        "meamed": lambda: a.Meamed(f=f),
        "krum": lambda: a.Krum(f=f),
        "multikrum": lambda: a.MultiKrum(f=f),
        "geometric_median": lambda: a.GeometricMedian(),
        "centered_clipping": lambda: a.CenteredClipping(),
        "mda": lambda: a.MDA(f=mda_f(x.shape[0], f)),
        "nna": lambda: a.MoNNA(f=f, idx=0),
        "nnm": lambda: p.NNM(f=f),
        "bucketing": lambda: p.Bucketing(s=2),
        "clipping": lambda: p.Clipping(c=2.0),
        "arc": lambda: p.ARC(f=f),
    }
    if name == "mda" and math.comb(x.shape[0], mda_f(x.shape[0], f)) > BYZFL_MDA_MAX_SUBSETS:
        return None
    obj = makers[name]()
    if name in ("clipping", "arc"):  # ByzFL clips rows of its input in place: give it a copy, made untimed
        return obj, True
    return obj, False


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int, *, make_arg=None, warmup: bool = True) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call); ``make_arg`` builds an untimed argument."""
    samples = []
    for i in range(repeats + (1 if warmup else 0)):
        arg = make_arg() if make_arg else None
        sync(device)
        t0 = time.perf_counter()
        out = fn(arg) if make_arg else fn()
        sync(device)
        dt = time.perf_counter() - t0
        del out, arg
        if warmup and i == 0:
            continue
        samples.append(dt)
    return statistics.median(samples)


def make_input(n: int, d: int, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(n * 7919 + d)
    return torch.randn(n, d, generator=g, dtype=dtype).to(device)


# --------------------------------------------------------------------------- memory


def _proc_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_child(n: int, d: int, with_byzfl: bool) -> None:
    """Runs in a fresh process: print ``{"ours": {name: bytes}, "byzfl": {...}}`` as JSON."""
    x = make_input(n, d, torch.device("cpu"))
    f = declared_f(n)
    small = make_input(n, 2048, torch.device("cpu"))
    byz = load_byzfl() if with_byzfl else None
    result = {"ours": {}, "byzfl": {}}
    for name in RULE_NAMES + PRE_NAMES:
        ours(name, small, f)()  # first-call set-up (thread pools, caches) is not the rule's memory
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _proc_kib("VmRSS")
        ours(name, x, f)()  # the result counts too: it exists at the peak
        result["ours"][name] = (_proc_kib("VmHWM") - before) * 1024
        if byz is not None:
            made = byzfl_call(byz, name, x, f)
            if made is None:
                continue
            obj, copies = made
            arg = x.clone() if copies else x
            byzfl_call(byz, name, small, f)[0](small.clone())  # warm-up on its own object (some keep state)
            Path("/proc/self/clear_refs").write_text("5")
            before = _proc_kib("VmRSS")
            obj(arg)  # the result counts too: it exists at the peak
            result["byzfl"][name] = (_proc_kib("VmHWM") - before) * 1024
            del arg
    print(json.dumps(result))


def cpu_memory(n: int, d: int, with_byzfl: bool) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", f"{n}x{d}"]
    if not with_byzfl:
        cmd.append("--no-byzfl")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_memory(fn, device: torch.device) -> int:
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return peak


# --------------------------------------------------------------------------- main


def _runnable() -> str:
    """Tasks running right now (the 4th field of /proc/loadavg), or '?' off Linux."""
    try:
        return Path("/proc/loadavg").read_text().split()[3].split("/")[0]
    except OSError:
        return "?"


def run(sizes, devices, repeats: int, with_byzfl: bool, with_memory: bool) -> str:
    byz = load_byzfl() if with_byzfl else None
    lines = [
        "## Aggregation benchmark",
        "",
        f"- sizes (n x d): {', '.join(f'{n}x{d}' for n, d in sizes)}; dtype float32; "
        "f = n // 4 - 1 (below krum's bound) "
        f"(mda: the largest f' <= f with C(n, f') <= {MAX_SUBSETS})",
        f"- devices: {', '.join(str(d) for d in devices)}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; CPU {platform.processor() or platform.machine()} x {os.cpu_count()}",
        f"- time: median of {repeats} calls after 1 warm-up call (ByzFL: median of {min(repeats, 2)} after "
        "1 warm-up call; a single call when it takes over 2 s)",
        f"- ByzFL: {'byzfl ' + byz.version if byz else 'not run'}; its defaults where ours differ: geometric_median "
        "(ByzFL 3 iterations, ours 200/tol 1e-6), centered_clipping both pivot 0, tau 100, 1 iteration; "
        "nna = ByzFL MoNNA(idx=0) with pivot x[0]",
        f"- machine at start: {_runnable()} runnable tasks, 1-min load average {os.getloadavg()[0]:.1f} "
        f"(it lags); process niceness {os.nice(0)}. Other processes on the machine distort the times",
        "- memory: peak extra memory of one call / input size (CPU: peak-RSS delta in a fresh process, "
        "CUDA: max_memory_allocated delta); result included",
        "",
        "| n x d | device | name | ours (ms) | ByzFL (ms) | speed-up | ours mem (x input) | ByzFL mem (x input) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for device in devices:
        for n, d in sizes:
            x = make_input(n, d, device)
            f = declared_f(n)
            size = x.numel() * x.element_size()
            mem = {"ours": {}, "byzfl": {}}
            if with_memory and device.type == "cpu":
                mem = cpu_memory(n, d, byz is not None)
            for name in RULE_NAMES + PRE_NAMES:
                fn = ours(name, x, f)
                t_ours = time_call(fn, device, repeats)
                if device.type == "cuda" and with_memory:
                    mem["ours"][name] = cuda_memory(fn, device)
                t_byz = t_inplace = None
                made = byzfl_call(byz, name, x, f) if byz else None
                if made is not None:
                    obj, copies = made
                    first = time.perf_counter()
                    obj(x.clone() if copies else x)
                    sync(device)
                    first = time.perf_counter() - first
                    if first > 2.0:  # slow: one call is enough
                        t_byz = first
                    elif copies:  # it overwrites its input: time it in place, and with the copy a caller needs
                        t_inplace = time_call(obj, device, min(repeats, 2), warmup=False, make_arg=x.clone)
                        t_byz = time_call(lambda obj=obj, x=x: obj(x.clone()), device, min(repeats, 2), warmup=False)
                    else:
                        t_byz = time_call(lambda obj=obj, x=x: obj(x), device, min(repeats, 2), warmup=False)
                label = name if name != "mda" else f"mda (f={mda_f(n, f)})"
                mo, mb = mem["ours"].get(name), mem["byzfl"].get(name)
                byz_cell = "" if t_byz is None else f"{t_byz * 1e3:.1f}"
                if t_inplace is not None:
                    byz_cell = f"{t_byz * 1e3:.1f} ({t_inplace * 1e3:.1f} in place)†"
                lines.append(
                    f"| {n}x{d} | {device.type} | {label} | {t_ours * 1e3:.1f} | {byz_cell} | "
                    f"{'' if t_byz is None else f'{t_byz / t_ours:.1f}x'} | "
                    f"{'' if mo is None else f'{mo / size:.2f}'} | {'' if mb is None else f'{mb / size:.2f}'} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    lines += [
        "",
        "† ByzFL's Clipping and ARC overwrite the rows of their input; ours return a new tensor. The first "
        "figure (and the speed-up) includes the copy a caller needs to keep its input, the one in brackets does not.",
        "mda: ByzFL's MDA loops over the subsets in Python; it is only run when C(n, f) <= "
        f"{BYZFL_MDA_MAX_SUBSETS}.",
    ]
    return "\n".join(lines) + "\n"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        n, _, d = part.strip().lower().partition("x")
        if not (n.isdigit() and d.isdigit()) or int(n) < 3 or int(d) < 1:
            raise argparse.ArgumentTypeError(f"size {part!r} is not NxD with N >= 3 (krum needs 3 rows)")
        sizes.append((int(n), int(d)))
    return sizes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("16x1000000,32x1000000,64x250000"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="cpu")
    ap.add_argument("--no-byzfl", action="store_true", help="do not run ByzFL even if it is installed")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    ap.add_argument("--output", type=Path, help="also write the table to this file")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        (n, d), = parse_sizes(args.memory_child)
        memory_child(n, d, not args.no_byzfl)
        return
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu", "cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            ap.error("--device cuda: CUDA is not available")
        devices = ["cpu"]
    t0 = time.perf_counter()
    table = run(args.sizes, [torch.device(d) for d in devices], args.repeats, not args.no_byzfl, not args.no_memory)
    table += f"\n_total benchmark time: {time.perf_counter() - t0:.0f} s_\n"
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)


if __name__ == "__main__":
    main()
