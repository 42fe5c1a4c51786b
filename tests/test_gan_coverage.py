"""GAN coverage term (IMLE): each real image's nearest generated candidate is chosen and pulled to it."""
import pytest
import torch
from torch import nn

from skulens.training.gan.config import GanConfig, GanConfigError
from skulens.training.gan.coverage import coverage_loss, nearest_latents


class FlatGenerator(nn.Module):
    """Draws a flat image whose every pixel is tanh(z[0]) (the class is ignored): distances are known."""
    z_dim = 4

    def forward(self, z, label, cond=1.0):
        return torch.tanh(z[:, :1, None, None]).expand(len(z), 3, 16, 16)


def flat_images(values) -> torch.Tensor:  # pixel values in [-1, 1] -> uint8 [N, 3, 16, 16]
    v = torch.tensor(values, dtype=torch.float32)
    return torch.round((v + 1) * 127.5).to(torch.uint8)[:, None, None, None].expand(len(v), 3, 16, 16).clone()


def test_nearest_latents_picks_the_candidate_nearest_each_real_image():
    values = [-0.9, -0.2, 0.0, 0.5, 0.95]
    real, labels = flat_images(values), torch.zeros(5, dtype=torch.long)
    g = FlatGenerator().eval()
    z = nearest_latents(g, real, labels, candidates=6, rng=torch.Generator().manual_seed(3), chunk=2)
    assert z.shape == (5, 4) and not g.training   # the generator's mode is restored
    # the same draws, in the same order (chunks of 2 images x 6 candidates)
    rng = torch.Generator().manual_seed(3)
    draws = torch.cat([torch.randn(b * 6, 4, generator=rng).view(b, 6, 4) for b in (2, 2, 1)])   # [5, 6, 4]
    target = real[:, 0, 0, 0].float() / 127.5 - 1
    best = (torch.tanh(draws[..., 0]) - target[:, None]).abs().argmin(1)
    assert torch.equal(z, draws[torch.arange(5), best])


def test_more_candidates_cover_the_real_images_more_closely():
    real = flat_images(torch.linspace(-0.95, 0.95, 40).tolist())
    labels = torch.zeros(40, dtype=torch.long)
    target = real[:, 0, 0, 0].float() / 127.5 - 1

    def gap(m):
        z = nearest_latents(FlatGenerator(), real, labels, m, torch.Generator().manual_seed(0))
        return float((torch.tanh(z[:, 0]) - target).abs().mean())
    assert gap(16) < gap(4) < gap(1)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        nearest_latents(FlatGenerator(), real, labels, 0, torch.Generator())


def test_the_coverage_term_pulls_the_generator_onto_images_it_missed():
    """IMLE on a small real generator: pulling each image's nearest sample towards it shrinks the
    distance from the real images to the nearest of freshly drawn samples."""
    from skulens.training.gan.models import Generator

    torch.manual_seed(0)
    g = Generator(num_classes=2, z_dim=8, image_size=16, width=32, embed_dim=4)
    h = torch.linspace(0, 1, 16)
    real = torch.stack([torch.stack([h[None, :].expand(16, 16), h[:, None].expand(16, 16),
                                     torch.full((16, 16), c / 5)]) for c in range(6)])   # [6, 3, 16, 16]
    real = torch.round(real * 255).to(torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    x = real.float() / 127.5 - 1

    def nearest_gap():  # mean L1 from each real image to the nearest of 8 fresh samples of its class
        z = nearest_latents(g, real, labels, 8, torch.Generator().manual_seed(99))
        with torch.no_grad():
            return float((g(z, labels) - x).abs().mean())
    before = nearest_gap()
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    rng = torch.Generator().manual_seed(1)
    for step in range(60):
        if step % 10 == 0:
            z = nearest_latents(g, real, labels, 8, rng)
        loss = coverage_loss(1.0, g(z, labels), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nearest_gap() < 0.5 * before
    assert coverage_loss(0.0, x, -x) == 0


def test_coverage_options_and_training(grocery_subset, tmp_path, monkeypatch):
    from skulens.training.checkpoint import load_checkpoint
    from skulens.training.gan import train_gan, trainer

    with pytest.raises(GanConfigError, match="coverage must be >= 0"):
        GanConfig(data="x", coverage=-1)
    with pytest.raises(GanConfigError, match="coverage_candidates, coverage_every >= 1"):
        GanConfig(data="x", coverage=1, coverage_every=0)
    with pytest.raises(GanConfigError, match="coverage and subclasses cannot be combined"):
        GanConfig(data="x", coverage=1, subclasses=2)

    choices, backward = [], []

    def counted(G, images, *args, **kwargs):
        choices.append(len(images))
        return nearest_latents(G, images, *args, **kwargs)

    def tracked(weight, recon, target):  # the term must reach the generator's backward pass
        loss = coverage_loss(weight, recon, target)
        loss.register_hook(lambda grad: backward.append(float(grad)))
        return loss
    monkeypatch.setattr(trainer, "nearest_latents", counted)
    monkeypatch.setattr(trainer, "coverage_loss", tracked)
    run = dict(data=str(grocery_subset), out=str(tmp_path / "gan"), image_size=16, z_dim=8, embed_dim=4, g_width=16,
               batch_size=4, steps_per_epoch=2, epochs=2, threads=1, discriminator="dcgan", d_width=8)
    train_gan(GanConfig(**run, coverage=5.0, coverage_every=3, coverage_candidates=2))
    n_real = load_checkpoint(tmp_path / "gan" / "last.pt")["n_train"]
    assert choices == [n_real, n_real]   # steps 0 and 3 of 4: every real image each time
    assert backward == [1.0] * 4         # one backward pass through the term per step, at full weight
    whole = load_checkpoint(tmp_path / "gan" / "last.pt")
    assert all(h["loss_cov"] > 0 for h in whole["history"])
    assert whole["coverage_latents"].shape == (n_real, 8)
    # resumed after epoch 1 (step 2: no re-choice until step 3), it continues from the saved latents exactly
    train_gan(GanConfig(**{**run, "out": str(tmp_path / "split"), "epochs": 1}, coverage=5.0, coverage_every=3,
                        coverage_candidates=2))
    choices.clear()
    train_gan(GanConfig(**{**run, "out": str(tmp_path / "split")}, coverage=5.0, coverage_every=3,
                        coverage_candidates=2, resume=True))
    assert choices == [n_real]   # step 3 only
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    for name, t in split["generator_ema"].items():
        assert torch.allclose(t.float(), whole["generator_ema"][name].float(), atol=1e-6), name
    # resumed on fewer photos of the same classes, the saved latents no longer pair up: chosen again
    from skulens.training.gan.data import RealImages, load_real

    full = load_real(run["data"], 16, 3)
    fewer = RealImages(full.images[:-3], full.labels[:-3], full.classes, full.source)
    choices.clear()
    train_gan(GanConfig(**{**run, "out": str(tmp_path / "split"), "epochs": 3}, coverage=5.0, coverage_every=10,
                        coverage_candidates=2, resume=True), real=fewer)
    assert choices == [n_real - 3]   # at step 4, the resumed run's first (no re-choice is due before step 10)
    choices.clear()
    backward.clear()
    train_gan(GanConfig(**{**run, "out": str(tmp_path / "plain")}))
    assert choices == [] and backward == []   # off: never chosen, never computed
    assert all(h["loss_cov"] == 0 for h in load_checkpoint(tmp_path / "plain" / "last.pt")["history"])
