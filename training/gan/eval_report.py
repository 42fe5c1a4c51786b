"""The presentation side of ``skulens gan eval``: the generator's latency (fp32 vs INT8, through
the SDK), CAS pooled by coarse group, the summary chart and the real-vs-generated sample grid."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from skulens import GeneratorOptions, ImageGenerator, decode_image
from skulens.internal import Dataset, atomic_write, make_grid, write_png


def per_group(per_class: dict, group_of: dict) -> dict:
    """{group: {classes, n, cas_top1, real_top1, fraction_of_real}}, largest group first:
    ``per_class``'s figures pooled over each group's classes, weighted by their test photos (a
    group's top-1 over all its photos); classes without a group ("" or absent) or without test
    photos are left out."""
    pooled: dict = {}
    for name, v in per_class.items():
        g = group_of.get(name) or ""
        if g and v["n"]:
            acc = pooled.setdefault(g, {"n": 0, "cas_hits": 0.0, "real_hits": 0.0, "classes": 0})
            acc["n"] += v["n"]
            acc["classes"] += 1
            acc["cas_hits"] += v["cas_top1"] * v["n"]
            if v["real_top1"] is None:  # unknown for one class: unknown for its group
                acc["real_hits"] = None
            elif acc["real_hits"] is not None:
                acc["real_hits"] += v["real_top1"] * v["n"]
    out = {}
    for g, acc in sorted(pooled.items(), key=lambda kv: -kv[1]["n"]):
        cas = acc["cas_hits"] / acc["n"]
        real = acc["real_hits"] / acc["n"] if acc["real_hits"] is not None else None
        out[g] = {"classes": acc["classes"], "n": acc["n"], "cas_top1": cas, "real_top1": real,
                  "fraction_of_real": cas / real if real else None}
    return out


def generator_latency(cfg) -> dict:
    """fp32 vs INT8 generator (the one beside it, or --int8), batch 1 and 16, 1 thread, interleaved rounds."""
    from skulens.internal import int8_path_for, rejected_path_for, time_callables

    q = Path(cfg.int8) if cfg.int8 else next((p for p in (int8_path_for(cfg.generator),
                                                          rejected_path_for(cfg.generator)) if p.is_file()), None)
    paths = {"fp32": Path(cfg.generator), **({"int8": q} if q else {})}
    gens = {k: ImageGenerator.from_path(p, GeneratorOptions(num_threads=1)) for k, p in paths.items()}
    res = {"threads": 1, "what": "ImageGenerator.generate(label 0, n, seed=0): latent + ONNX + uint8 BGR",
           "loadavg_before": [round(v, 2) for v in os.getloadavg()],
           "paths": {k: str(p) for k, p in paths.items()}}
    try:
        if q:
            gate = gens["int8"].metadata.metrics.get("int8_gate") or {}
            res["int8_shipped"] = bool(gate.get("passed"))
            res["int8_gate"] = {k: gate.get(k) for k in ("psnr_db", "feature_distance", "reason")}
        for n in (1, 16):
            fns = [lambda g=g, n=n: g.generate(0, n=n, seed=0) for g in gens.values()]
            secs = time_callables(fns, rounds=15, iters=max(3, 40 // n))
            res[f"batch{n}_ms"] = {k: round(s * 1e3, 3) for k, s in zip(gens, secs)}
            if q:
                res[f"batch{n}_int8_speedup"] = round(secs[0] / secs[1], 3)
    finally:
        for g in gens.values():
            g.close()
    res["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return res


def plot_summary(out: Path, r: dict, name: str) -> None:
    from ..plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    f = r.get("fid")
    if f:
        axes[0].bar(["generated\nvs real test", "real train\nvs real test"],
                    [f["generated_vs_real_test"], f["real_train_vs_real_test"]], color=["tab:orange", "tab:blue"])
        axes[0].set(title=f"FID ({f.get('feature_space', 'classifier')} features)", ylabel="Frechet distance (lower is better)")
    if "cas" in r:
        c = r["cas"]
        axes[1].bar(["real train", "generated only"], [c["top1_real_recipe"] or 0, c["top1_generated_only"]],
                    color=["tab:blue", "tab:orange"])
        frac = c["fraction_of_real"]
        axes[1].set(title=f"CAS: {frac:.0%} of real" if frac is not None else "CAS", ylabel="real test top-1",
                    ylim=(0, 1))
    if "lowdata" in r:
        lo = r["lowdata"]["arms"]
        names = list(lo)
        axes[2].bar(names, [lo[k]["mean"] for k in names], yerr=[lo[k]["std"] for k in names], capsize=6,
                    color=["tab:blue", "tab:orange"], alpha=0.7)
        for i, k in enumerate(names):
            axes[2].scatter([i] * len(lo[k]["runs"]), [x["test_top1"] for x in lo[k]["runs"]], color="k", s=12)
        axes[2].set(title=f"low data: {r['lowdata']['gain_pp']:+.1f} pp", ylabel="real test top-1 (mean ± std)",
                    ylim=(0, 1))
    if "latency" in r:
        lat = r["latency"]
        keys = [k for k in ("fp32", "int8") if k in lat["paths"]]
        x = np.arange(2)
        for j, k in enumerate(keys):
            axes[3].bar(x + j * 0.4, [lat["batch1_ms"][k], lat["batch16_ms"][k]], width=0.4, label=k)
        axes[3].set_xticks(x + 0.2, ["batch 1", "batch 16"])
        axes[3].set(title="generator latency (SDK, 1 thread)", ylabel="ms")
        axes[3].legend()
    fig.tight_layout()
    atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _bgr(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    return np.ascontiguousarray(img[:, :, :3])


def sample_grid(out: Path, ds: Dataset, test_s, cfg, options: GeneratorOptions, suffix: str = "",
                per_row: int = 8) -> None:
    """Real test images beside generated images, two rows per class (--sample-classes, else the first 10)."""
    from .data import crop_contract, parse_classes

    ids = parse_classes(cfg.sample_classes, list(ds.classes)) if cfg.sample_classes else range(min(10, len(ds.classes)))
    with ImageGenerator.from_path(cfg.generator, options) as gen:
        h = gen.output_size[0]
        contract = crop_contract(h, 3)  # geometry only: centre crop + area resize to the GAN size
        tiles, names = [], []
        for c in ids:
            name = ds.classes[c]
            paths = [s.path for s in test_s if s.label == c][:per_row]
            real = [_bgr(contract.resize_and_crop(decode_image(p))) for p in paths]
            real += [np.full((h, h, 3), 255, np.uint8)] * (per_row - len(real))
            tiles += real + [_bgr(t) for t in gen.generate(name, n=per_row, seed=cfg.seed)]
            names += [f"{name} real", f"{name} GAN"]
    write_png(out / f"samples_real_vs_generated{suffix}.png",
              make_grid(tiles, ncol=per_row, scale=max(1, 64 // h), row_labels=names))
