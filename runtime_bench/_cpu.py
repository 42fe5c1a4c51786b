"""What this CPU offers INT8 inference: ISA features, a rough per-core peak, and the verdict.

The features are read from ``/proc/cpuinfo`` (Linux x86 ``flags``, ARM ``Features``) or from
``sysctl`` on macOS. Peak multiply-accumulates per cycle are order-of-magnitude estimates from
the vector width and the dot-product instructions available, not vendor figures; the report
says so.
"""
from __future__ import annotations

import os
import platform
import subprocess

# flag in /proc/cpuinfo (or sysctl feature) -> name in the report
_X86_FEATURES = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW",
                 "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16",
                 "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}
_ARM_FEATURES = {"asimd": "NEON", "asimddp": "dot product (SDOT/UDOT)", "i8mm": "I8MM",
                 "sve": "SVE", "sve2": "SVE2", "bf16": "BF16", "asimdhp": "FP16 arithmetic"}
_MAC_SYSCTL = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
               "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.neon": "asimd",
               "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f",
               "hw.optional.avx512vnni": "avx512_vnni"}


def parse_cpuinfo(text: str) -> dict:
    """Model name, vendor, flags and MHz from the text of /proc/cpuinfo (first processor)."""
    info: dict = {"flags": set()}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features") and not info["flags"]:
            info["flags"] = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and "model" not in info:
            info["model"] = value
        elif key == "vendor_id" and "vendor" not in info:
            info["vendor"] = value
        elif key == "cpu implementer" and "vendor" not in info:
            info["vendor"] = f"ARM implementer {value}"
        elif key == "cpu mhz":
            try:
                info["mhz"] = max(info.get("mhz", 0.0), float(value))
            except ValueError:
                pass
    return info


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _macos_info() -> dict:
    info: dict = {"flags": set()}
    for key, flag in _MAC_SYSCTL.items():
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.strip() == "1":
            info["flags"].add(flag)
    try:
        info["model"] = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                       text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def peak_macs_per_cycle(arch: str, flags: set, vendor: str = "") -> dict:
    """Rough fp32 and int8 multiply-accumulates per cycle per core (two vector FMA pipes)."""
    if arch in ("x86_64", "amd64", "i686", "x86"):
        # AMD Zen 4 runs 512-bit ops on 256-bit pipes: same throughput as AVX2 per cycle.
        wide = "avx512f" in flags and "AMD" not in vendor.upper()
        lanes = 16 if wide else 8 if {"avx2", "fma"} & flags else 4
        fp32 = 2 * lanes
        if {"amx_int8", "amx_tile"} <= flags:
            int8, how = 1024, "AMX tiles"
        elif {"avx512_vnni", "avx_vnni"} & flags:
            int8, how = 4 * fp32, "VNNI dot products (4 int8 MACs per 32-bit lane)"
        elif "avx2" in flags:
            int8, how = 2 * fp32, "AVX2 pmaddubsw/pmaddwd (about 2x fp32)"
        else:
            int8, how = fp32, "no int8 dot-product instructions"
    elif arch in ("aarch64", "arm64", "armv8l", "armv7l"):
        fp32 = 2 * 4
        if "i8mm" in flags:
            int8, how = 8 * fp32, "I8MM matrix multiply (SMMLA)"
        elif "asimddp" in flags:
            int8, how = 4 * fp32, "dot product (SDOT/UDOT)"
        else:
            int8, how = 2 * fp32, "NEON widening multiplies only"
    else:
        fp32, int8, how = 4, 4, "unknown architecture"
    return {"fp32": fp32, "int8": int8, "int8_path": how}


def cpu_report() -> dict:
    """This machine's CPU: model, cores, frequency, ISA features that matter for INT8, peak estimate."""
    arch = platform.machine().lower()
    text = _read("/proc/cpuinfo")
    info = parse_cpuinfo(text) if text else (_macos_info() if platform.system() == "Darwin" else {"flags": set()})
    flags = info["flags"]
    table = _ARM_FEATURES if arch.startswith(("arm", "aarch")) else _X86_FEATURES
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    mhz = int(max_khz) / 1e3 if max_khz and max_khz.strip().isdigit() else info.get("mhz")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    peak = peak_macs_per_cycle(arch, flags, info.get("vendor", ""))
    report = {
        "model": info.get("model") or platform.processor() or "unknown",
        "vendor": info.get("vendor"), "arch": arch, "cpus_available": cpus,
        "mhz": round(mhz, 1) if mhz else None,
        "features": {name: flag in flags for flag, name in table.items()},
        "int8_dot_product": bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & flags),
        "peak_macs_per_cycle_per_core": peak,
        "peak_note": "rough estimate: 2 vector FMA pipes x lanes; int8 per the dot-product instructions",
    }
    if mhz:
        report["peak_gmacs_per_core"] = {k: round(peak[k] * mhz / 1e3, 1) for k in ("fp32", "int8")}
    return report


def int8_verdict(speedups: dict[str, float], cpu: dict | None = None, margin: float = 0.05) -> dict:
    """"INT8 is / is not faster here, by N x" from each INT8 variant's speedup over ORT fp32.

    ``speedups`` maps activation type ("u8", "s8") to how many times faster than fp32 that
    INT8 model ran (batch 1, 1 thread: the case export's activation-type check times). INT8
    counts as faster when the best variant beats fp32 by more than ``margin``.
    """
    valid = {k: float(v) for k, v in speedups.items() if v and v > 0}
    if not valid:
        return {"int8_faster": None, "text": "INT8 vs fp32: not measured (needs ORT fp32 and an INT8 model)"}
    best = max(valid, key=valid.get)
    speedup = valid[best]
    faster = speedup > 1 + margin
    if faster:
        text = f"INT8 is faster here, by {speedup:.2f}x ({best.upper()}S8 vs ORT fp32)"
    elif speedup < 1:
        text = f"INT8 is not faster here: the best INT8 ({best.upper()}S8) is {1 / speedup:.2f}x slower than fp32"
    else:
        text = f"INT8 is not faster here: {speedup:.2f}x, within {margin:.0%} of fp32"
    if cpu is not None and not cpu.get("int8_dot_product"):
        text += "; this CPU has no int8 dot-product instructions (VNNI / AMX / ARM dotprod)"
    return {"int8_faster": faster, "speedup": round(speedup, 3), "best_activation": best,
            "speedup_by_activation": {k: round(v, 3) for k, v in valid.items()}, "text": text}


def flags_summary(cpu: dict) -> str:
    have = [name for name, ok in cpu["features"].items() if ok]
    return ", ".join(have) or "none of the INT8-relevant extensions"
