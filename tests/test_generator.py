"""sdk.ImageGenerator, `skulens generate` and the --gan-augment hook (`skulens gan eval`: test_gan_eval.py)."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skulens import GeneratorOptions, ImageGenerator, ModelError, SkulensError
from skulens._generator import GenerationError


def test_generate_is_bgr_uint8_and_deterministic_for_a_seed(gen_path):
    with ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1, max_batch=3)) as g:
        a = g.generate("Lime", n=5, seed=7)
        b = g.generate(g.labels.index("Lime"), n=5, seed=7)
        c = g.generate("Lime", n=5, seed=8)
        raw = g.generate_raw("Lime", n=5, seed=7)
        assert g.output_size == (16, 16) and g.z_dim == 16
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # OpenCV conventions: channel 0 of the output is blue = the model's RGB channel 2
    expected_blue = np.clip(np.rint((raw[:, 2] + 1) * 127.5), 0, 255).astype(np.uint8)
    assert np.array_equal(a[..., 0], expected_blue)
    # max_batch does not change results (the latents are drawn once, with numpy)
    with ImageGenerator.from_path(gen_path, GeneratorOptions(max_batch=64)) as g:
        assert np.array_equal(g.generate("Lime", n=5, seed=7), a)


def test_latent_scale_widens_the_latent_and_what_the_generator_draws(gen_path):
    with ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1)) as g1, \
            ImageGenerator.from_path(gen_path, GeneratorOptions(num_threads=1, latent_scale=2.5)) as g2:
        z1, z2 = g1.latent(64, seed=3), g2.latent(64, seed=3)
        assert np.allclose(z2, 2.5 * z1) and 2.2 < z2.std() < 2.8   # the same draw, wider
        # the images are the generator's at that latent: varied further from one noise vector to the next
        assert np.allclose(g2.generate_raw("Lime", n=64, seed=3), g2.run(z2, np.full(64, g2.labels.index("Lime"))),
                           atol=1e-6)
        spread = [g.generate_raw("Lime", n=64, seed=3).std(0).mean() for g in (g1, g2)]
        assert spread[1] > spread[0]
    for bad in (0, -1.0, 11, float("nan")):
        with pytest.raises(ValueError, match="latent_scale"):
            GeneratorOptions(latent_scale=bad)


def test_generator_errors(gen_path, tiny_models):
    with ImageGenerator.from_path(gen_path) as g:
        with pytest.raises(GenerationError, match="unknown label 'Lemon'"):
            g.generate("Lemon", n=1, seed=0)
        with pytest.raises(GenerationError, match="out of range"):
            g.generate(6, n=1)
        for bad in (0, -3, 2.5, True):
            with pytest.raises(GenerationError, match="n must be a positive integer"):
                g.generate("Lime", n=bad)
        with pytest.raises(GenerationError, match="seed"):
            g.generate("Lime", n=1, seed=-1)
        assert isinstance(GenerationError("x"), SkulensError)
    with pytest.raises(RuntimeError, match="closed"):
        g.generate("Lime", n=1, seed=0)
    fp32_classifier = tiny_models[0]
    with pytest.raises(ModelError, match="this is a classifier model, expected a generator"):
        ImageGenerator.from_path(fp32_classifier)
    with pytest.raises(ModelError, match="no such model file"):
        ImageGenerator.from_path(gen_path.with_name("missing.onnx"))


def test_sdk_stays_torch_free():
    code = "import sys, skulens, skulens._generator, skulens.cli._gan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_generate_cli_writes_a_deterministic_grid(gen_path, tmp_path, capsys):
    from skulens.cli import main

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main(["generate", str(gen_path), "--label", "Lime", "--n", "16", "--seed", "0",
                     "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    grid = cv2.imread(str(a))
    assert grid.shape == (4 * (64 + 2) + 2, 4 * (64 + 2) + 2, 3)  # 4x4 tiles of 16 px scaled x4
    assert main(["generate", str(gen_path), "--label", "Nope", "--out", str(tmp_path / "c.png")]) == 2
    assert "unknown label 'Nope'" in capsys.readouterr().err
    wide = tmp_path / "wide.png"
    assert main(["generate", str(gen_path), "--label", "Lime", "--n", "16", "--latent-scale", "2",
                 "--out", str(wide)]) == 0
    assert wide.read_bytes() != a.read_bytes() and cv2.imread(str(wide)).shape == grid.shape
    assert main(["generate", str(gen_path), "--label", "Lime", "--latent-scale", "0", "--out", str(wide)]) == 2
    assert "latent_scale must be in (0, 10]" in capsys.readouterr().err


def test_gan_augment_hook_adds_synthetic_samples(gen_path, grocery_subset, tmp_path):
    from skulens import PreprocessConfig
    from skulens.training import AugmentConfig, TrainConfig, train
    from skulens.training.data import TrainSet
    from skulens.training.gan.augment_hook import GanAugment

    with ImageGenerator.from_path(gen_path) as g:
        classes = list(g.labels) + ["Unknown-Product"]
    real_labels = [0, 0, 1, 2, 6, 6]
    extra = GanAugment(gen_path, classes, real_labels, ratio=1.5, seed=0)
    assert len(extra) == 3 + 2 + 2 and set(extra.slot_labels.tolist()) == {0, 1, 2}  # none for class 6
    assert [len(extra.pools[c]) for c in (0, 1, 2)] == [12, 8, 8]  # 4 distinct images per slot by default
    wide = GanAugment(gen_path, classes, real_labels, ratio=1.5, seed=0, pool_factor=16, latent_scale=3.0)
    assert [len(wide.pools[c]) for c in (0, 1, 2)] == [48, 32, 32]
    assert wide.pools[0].std(0).mean() > extra.pools[0].std(0).mean()  # the wider latent varies them more
    pre = PreprocessConfig(input_size=(32, 32))
    images = [np.zeros((40, 40, 3), np.uint8)] * len(real_labels)
    ts = TrainSet(images, real_labels, pre, AugmentConfig(), seed=0, extra=extra)
    assert len(ts) == len(real_labels) + len(extra)
    x, y = ts[len(real_labels)]
    assert tuple(x.shape) == (3, 32, 32) and y == 0
    assert TrainConfig(data="x").gan_augment is None  # off by default
    m = train(TrainConfig(data=str(grocery_subset), out=str(tmp_path), model="edge_resnet_tiny", epochs=1,
                          input_size=16, batch_size=16, num_workers=0, threads=1, gan_augment=str(gen_path)))
    assert m["n_train"] == 48 and "eval" in m


def test_gan_augment_add_mode_keeps_the_real_steps_and_adds_synthetic_batches(gen_path, grocery_subset, tmp_path):
    import torch

    from skulens import PreprocessConfig
    from skulens.training import AugmentConfig, TrainConfig, train
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.config import TrainConfigError
    from skulens.training.gan.augment_hook import GanAugment, SyntheticBatches

    with ImageGenerator.from_path(gen_path) as g:
        classes = list(g.labels)
    hook = GanAugment(gen_path, classes, [0, 1, 1, 2], ratio=1.0, seed=0)
    syn = SyntheticBatches(hook, PreprocessConfig(input_size=(16, 16)), AugmentConfig(), seed=0)
    first = list(syn.epoch(0, batches=3, batch_size=2))
    assert len(first) == 3 and all(tuple(x.shape) == (2, 3, 16, 16) and y.dtype == torch.int64 for x, y in first)
    again = list(syn.epoch(0, batches=3, batch_size=2))  # a pure function of (seed, epoch): resume is exact
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in syn.epoch(1, 3, 2)]))
    with pytest.raises(ValueError, match="gan-augment-ratio"):
        syn.epoch(0, batches=3, batch_size=0)
    first_only = SyntheticBatches(hook, PreprocessConfig(input_size=(16, 16)), AugmentConfig(), seed=0, epochs=1)
    assert torch.equal(next(first_only.epoch(0, 3, 2))[0], first[0][0]) and first_only.epoch(1, 3, 2) is None

    common = dict(data=str(grocery_subset), model="edge_resnet_tiny", epochs=2, input_size=16, batch_size=16,
                  num_workers=0, threads=1, seed=0)
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **common))
    add = train(TrainConfig(out=str(tmp_path / "add"), gan_augment=str(gen_path), gan_augment_mode="add", **common))
    mix = train(TrainConfig(out=str(tmp_path / "mix"), gan_augment=str(gen_path), **common))
    ck = {name: load_checkpoint(tmp_path / name / "best.pt") for name in ("plain", "add", "mix")}
    steps = {name: c["scheduler"]["last_epoch"] for name, c in ck.items()}  # optimiser steps taken
    assert add["n_train"] == plain["n_train"] == mix["n_train"] == 48
    assert steps["add"] == steps["plain"] < steps["mix"]  # add: the real-only run's steps; mix: more per epoch
    # the same real batches, and the synthetic images' loss on top: other weights
    assert any(not torch.equal(ck["plain"]["model"][k], ck["add"]["model"][k]) for k in ck["plain"]["model"])
    with pytest.raises(TrainConfigError, match="add does not combine"):
        train(TrainConfig(out=str(tmp_path / "bad"), gan_augment=str(gen_path), gan_augment_mode="add",
                          mix_prob=0.5, **common))
    # the synthetic batch normalised on its own: the same real batches and steps, other running statistics
    sep = train(TrainConfig(out=str(tmp_path / "sep"), gan_augment=str(gen_path), gan_augment_mode="add",
                            gan_augment_bn="separate", **common))
    ck["sep"] = load_checkpoint(tmp_path / "sep" / "best.pt")
    assert sep["n_train"] == 48 and ck["sep"]["scheduler"]["last_epoch"] == steps["plain"]
    means = [k for k in ck["plain"]["model"] if k.endswith("running_mean")]
    assert means and any(not torch.allclose(ck["sep"]["model"][k], ck["add"]["model"][k]) for k in means)
    with pytest.raises(TrainConfigError, match="need gan_augment_mode='add'"):
        TrainConfig(data="d", gan_augment=str(gen_path), gan_augment_bn="separate")
    with pytest.raises(TrainConfigError, match="need gan_augment_mode='add'"):
        TrainConfig(data="d", gan_augment=str(gen_path), gan_augment_epochs=1)
    # synthetic batches in the first epoch only: the same steps, other weights than with them in both
    train(TrainConfig(out=str(tmp_path / "e1"), gan_augment=str(gen_path), gan_augment_mode="add",
                      gan_augment_epochs=1, **common))
    e1 = load_checkpoint(tmp_path / "e1" / "best.pt")
    assert e1["scheduler"]["last_epoch"] == steps["plain"]
    assert any(not torch.equal(e1["model"][k], ck["add"]["model"][k]) for k in means)


def test_own_batch_statistics_leaves_the_running_statistics_to_the_real_images():
    import copy

    import torch
    from torch import nn

    from skulens.training.gan.augment_hook import own_batch_statistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    real, fake = torch.randn(8, 3, 8, 8), 3 + 2 * torch.randn(8, 3, 8, 8)
    joint, real_only = copy.deepcopy(net), copy.deepcopy(net)
    joint(torch.cat([real, fake]))
    real_only(real)
    net(real)
    with own_batch_statistics(net):
        out = net(fake)
    norms = [(a, b, c) for a, b, c in zip(net.modules(), real_only.modules(), joint.modules())
             if isinstance(a, nn.BatchNorm2d)]
    for sep, ref, mixed in norms:  # the real batch's statistics only; a joint pass would have moved them
        assert torch.equal(sep.running_mean, ref.running_mean) and torch.equal(sep.running_var, ref.running_var)
        assert int(sep.num_batches_tracked) == 1 and not torch.allclose(sep.running_mean, mixed.running_mean)
    # the fake batch was normalised by its own statistics: every channel of the last BatchNorm has mean 0, var 1
    assert out.mean((0, 2, 3)).abs().max() < 1e-5 and (out.var((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    before = norms[0][0].running_mean.clone()
    net(fake)  # tracking is back after the block
    assert not torch.equal(norms[0][0].running_mean, before)
    frozen = copy.deepcopy(net).eval()  # a module in eval mode normalises with its running statistics still
    with own_batch_statistics(frozen):
        assert torch.equal(frozen(fake), copy.deepcopy(net).eval()(fake))
