"""Static cost of a Triton kernel on an NVIDIA GPU, compiled on the CPU: no GPU needed.

    python benchmarks/sass_stats.py selective_scan:_ss_bwd_kernel T=8 BE=32 NP=16 HAS_D=True \
        HAS_Z=True HAS_BIAS=True SOFTPLUS=True HAS_DHF=False --warps 4
    python benchmarks/sass_stats.py selective_scan_lanes:_ss_bwd_lanes_kernel T=4 BE=8 NP=16 \
        HAS_D=True HAS_Z=True HAS_BIAS=True SOFTPLUS=True HAS_DHF=False EVEN_N=True EVEN_L=True \
        FAST=True --warps 1 --maxnreg 160 --dump /tmp/lanes

Compiles MODULE:KERNEL (a module of mamba_backend_torch_triton.kernels, or a dotted path) with
the installed Triton for sm_ARCH (default 90), through the ptxas it compiles with and the
cuobjdump its wheel ships,
and prints one line: registers a thread, spill bytes, SASS instructions, layout conversions in
the TTGIR, and the count of the instruction families that usually tell where the time goes
(SHFL, BAR, shared memory, MUFU, float, global memory). --dump DIR writes the TTGIR, PTX and
SASS. The device's Triton may differ from this machine's: install the device's version beside
(pip install --target DIR triton==X; PYTHONPATH=DIR) to compare like with like.

Arguments: NAME=VALUE sets a constexpr (ints, True/False, tl.<dtype>, strings such as
PREC=ieee; a constexpr left out takes its default). The other parameters are typed by name: pointers to --ptr (default fp32, 16-byte
aligned, as the torch glue passes contiguous tensors) for names starting with a capital letter
or ending in "_ptr",
except those --ints lists (default L,N,E,Eg,H,S,K,CPS: give the kernel's own list where a
capitalised name is a pointer, e.g. --ints N,Eg for selective_scan's step kernel, whose S is the
state) and --floats lists; every other name is an int32.

Counts are static: a loop body counts once. ``loop`` is the largest loop (the instructions
between a backward branch and its target, usually the kernel's chunk loop) and ``loop_*`` its
instruction families: divide by the elements a thread handles per trip to get instructions an
element.

Used for the figures in kernels/selective_scan.py's and selective_scan_lanes.py's docstrings
(Triton 3.6, the H100 device's version, sm_90).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import re
import subprocess
import sys
import tempfile

FAMILIES = ("SHFL", "BAR", "STS", "LDS", "MUFU", "FFMA", "FMUL", "FADD", "LDG", "STG")


def _value(v: str):
    """A constexpr's value: True/False, an int, a float, tl.<dtype> (e.g. tl.bfloat16), else the
    string itself (e.g. PREC=ieee)."""
    if v in ("True", "False"):
        return v == "True"
    if v.startswith("tl."):
        import triton.language as tl

        return getattr(tl, v[3:])
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def kernel(spec: str):
    """'module:name' -> the JITFunction (module: one of mamba_backend_torch_triton.kernels, or a
    dotted path)."""
    mod, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"sass_stats: {spec!r}: expected MODULE:KERNEL")
    if "." not in mod:
        mod = "mamba_backend_torch_triton.kernels." + mod
    fn = getattr(importlib.import_module(mod), name)
    if not hasattr(fn, "params"):
        raise SystemExit(f"sass_stats: {spec} is not a compilable @triton.jit kernel here (under "
                         "TRITON_INTERPRET=1 kernels are interpreted: run without it)")
    return fn


def signature(fn, consts: dict, ptr: str, ints, floats):
    """(signature, constexprs, attrs) for triton.compiler.ASTSource."""
    sig, attrs, cex = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
            if name in consts:
                cex[name] = consts[name]
            elif p.has_default:
                cex[name] = p.default
            else:
                raise SystemExit(f"sass_stats: constexpr {name} has no default: give {name}=VALUE")
        elif name in floats:
            sig[name] = "fp32"
        elif name in ints or not (name[0].isupper() or name.endswith("_ptr")):
            sig[name] = "i32"
        else:
            sig[name] = f"*{ptr}"
            attrs[(i,)] = [["tt.divisibility", 16]]
    unknown = set(consts) - set(cex)
    if unknown:
        raise SystemExit(f"sass_stats: {sorted(unknown)} are not constexpr parameters of "
                         f"{fn.__name__}")
    return sig, cex, attrs


def stats(compiled, arch: int) -> dict:
    """Registers, spills, SASS counts of a compiled kernel (the wheel's ptxas and cuobjdump)."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path  # the ptxas Triton itself compiles with
    bindir = os.path.dirname(ptxas)
    ptx = compiled.asm["ptx"]
    target = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as d:
        src, cub = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([ptxas, f"-arch={target}", "-v", src, "-o", cub],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"sass_stats: ptxas failed: {res.stderr[-2000:]}")
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", cub],
                              capture_output=True, text=True).stdout
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spill = re.search(r"(\d+) bytes spill stores", res.stderr)
    ins = []  # (address, opcode family, text)
    for ln in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*)", ln)
        if m:
            body = re.sub(r"^(@!?U?P\w+\s+)?", "", m.group(2))
            ins.append((int(m.group(1), 16), body.split()[0].split(".")[0], body))
    ops = collections.Counter(op for _, op, _ in ins)
    loop = []  # the largest loop: a backward branch and everything from its target
    for addr, op, body in ins:
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", body) if op == "BRA" else None
        if m and int(m.group(1), 16) < addr:
            seg = [o for a, o, _ in ins if int(m.group(1), 16) <= a <= addr]
            loop = seg if len(seg) > len(loop) else loop
    lops = collections.Counter(loop)
    return {"arch": target, "registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spill.group(1)) if spill else None, "sass": len(ins),
            "conversions": compiled.asm["ttgir"].count("ttg.convert_layout"),
            **{k.lower(): ops[k] for k in FAMILIES}, "loop": len(loop),
            **{f"loop_{k.lower()}": lops[k] for k in FAMILIES}, "_sass_text": sass}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Static SASS cost of a Triton kernel, compiled on the CPU.")
    ap.add_argument("kernel", help="MODULE:KERNEL, e.g. selective_scan:_ss_bwd_kernel")
    ap.add_argument("consts", nargs="*", help="NAME=VALUE constexprs")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=1)
    ap.add_argument("--maxnreg", type=int, default=None)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--ptr", default="fp32", help="pointee type of the pointer parameters")
    ap.add_argument("--ints", default="L,N,E,Eg,H,S,K,CPS")
    ap.add_argument("--floats", default="PI,TWO_PI,TWO_PI_HI,TWO_PI_LO")
    ap.add_argument("--dump", default=None, help="a folder for the TTGIR, PTX and SASS")
    a = ap.parse_args(argv)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as tcompile

    consts = {}
    for kv in a.consts:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"{kv!r}: expected NAME=VALUE")
        consts[k] = _value(v)
    fn = kernel(a.kernel)
    sig, cex, attrs = signature(fn, consts, a.ptr, set(a.ints.split(",")), set(a.floats.split(",")))
    opts = {"num_warps": a.warps, "num_stages": a.stages}
    if a.maxnreg:
        opts["maxnreg"] = a.maxnreg
    compiled = tcompile(ASTSource(fn, sig, constexprs=cex, attrs=attrs),
                        target=GPUTarget("cuda", a.arch, 32), options=opts)
    st = stats(compiled, a.arch)
    if a.dump:
        os.makedirs(a.dump, exist_ok=True)
        for ext, text in (("ttgir", compiled.asm["ttgir"]), ("ptx", compiled.asm["ptx"]),
                          ("sass", st["_sass_text"])):
            with open(os.path.join(a.dump, f"{fn.__name__}.{ext}"), "w") as f:
                f.write(text)
    import triton

    print(f"{fn.__name__} {cex} warps={a.warps} maxnreg={a.maxnreg} triton={triton.__version__} "
          f"{st['arch']}: " + " ".join(f"{k}={v}" for k, v in st.items() if not k.startswith("_")
                                        and k != "arch"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
