"""python -m benchmarks gpu-build: every GPU kernel compiled for sm_80 and sm_90, no GPU needed.

Kernels: ia_kernels/kernels/triton/logprobs.py and ppo.py (the grid's Triton backend), the
experimental ia_kernels/experimental/linear_stats.py (every input dtype it takes), and
csrc/cuda/*.cu.

Triton: the launchers of those modules are called with stand-in CUDA tensors over a
domain of shapes and loss options; each launch is recorded (kernel, arguments, constexprs,
num_warps) instead of run, so the variants are exactly those the launchers produce. Each distinct
variant is specialised by Triton's own binder (argument types, 16-byte divisibility) and compiled
ahead of time to a cubin for GPUTarget("cuda", 80, 32) and ("cuda", 90, 32); Triton's bundled
cuobjdump reports its registers, local memory (spills) and static shared memory, Triton's metadata
its dynamic shared memory.

CUDA: each csrc/cuda/*.cu is compiled with `nvcc -cubin -arch=sm_XX -Xptxas -v` and the flags of
CMakeLists.txt; ptxas reports registers, spill stores/loads and shared memory per kernel.

Fails (exit status 1) on a compile error, a spill (local memory), or shared memory above the
architecture's per-block limit. Writes a table and JSON like every suite.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import harness

ROOT = Path(__file__).resolve().parent.parent
ARCHS = (80, 90)
# Max shared memory per block (opt-in), bytes: A100 163 KB, H100 227 KB (CUDA programming guide).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


# --------------------------------------------------------------------------- Triton: enumeration

class StandIn:
    """A CUDA tensor as far as a launcher can tell (shape, strides, dtype, device), holding no memory."""

    def __init__(self, shape, dtype, device="cuda"):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self.is_cuda = True
        strides, acc = [], 1
        for n in reversed(self.shape):
            strides.append(acc)
            acc *= max(n, 1)
        self._strides = tuple(reversed(strides))

    def stride(self, dim=None):
        return self._strides if dim is None else self._strides[dim]

    def dim(self):
        return len(self.shape)

    def __getitem__(self, idx):
        return self


@dataclass
class Launch:
    module: str  # the kernel's module and global name (picklable: compiles run in worker processes)
    name: str
    args: tuple
    kwargs: dict
    origin: str  # which launcher call produced it
    covers: int = 1  # recorded launches this one stands for (same compiled code)

    @property
    def kernel(self):
        """The triton JITFunction."""
        import importlib

        return getattr(importlib.import_module(self.module), self.name)

    @property
    def constexprs(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if k not in ("num_warps", "num_stages", "enable_fp_fusion")}


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the launch."""

    def __init__(self, module, name, sink, origin):
        self.module, self.name, self.sink, self.origin = module, name, sink, origin

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.module, self.name, args, kwargs, self.origin()))
        return launch


@contextlib.contextmanager
def recording(modules):
    """Replaces every JITFunction global of `modules` by a recorder; yields (launches, set_origin)."""
    import triton

    launches: list[Launch] = []
    origin = ["?"]
    saved = []
    for mod in modules:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                saved.append((mod, name, obj))
                setattr(mod, name, _Recorder(mod.__name__, name, launches, lambda: origin[0]))
    try:
        yield launches, lambda text: origin.__setitem__(0, text)
    finally:
        for mod, name, obj in saved:
            setattr(mod, name, obj)


# Values of the loss options that reach a Triton constexpr; every bool field of PpoOptions is also
# tried both ways, so a new switch is enumerated without listing it here.
OPTION_VALUES = {"dual_clip": (None, 3.0), "kl_coef": (0.0, 0.1), "kl_estimator": ("k1", "k2", "k3"),
                 "entropy_coef": (0.0, 0.01), "importance": ("token", "sequence")}


def _options_domain():
    """Every combination of the loss options (ia_kernels.ops.ppo.PpoOptions) in OPTION_VALUES."""
    from ia_kernels.ops.ppo import PpoOptions

    base = PpoOptions(clip_low=0.2, clip_high=0.28)
    values = dict(OPTION_VALUES)
    for f in dataclasses.fields(PpoOptions):
        if isinstance(getattr(base, f.name), bool):
            values[f.name] = (False, True)
    names = list(values)
    for combo in itertools.product(*(values[n] for n in names)):
        yield dataclasses.replace(base, **dict(zip(names, combo)))


# Shapes: production vocabularies (Qwen2.5 151936, divisible by 16; GPT-2 50257, not) and small ones
# (the tests' odd vocabularies), so every block size the launchers choose is reached; sequence
# lengths likewise; advantages per sequence [B] and per token [B, T].
VOCABS = (151936, 50257, 1000, 8)
LENGTHS = (4096, 1000, 8)
QUICK_VOCABS = (151936, 50257)
QUICK_LENGTHS = (4096, 1000)


def enumerate_triton_launches(quick: bool = False) -> list[Launch]:
    """Calls each Triton launcher (the grid's and the experimental one) over the domain; returns the
    recorded launches."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("gpu-build compiles the kernels: run it without TRITON_INTERPRET (the kernels are "
                           "interpreter functions under it)")
    from ia_kernels.experimental import linear_stats as tls
    from ia_kernels.kernels.triton import logprobs as tlp
    from ia_kernels.kernels.triton import ppo as tppo

    f32, i64 = torch.float32, torch.int64
    rows = 64
    vocabs = QUICK_VOCABS if quick else VOCABS
    lengths = QUICK_LENGTHS if quick else LENGTHS
    with recording((tlp, tppo, tls)) as (launches, origin):
        for V in vocabs:
            # The fused GEMM + row statistics reads hidden and weight in the input dtype.
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                origin(f"linear_stats_forward V={V} H=4096 {str(dtype).replace('torch.', '')}")
                out = [StandIn((rows,), f32) for _ in range(3)]
                tls.linear_stats_forward(StandIn((rows, 4096), dtype), StandIn((V, 4096), dtype),
                                         StandIn((rows,), i64), 1.0, -100, *out)
            z = StandIn((rows, V), f32)
            t = StandIn((rows,), i64)
            vec = [StandIn((rows,), f32) for _ in range(8)]
            origin(f"rows_forward V={V}")
            tlp.rows_forward(z, t, 1.0, -100, *vec[:3])
            for g_ent in (None, vec[4]):
                origin(f"rows_backward V={V} g_entropy={g_ent is not None}")
                tlp.rows_backward(z, t, 1.0, -100, vec[0], vec[1], vec[2], g_ent)
            for opts in _options_domain():
                if opts.importance != "token":
                    continue  # fused_rows serves token-level importance only
                for ref in (None, vec[5]):
                    origin(f"fused_rows V={V} {_opts_text(opts)} ref={ref is not None}")
                    tppo.fused_rows(z, t, 1.0, -100, vec[0], vec[1], ref, vec[2], opts, *vec[3:7])
        B = 4
        for T in lengths:
            # terms allocates its outputs on the inputs' device: "meta" there, CUDA as far as
            # `is_cuda` (the launcher's choice of block size and warps) can tell.
            bt = [StandIn((B, T), f32, device="meta") for _ in range(6)]
            valid = StandIn((B, T), torch.bool, device="meta")
            scale = StandIn((B,), f32, device="meta")
            for adv in (StandIn((B,), f32, device="meta"), StandIn((B, T), f32, device="meta")):
                for opts in _options_domain():
                    origin(f"terms T={T} adv={'x'.join(map(str, adv.shape))} {_opts_text(opts)}")
                    tppo.terms(bt[0], bt[1], adv, valid, scale, bt[2] if opts.kl_coef else None,
                               bt[3] if opts.entropy_coef else None, opts)
    return launches


def _opts_text(o) -> str:
    text = (f"dual={o.dual_clip is not None} kl={o.kl_coef != 0}:{o.kl_estimator} ent={o.entropy_coef != 0} "
            f"imp={o.importance}")
    flags = [f.name for f in dataclasses.fields(o) if getattr(o, f.name) is True]
    return text + (" " + " ".join(flags) if flags else "")


def _concrete(arg):
    """A launch argument as Triton's binder sees it: a small CPU tensor of the same dtype for a tensor."""
    if isinstance(arg, (StandIn, torch.Tensor)):
        return torch.empty(16, dtype=arg.dtype)  # CPU allocations are 64-byte aligned, as CUDA's 256
    return arg


def specialise(launch: Launch, cc: int):
    """(signature, constexprs, attrs, options) exactly as Triton's JIT would compile this launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    k = launch.kernel
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(k.signature, k.params, backend)
    args = [_concrete(a) for a in launch.args]
    kwargs = {key: _concrete(v) for key, v in launch.kwargs.items()}
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = k._pack_args(backend, kwargs, bound, spec, options)
    return signature, constexprs, attrs, options


def variant_key(launch: Launch) -> tuple:
    """What makes Triton's JIT compile a separate binary: kernel, argument types and divisibility,
    constexprs, warps and stages."""
    sig, constexprs, attrs, options = specialise(launch, 90)
    return (launch.name, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())),
            str(sorted(attrs.items())), options.num_warps, options.num_stages)


def ttir_hash(launch: Launch, cc: int = 90) -> str:
    """Hash of the variant's Triton IR after Triton's TTIR passes, debug locations dropped: two
    variants with the same IR (e.g. a KL estimator code passed while the KL term is compiled out)
    compile to the same machine code, so only one of them is compiled (~30 ms instead of ~0.5 s)."""
    import hashlib

    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    sig, constexprs, attrs, options = specialise(launch, cc)
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    src = ASTSource(launch.kernel, sig, constexprs, attrs)
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                         context)
    module = stages["ttir"](module, {})
    text = f"{options.num_warps}/{options.num_stages}\n{module.str_nodebug()}"
    return hashlib.sha256(text.encode()).hexdigest()


def distinct_variants(launches: list[Launch], by_ir: bool = True, jobs: int = 1) -> list[Launch]:
    """The launches Triton would compile separately; with `by_ir`, one per distinct Triton IR
    (hashed in `jobs` processes). Each kept launch gets `covers`: how many launches it stands for."""
    by_key: dict = {}
    for launch in launches:
        by_key.setdefault(variant_key(launch), []).append(launch)
    groups = list(by_key.values())
    if by_ir:
        firsts = [group[0] for group in groups]
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                hashes = list(pool.map(ttir_hash, firsts, chunksize=8))
        else:
            hashes = [ttir_hash(x) for x in firsts]
        by_hash: dict = {}
        for h, group in zip(hashes, groups):
            by_hash.setdefault(h, []).extend(group)
        groups = list(by_hash.values())
    return [dataclasses.replace(group[0], covers=len(group)) for group in groups]


# --------------------------------------------------------------------------- Triton: compile

def _triton_bin(name: str) -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else shutil.which(name)


_RES_RE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: bytes) -> dict:
    """{kernel: {regs, stack, static_shared, local}} from `cuobjdump --dump-resource-usage`."""
    tool = _triton_bin("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (neither in Triton's bundle nor on PATH)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {m[1]: {"regs": int(m[2]), "stack": int(m[3]), "static_shared": int(m[4]), "local": int(m[5])}
            for m in _RES_RE.finditer(text)}


def compile_triton(launch: Launch, cc: int) -> dict:
    """Compiles one recorded launch for sm_<cc>; returns its resource row (with 'error' on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"source": "triton", "kernel": launch.name, "arch": f"sm_{cc}",
           "variant": _variant_text(launch), "origin": launch.origin, "covers": launch.covers}
    t0 = time.perf_counter()
    try:
        sig, constexprs, attrs, options = specialise(launch, cc)
        src = ASTSource(launch.kernel, sig, constexprs, attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options.__dict__)
        res = cubin_resources(compiled.asm["cubin"])[compiled.metadata.name]
        row.update(regs=res["regs"], spill_bytes=res["local"], stack=res["stack"],
                   shared=compiled.metadata.shared + res["static_shared"], num_warps=options.num_warps)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as this variant's error
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def _variant_text(launch: Launch) -> str:
    parts = []
    for k, v in launch.constexprs.items():
        parts.append(f"{k}={int(v) if isinstance(v, bool) else v}")
    parts.append(f"warps={launch.kwargs.get('num_warps', 4)}")
    return " ".join(parts)


def _compile_job(job):
    launch, cc = job
    return compile_triton(launch, cc)


# --------------------------------------------------------------------------- CUDA sources

_PTXAS_FN = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(text: str) -> list[dict]:
    """Per-kernel rows from `ptxas -v` output (nvcc -Xptxas -v)."""
    rows, cur = [], None
    for line in text.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            cur = {"kernel": m[1], "arch": m[2], "regs": None, "spill_bytes": 0, "stack": 0, "shared": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _PTXAS_FRAME.search(line)
        if m:
            cur["stack"], cur["spill_bytes"] = int(m[1]), int(m[2]) + int(m[3])
        m = _PTXAS_USED.search(line)
        if m:
            cur["regs"] = int(m[1])
            cur["shared"] = int(m[2] or 0)
    return rows


def _demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return list(names)
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    out = [o.replace("(anonymous namespace)::", "") for o in out]
    return [o.split("(")[0] if o else n for o, n in zip(out, names)]


def compile_cuda(source: Path, cc: int) -> list[dict]:
    nvcc = shutil.which("nvcc")
    base = {"source": f"cuda:{source.name}", "arch": f"sm_{cc}", "variant": "", "origin": str(source.relative_to(ROOT))}
    if nvcc is None:
        return [dict(base, kernel="-", error="nvcc not found")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # The flags of CMakeLists.txt's _cuda target (no --use_fast_math: see there), plus -cubin for
        # one architecture.
        cmd = [nvcc, "-cubin", f"-arch=sm_{cc}", "-std=c++17", "-O3", "-lineinfo",
               "-Xptxas", "-v", "-I", str(ROOT / "csrc" / "include"), "-o", os.path.join(tmp, "k.cubin"), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0:
        return [dict(base, kernel="-", error=(proc.stderr.strip().splitlines() or ["nvcc failed"])[-1], compile_s=secs)]
    rows = parse_ptxas(proc.stderr + proc.stdout)
    for name, r in zip(_demangle([r["kernel"] for r in rows]), rows):
        r.update(base, kernel=name, compile_s=secs)
    return rows


# --------------------------------------------------------------------------- checks and report

def problems(row: dict) -> list[str]:
    out = []
    if row.get("error"):
        out.append(f"compile error: {row['error']}")
        return out
    if row.get("spill_bytes"):
        out.append(f"spills {row['spill_bytes']} bytes to local memory")
    limit = SMEM_LIMIT[int(row["arch"].split("_")[1])]
    if (row.get("shared") or 0) > limit:
        out.append(f"shared memory {row['shared']} B > {limit} B ({row['arch']} per-block limit)")
    return out


def run(quick: bool = False, jobs: int | None = None, archs=ARCHS, cuda: bool = True) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    jobs = jobs or max(1, os.cpu_count() or 1)
    launches = enumerate_triton_launches(quick)
    variants = distinct_variants(launches, jobs=jobs)
    t_enum = time.perf_counter() - t0
    work = [(v, cc) for v in variants for cc in archs]
    t1 = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            rows = list(pool.map(_compile_job, work, chunksize=4))
    else:
        rows = [_compile_job(w) for w in work]
    t_triton = time.perf_counter() - t1
    t2 = time.perf_counter()
    if cuda:
        sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                for part in pool.map(_cuda_job, [(s, cc) for s in sources for cc in archs]):
                    rows.extend(part)
        else:
            for s in sources:
                for cc in archs:
                    rows.extend(compile_cuda(s, cc))
    t_cuda = time.perf_counter() - t2
    for r in rows:
        r["problems"] = "; ".join(problems(r)) or None
    summary = {"launches_recorded": len(launches), "jit_variants": len({variant_key(x) for x in launches}),
               "triton_variants": len(variants), "archs": list(archs),
               "compiles": len(work), "jobs": jobs, "enumerate_s": round(t_enum, 1),
               "triton_compile_s": round(t_triton, 1), "cuda_compile_s": round(t_cuda, 1)}
    return rows, summary


def _cuda_job(job):
    return compile_cuda(*job)


def max_by_kernel(rows: list[dict]) -> list[dict]:
    """One line per (source, kernel, arch): the worst registers / spills / shared over its variants."""
    out = {}
    for r in rows:
        key = (r["source"], r["kernel"], r["arch"])
        cur = out.setdefault(key, {"source": r["source"], "kernel": r["kernel"], "arch": r["arch"], "variants": 0,
                                   "jit_variants": 0, "regs_max": 0, "spill_bytes": 0, "shared_max": 0, "failures": 0})
        cur["variants"] += 1
        cur["jit_variants"] += r.get("covers", 1)
        cur["regs_max"] = max(cur["regs_max"], r.get("regs") or 0)
        cur["spill_bytes"] = max(cur["spill_bytes"], r.get("spill_bytes") or 0)
        cur["shared_max"] = max(cur["shared_max"], r.get("shared") or 0)
        cur["failures"] += bool(r.get("problems"))
    return list(out.values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu-build", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="production shapes only (the largest blocks)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the csrc/cuda sources")
    parser.add_argument("--full-table", action="store_true", help="print every variant, not the per-kernel maxima")
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default=None, help="ignored: compiles for sm_80 and sm_90 on any machine")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton is not installed: nothing to compile")
        return 1
    rows, summary = run(quick=args.quick, jobs=args.jobs, cuda=not args.no_cuda)
    print(f"{summary['launches_recorded']} launcher calls -> {summary['jit_variants']} JIT specialisations -> "
          f"{summary['triton_variants']} distinct Triton IRs, x {len(summary['archs'])} archs: {summary['triton_compile_s']} s; CUDA sources: "
          f"{summary['cuda_compile_s']} s ({summary['jobs']} jobs)\n")
    if args.full_table:
        harness.print_table(rows, ["source", "kernel", "arch", "variant", "regs", "spill_bytes", "shared", "problems"])
        print()
    harness.report("gpu-build", max_by_kernel(rows),
                   ["source", "kernel", "arch", "variants", "jit_variants", "regs_max", "spill_bytes", "shared_max", "failures"],
                   device="cpu", json_path=args.json, extra={"summary": summary, "variants": rows})
    bad = [r for r in rows if r.get("problems")]
    for r in bad:
        print(f"FAIL {r['source']} {r['kernel']} {r['arch']} {r.get('variant', '')}: {r['problems']}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} of {len(rows)} compiled variants fail the checks", file=sys.stderr)
        return 1
    print(f"all {len(rows)} compiled variants: no spills, shared memory within limits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
