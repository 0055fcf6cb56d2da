"""Feedback-guided synthesis: x̂0, the guidance step, filling, the feedback-fill method, bad input."""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from ltkit import checks, data, launch, losses, models, runs, train
from ltkit.methods import diffusion, feedback
from ltkit.methods.feedback import FeedbackClassifier, Guidance

COUNTS = [140, 103, 76, 56, 42, 31, 23, 17, 12, 9]  # digits-lt


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- tiny random models
def _tiny_diffusion(seed: int = 0) -> diffusion.ClassDiffusion:
    torch.manual_seed(seed)
    unet = diffusion.make_unet(10, block_out_channels=(8, 16), norm_num_groups=4).eval().requires_grad_(False)
    return diffusion.ClassDiffusion(unet, dict(diffusion.SCHEDULE_DEFAULTS), [str(k) for k in range(10)])


def _tiny_classifier(seed: int = 0, channels: int = 1, size: int = 8, input_size=None) -> FeedbackClassifier:
    torch.manual_seed(seed)
    model = models.make_model("small-cnn", 10, in_channels=channels, image_size=size, width=8)
    images = torch.randint(0, 256, (200, channels, size, size), dtype=torch.uint8)
    return FeedbackClassifier(model, input_size=input_size).fit_gaussians(images, torch.arange(200) % 10)


@pytest.fixture(scope="module")
def tiny():
    return _tiny_diffusion(), _tiny_classifier()


# --------------------------------------------------------------------------- x̂0
@pytest.mark.parametrize("t", [0, 10, 250, 600, 999])
def test_x0_prediction_recovers_x0_exactly_from_the_true_noise(t):
    scheduler = DDPMScheduler(**diffusion.SCHEDULE_DEFAULTS)
    gen = torch.Generator().manual_seed(t)
    x0 = torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    timesteps = torch.full((4,), t)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    recovered = diffusion.predicted_x0(x_t, noise, scheduler.alphas_cumprod.double()[timesteps])
    torch.testing.assert_close(recovered, x0, rtol=0, atol=1e-9)
    # v-prediction: v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0
    ab = scheduler.alphas_cumprod.double()[t]
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(diffusion.predicted_x0(x_t, v, ab, "v_prediction"), x0, rtol=0, atol=1e-9)


def test_x0_prediction_is_the_ddim_schedulers_pred_original_sample():
    scheduler = DDIMScheduler(**diffusion.SCHEDULE_DEFAULTS, clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t in scheduler.timesteps[:3]:
        expected = scheduler.step(eps, t, x).pred_original_sample
        torch.testing.assert_close(diffusion.predicted_x0(x, eps, scheduler.alphas_cumprod[t]), expected)


# --------------------------------------------------------------------------- the guidance step
def test_normalised_step_has_norm_s_times_x_norm_per_sample():
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(5, 1, 8, 8, generator=gen) * torch.tensor([1e-6, 1e-2, 1.0, 1e2, 1e6]).view(5, 1, 1, 1)
    x = torch.randn(5, 1, 8, 8, generator=gen) * torch.arange(1, 6).view(5, 1, 1, 1)
    step = feedback.normalised_step(grad, x, 0.03)
    np.testing.assert_allclose(step.flatten(1).norm(dim=1), 0.03 * x.flatten(1).norm(dim=1), rtol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(step.flatten(1), grad.flatten(1))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
    assert torch.equal(feedback.normalised_step(torch.zeros_like(x), x, 0.5), torch.zeros_like(x))


@pytest.mark.parametrize("kind", feedback.CRITERIA)
def test_guidance_gradient_is_the_criterions_gradient_and_ascending_raises_it(tiny, kind):
    model, clf = tiny
    scheduler = model.ddim_scheduler()
    labels = torch.arange(6) % 10
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(400)
    decode = lambda x0: (x0 + 1) / 2  # noqa: E731
    crit = lambda images, y: clf.criterion(images, y, kind)  # noqa: E731
    cond = dict(class_labels=labels)

    def value(z):
        with torch.no_grad():
            out = model.unet(z, t, class_labels=labels).sample
            return crit(decode(diffusion.predicted_x0(z, out, scheduler.alphas_cumprod[t])), labels).double()

    grad, c0 = feedback.feedback_gradient(model.unet, scheduler, x, t, cond, labels, crit, decode)
    torch.testing.assert_close(c0.double(), value(x))
    # directional derivative along g/|g| equals |g| (central finite difference, an independent computation)
    h = 1e-3
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    slope = (value(x + h * unit) - value(x - h * unit)) / (2 * h)
    np.testing.assert_allclose(slope, grad.flatten(1).norm(dim=1).double(), rtol=0.05)
    # one ascent step of size s·|x| raises the criterion of every sample
    assert (value(x + feedback.normalised_step(grad, x, 1e-3)) > value(x)).all()


def test_scale_zero_reproduces_the_unguided_sampler_bit_exactly(tiny):
    model, clf = tiny
    labels = [0, 3, 9, 9]
    plain = model.sample(labels, steps=6, cfg_scale=2.0, seed=5)
    none = feedback.guided_sample(model, labels, clf, None, steps=6, cfg_scale=2.0, seed=5)
    zero = feedback.guided_sample(model, labels, clf, Guidance("entropy", 0.0), steps=6, cfg_scale=2.0, seed=5)
    guided = feedback.guided_sample(model, labels, clf, Guidance("entropy", 0.05), steps=6, cfg_scale=2.0, seed=5)
    assert torch.equal(plain, none) and torch.equal(plain, zero)
    assert not torch.equal(plain, guided)


def test_guidance_every_k_steps_and_the_log(tiny):
    model, clf = tiny
    log = []
    feedback.guided_sample(model, [1, 2], clf, Guidance("loss", 0.05, every=3), steps=7, log=log)
    assert [step for step, _, _ in log] == [0, 3, 6]
    assert all(values.shape == (2,) for _, _, values in log)


# --------------------------------------------------------------------------- the criteria against float64 re-derivations
# The released criteria: facebookresearch/Feedback-guided-Data-Synthesis, fg_pipe.py (commit
# 60dd027b7f5a4c133fcf6b43e98bc5dbdd5cacb6), FeedbackGuidedDiffusion.compute_classifier_fg_criterion:
# "loss" is the cross-entropy of the logits with a one-hot target of the intended class, "entropy" the
# cross-entropy of the logits with their own softmax (the target is not detached: the gradient flows through
# both arguments).  Re-derived here in float64 (numpy, log1p / expm1 where 1 + tiny would round):
#   loss    C = -log p_y,              ∂C/∂z_j = p_j - [j = y]   (= expm1(log p_y) at j = y)
#   entropy H = -Σ_k p_k log p_k,      ∂H/∂z_j = -Σ_k p_k (δ_kj - p_j)(log p_k + 1) = -p_j (log p_j + H)
def _log_softmax64(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(1, keepdims=True)
    e = np.exp(shifted)
    e[np.arange(len(z)), shifted.argmax(1)] = 0.0  # Σ_k exp(z_k - max) = 1 + (the others)
    return shifted - np.log1p(e.sum(1))[:, None]


def _entropy64(z):
    log_p = _log_softmax64(z)
    p = np.exp(log_p)
    h = -(p * log_p).sum(1)
    return h, -p * (log_p + h[:, None])


def _loss64(z, y):
    log_p = _log_softmax64(z)
    grad = np.exp(log_p)
    rows = np.arange(len(z))
    grad[rows, y] = np.expm1(log_p[rows, y])
    return -log_p[rows, y], grad


def _degrees(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return np.degrees(np.arccos(np.clip(cosine, -1, 1)))


def _ltkit_criterion(kind, z, y):
    z = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    value = feedback.criterion_values(kind, z, torch.as_tensor(y))
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach().double().numpy(), grad.double().numpy()


def _saturated_logits(gap: float, n: int = 64, seed: int = 0):
    """Random logits with one class ``gap`` above the others (a confident classifier); y = that class or not."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10))
    top = rng.integers(0, 10, n)
    z[np.arange(n), top] += gap
    return z.astype(np.float32).astype(np.float64), top  # float32-representable inputs for both sides


def test_the_float64_references_are_the_released_expressions_differentiated_by_torch():
    """The re-derivation itself: torch's float64 autograd of the released expressions on unsaturated logits."""
    z = torch.randn(32, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    y = torch.arange(32) % 10
    z_in = z.clone().requires_grad_(True)
    released = {"entropy": torch.nn.functional.cross_entropy(z_in, z_in.softmax(-1), reduction="none"),
                "loss": torch.nn.functional.cross_entropy(z_in, torch.nn.functional.one_hot(y, 10).double(),
                                                          reduction="none")}
    for kind, (value, grad) in {"entropy": _entropy64(z.numpy()), "loss": _loss64(z.numpy(), y.numpy())}.items():
        (expected_grad,) = torch.autograd.grad(released[kind].sum(), z_in)
        np.testing.assert_allclose(value, released[kind].detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["entropy", "loss"])
def test_criteria_match_the_float64_rederivation_on_random_logits(kind):
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(256, 10)) * 3).astype(np.float32).astype(np.float64)
    y = rng.integers(0, 10, 256)
    value, grad = _ltkit_criterion(kind, z, y)
    ref_value, ref_grad = _entropy64(z) if kind == "entropy" else _loss64(z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-7)
    scale = np.linalg.norm(ref_grad, axis=1, keepdims=True)
    assert (np.abs(grad - ref_grad) / scale).max() < 1e-5
    assert _degrees(grad, ref_grad).max() < 0.01


@pytest.mark.parametrize("gap", [15, 20, 30, 50, 80])
@pytest.mark.parametrize("kind, intended", [("entropy", "top"), ("loss", "top"), ("loss", "other")])
def test_criteria_keep_their_direction_on_saturated_logits(kind, intended, gap):
    """Angle to the float64 gradient < 1 degree (measured: < 0.001) where the earlier float32 formulas
    (-Σ p log p through log_softmax; F.cross_entropy) are up to ~70 degrees off from a gap of ~20 on."""
    z, top = _saturated_logits(gap, seed=gap)
    y = top if intended == "top" else (top + 1 + np.arange(len(top)) % 9) % 10
    value, grad = _ltkit_criterion(kind, z, y)
    ref_value, ref_grad = _entropy64(z) if kind == "entropy" else _loss64(z, y)
    np.testing.assert_allclose(value, ref_value, rtol=2e-5)  # measured <= 2.5e-6: exp(z - max) carries ~gap * 2^-24
    assert _degrees(grad, ref_grad).max() < 1.0
    if intended == "top" and gap >= 30:  # the formulas this replaces: the test would catch them
        z32 = torch.tensor(z, dtype=torch.float32, requires_grad=True)
        if kind == "entropy":
            log_p = z32.log_softmax(1)
            naive = -(log_p.exp() * log_p).sum(1)
        else:
            naive = torch.nn.functional.cross_entropy(z32, torch.as_tensor(y), reduction="none")
        (naive_grad,) = torch.autograd.grad(naive.sum(), z32)
        assert _degrees(naive_grad.numpy(), ref_grad).max() > 10


@pytest.mark.parametrize("kind", ["entropy", "loss"])
def test_fully_saturated_logits_give_a_zero_gradient_and_no_step(kind):
    """Beyond float32's range (every other probability underflows) there is no direction: zero, not noise."""
    z, top = _saturated_logits(200.0, n=8)
    value, grad = _ltkit_criterion(kind, z, top)
    assert (value == 0).all() and (grad == 0).all()
    x = torch.randn(8, 10)
    for mode in feedback.MODES:
        step = feedback.normalised_step(torch.tensor(grad).float(), x, 0.03, Guidance(mode=mode).eps)
        assert torch.equal(step, torch.zeros_like(step))


def test_hardness_matches_a_float64_rederivation():
    """Mahalanobis hardness (Sehwag et al. 2022; not in the released code): C = dᵀ P d with d = φ - μ_y,
    ∇_φ C = (P + Pᵀ) d; a precision with condition number 1e4 and features near and far from the means."""
    rng = np.random.default_rng(2)
    dim, classes = 16, 4
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    precision = (q * np.logspace(0, 4, dim)) @ q.T
    precision = ((precision + precision.T) / 2).astype(np.float32)
    means = rng.normal(size=(classes, dim)).astype(np.float32) * 5
    y = np.arange(64) % classes
    for spread in (1.0, 1e-3):
        feats = (means[y] + spread * rng.normal(size=(64, dim))).astype(np.float32)
        f = torch.tensor(feats, requires_grad=True)
        value = feedback.criterion_values("hardness", torch.zeros(64, classes), torch.as_tensor(y), f,
                                          torch.tensor(means), torch.tensor(precision))
        (grad,) = torch.autograd.grad(value.sum(), f)
        d = feats.astype(np.float64) - means.astype(np.float64)[y]
        p64 = precision.astype(np.float64)
        np.testing.assert_allclose(value.detach().numpy(), np.einsum("ni,ij,nj->n", d, p64, d), rtol=1e-4)
        assert _degrees(grad.numpy(), d @ (p64 + p64.T)).max() < 1.0


# --------------------------------------------------------------------------- the two samplers
def test_guidance_modes_defaults_and_bad_settings():
    released, again = Guidance(), Guidance("entropy", 0.03, 1, "released", True, True)
    assert released == again and released.reuses_noise and released.eps == 1e-8
    earlier = Guidance(mode="re-evaluate")
    assert (earlier.blend, earlier.rescale, earlier.reuses_noise, earlier.eps) == (False, False, False, 1e-12)
    assert Guidance(mode="re-evaluate", blend=True).blend and not Guidance(rescale=False).rescale
    assert feedback.PAPER_SETTINGS["guidance"].mode == "released"
    assert feedback.fill_guidance("entropy") == feedback.QUICK_SETTINGS["guidance"]
    assert feedback.fill_guidance("loss", mode="released").mode == "released" and feedback.fill_guidance("s0") is None
    bad = [(dict(mode="paper"), checks.InputError, "unknown mode 'paper'; choose one of: released, re-evaluate"),
           (dict(blend="yes"), checks.InputTypeError, "blend must be True or False"),
           (dict(rescale=1), checks.InputTypeError, "rescale must be True or False"),
           (dict(scale=float("nan")), checks.InputError, "scale=nan must be a finite number"),
           (dict(every=2.0), checks.InputTypeError, "every must be an integer"),
           (dict(every=0), checks.InputError, "every=0 must be >= 1"),
           (dict(criterion="margin"), checks.InputError, "unknown criterion 'margin'")]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            Guidance(**kwargs)
    with pytest.raises(checks.InputError, match="unknown fill 'x'"):
        feedback.fill_guidance("x")


def _reference_sampler(model, clf, labels, noise, kind, scale, every, steps, cfg, *, reuse, blend, rescale, eps):
    """The guided DDIM loop written out one image at a time, as the released pipeline runs it
    (facebookresearch/Feedback-guided-Data-Synthesis, fg_pipe.py, commit 60dd027b: __call__ and cond_fn):
    CFG noise at x_t; at every ``every``-th step the conditional prediction at x_t, x̂0, the blend
    sqrt(1-ᾱ) x̂0 + (1 - sqrt(1-ᾱ)) x_t, the decoded image min-max rescaled, the released criterion, its gradient
    normalised by (‖g‖ + eps) times ‖x_t‖ times s, added to x_t; the step with the noise from before the move
    (``reuse``) or — ltkit's re-evaluating variant — with the noise predicted again at the moved x_t."""
    F = torch.nn.functional
    scheduler = model.ddim_scheduler()
    out = []
    for b in range(len(labels)):
        y = labels[b:b + 1]
        both = dict(class_labels=torch.cat([y, torch.full_like(y, model.null_class)]))
        x = noise[b:b + 1].clone()
        scheduler.set_timesteps(steps)

        def cfg_noise(z, t):
            c, u = model.unet(torch.cat([z, z]), t, **both).sample.chunk(2)
            return u + cfg * (c - u)

        for i, t in enumerate(scheduler.timesteps):
            with torch.no_grad():
                noise_pred = cfg_noise(x, t)
            if i % every == 0:
                latents = x.detach().requires_grad_()
                with torch.enable_grad():
                    pred = model.unet(latents, t, class_labels=y).sample
                    ab = scheduler.alphas_cumprod[t]
                    x0 = (latents - (1 - ab) ** 0.5 * pred) / ab ** 0.5
                    fac = (1 - ab) ** 0.5
                    sample = x0 * fac + latents * (1 - fac) if blend else x0
                    image = (sample + 1) / 2
                    if rescale:
                        image = image - image.min().detach()
                        image = image / image.max().detach()
                    logits = clf(image)
                    if kind == "loss":
                        crit = F.cross_entropy(logits, F.one_hot(y, 10).float())
                    else:
                        crit = F.cross_entropy(logits, F.softmax(logits, dim=-1))
                    (grads,) = torch.autograd.grad(crit, latents)
                x = x + grads / (grads.norm(2) + eps) * latents.norm(2).detach() * scale
                if not reuse:
                    with torch.no_grad():
                        noise_pred = cfg_noise(x, t)
            x = scheduler.step(noise_pred, t, x).prev_sample
        out.append(x)
    return diffusion.to_unit(torch.cat(out))


@pytest.mark.parametrize("kind", ["entropy", "loss"])
@pytest.mark.parametrize("mode", feedback.MODES)
def test_each_mode_is_its_sampler_written_out(tiny, kind, mode):
    model, clf = tiny
    labels = torch.tensor([0, 4, 9])
    noise = model.initial_noise(3, 21)
    guidance = Guidance(kind, 0.2, every=2, mode=mode)
    ours = feedback.guided_sample(model, labels, clf, guidance, steps=5, cfg_scale=2.0, noise=noise)
    reference = _reference_sampler(model, clf, labels, noise, kind, 0.2, 2, 5, 2.0, reuse=guidance.reuses_noise,
                                   blend=guidance.blend, rescale=guidance.rescale, eps=guidance.eps)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    other = feedback.guided_sample(model, labels, clf, Guidance(kind, 0.2, every=2, mode=[m for m in feedback.MODES
                                                                                          if m != mode][0]),
                                   steps=5, cfg_scale=2.0, noise=noise)
    assert (other - ours).abs().max() > 1e-3  # the two samplers differ


def test_the_released_mode_saves_one_network_evaluation_per_guided_step(tiny):
    """Images through the UNet per guided step: B (conditional, with gradients) + B (unconditional) when the
    noise predicted before the move is reused, B + 2B when it is predicted again; the plain step: 2B."""
    model, clf = tiny
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(len(args[0])),
                                                  with_kwargs=True)
    try:
        counts = {}
        for name, guidance in [("plain", None), *[(m, Guidance("entropy", 0.1, every=2, mode=m)) for m in feedback.MODES]]:
            seen.clear()
            feedback.guided_sample(model, [1, 2, 3], clf, guidance, steps=4)
            counts[name] = sum(seen)
    finally:
        handle.remove()
    assert counts == {"plain": 4 * 6, "released": 4 * 6, "re-evaluate": 2 * 6 + 2 * 9}


# --------------------------------------------------------------------------- Mahalanobis hardness
def test_tied_shrunk_gaussians_match_a_hand_computation():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 5)) + np.repeat(rng.normal(size=(3, 5)) * 3, 20, axis=0)
    labels = np.repeat(np.arange(3), 20)
    means, precision, lam = feedback.fit_class_gaussians(torch.tensor(feats), torch.tensor(labels), 3, shrinkage=0.0)
    hand_means = np.stack([feats[labels == k].mean(0) for k in range(3)])
    residual = feats - hand_means[labels]
    np.testing.assert_allclose(means, hand_means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(precision, np.linalg.inv(residual.T @ residual / 60), rtol=1e-4)
    _, _, lam = feedback.fit_class_gaussians(torch.tensor(feats), torch.tensor(labels), 3)
    assert lam == pytest.approx(LedoitWolf(assume_centered=True).fit(residual).shrinkage_)
    d = torch.tensor(feats[:1] - hand_means[:1], dtype=torch.float32)
    value = feedback.criterion_values("hardness", torch.zeros(1, 3), torch.tensor([0]), torch.tensor(feats[:1]).float(),
                                      means, precision)
    assert value.item() == pytest.approx((d @ precision @ d.T).item(), rel=1e-5)


# --------------------------------------------------------------------------- filling
@pytest.mark.parametrize("target", [None, 140, 200, 50])
def test_fill_counts_make_the_classes_uniform(target):
    fill = feedback.fill_counts(COUNTS, target)
    goal = max(COUNTS) if target is None else target
    assert all(f >= 0 for f in fill)
    assert [n + f for n, f in zip(COUNTS, fill)] == [max(n, goal) for n in COUNTS]
    if target is None:
        assert sum(fill) == 10 * 140 - sum(COUNTS) == 891


def test_synthesized_fill_has_the_fill_counts_and_round_trips(tiny, tmp_path):
    model, clf = tiny
    counts = [9, 7, 8, 9, 6, 9, 9, 8, 9, 9]
    synthetic = feedback.synthesize_fill(model, counts, clf, Guidance("hardness", 0.05), steps=3, batch_size=4,
                                         progress=False)
    assert synthetic.class_counts(10) == feedback.fill_counts(counts)
    assert synthetic.x.dtype == torch.uint8 and synthetic.x.shape == (7, 1, 8, 8)
    loaded = feedback.SyntheticSet.load(synthetic.save(tmp_path / "syn.pt"))
    assert torch.equal(loaded.x, synthetic.x) and torch.equal(loaded.y, synthetic.y) and loaded.info == synthetic.info
    assert loaded.info["guidance"]["criterion"] == "hardness"
    # each image starts from its own seeded noise: the set does not depend on the batch size
    again = feedback.synthesize_fill(model, counts, clf, Guidance("hardness", 0.05), steps=3, batch_size=7,
                                     progress=False)
    assert (again.x.int() - synthetic.x.int()).abs().max() <= 1


# --------------------------------------------------------------------------- a latent pipeline (no downloads)
def _tiny_pipeline():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=4).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, layers_per_block=1, sample_size=8).eval()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return types.SimpleNamespace(unet=unet, vae=vae, scheduler=scheduler)


def test_latent_pipeline_guidance_decodes_x0_and_s0_is_plain_ddim():
    pipe = _tiny_pipeline()
    clf = _tiny_classifier(channels=3, size=8, input_size=8)
    labels = torch.tensor([2, 7])
    gen = torch.Generator().manual_seed(3)
    emb, neg = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    common = dict(prompt_embeds=emb, negative_prompt_embeds=neg, steps=4, cfg_scale=3.0, seed=1, progress=False)
    plain = feedback.pipeline_feedback_sample(pipe, labels, clf, None, **common)
    zero = feedback.pipeline_feedback_sample(pipe, labels, clf, Guidance("entropy", 0.0), **common)
    guided = feedback.pipeline_feedback_sample(pipe, labels, clf, Guidance("entropy", 0.03, every=2), **common)
    assert plain.shape == (2, 3, 8, 8) and 0 <= plain.min() and plain.max() <= 1
    assert torch.equal(plain, zero) and not torch.equal(plain, guided)
    # the gradient flows through the VAE decoder: one ascent step raises the entropy of the decoded x̂0
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    decode = feedback._vae_decoder(pipe.vae)
    crit = lambda images, y: clf.criterion(images, y, "entropy")  # noqa: E731
    x, t, cond = torch.randn(2, 4, 4, 4, generator=gen), torch.tensor(500), dict(encoder_hidden_states=emb)
    grad, before = feedback.feedback_gradient(pipe.unet, scheduler, x, t, cond, labels, crit, decode)
    _, after = feedback.feedback_gradient(pipe.unet, scheduler, x + feedback.normalised_step(grad, x, 1e-3), t, cond,
                                          labels, crit, decode)
    assert (after > before).all()


def test_paper_scale_path_pipeline_fill_to_png_split_file_then_feedback_fill_on_split_file_data(tmp_path):
    """pipeline_fill writes PNGs + a split file (and resumes); feedback-fill reads it for split-file data."""
    from PIL import Image

    digits = data.load_digits_lt()
    real_counts = [6, 5, 4, 3, 3, 2, 2, 2, 2, 2]
    for split, x_all, y_all, per_class in [("train", digits.x_train, digits.y_train, real_counts),
                                           ("test", digits.x_test, digits.y_test, [3] * 10)]:
        lines = []
        for c, n in enumerate(per_class):
            for i in torch.nonzero(y_all == c).flatten()[:n].tolist():
                Image.fromarray(x_all[i, 0].numpy()).save(tmp_path / f"{split}{i}.png")
                lines.append(f"{split}{i}.png {c}\n")
        (tmp_path / f"{split}.txt").write_text("".join(lines))
    real = data.load_split_file_lt(tmp_path, tmp_path / "train.txt", tmp_path / "test.txt", num_classes=10)

    pipe = _tiny_pipeline()
    emb = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0))
    pipe.encode_prompt = lambda prompts, device, n, cfg, negative: (emb[:len(prompts)], -emb[:len(prompts)])
    clf = _tiny_classifier(channels=3, size=8, input_size=8)
    args = (pipe, real_counts, lambda c: f"a photo of the digit {c}", clf, Guidance("entropy", 0.03))
    split = feedback.pipeline_fill(*args, tmp_path / "syn", steps=2, batch_size=8, progress=False)
    entries = data.read_split_file(split)
    assert [label for _, label in entries] == [c for c, n in enumerate(feedback.fill_counts(real_counts)) for _ in range(n)]
    assert all((split.parent / path).is_file() for path, _ in entries)
    (split.parent / entries[0][0]).unlink()  # an interrupted fill: only the missing image is made again
    calls = []
    original = feedback.pipeline_feedback_sample
    feedback.pipeline_feedback_sample = lambda *a, **k: calls.append(len(a[1])) or original(*a, **k)
    try:
        feedback.pipeline_fill(*args, tmp_path / "syn", steps=2, batch_size=8, progress=False)
    finally:
        feedback.pipeline_feedback_sample = original
    assert calls == [1]

    record = train.fit("digits-lt", data=real, dataset="imagenet-lt", model_params={"in_channels": 3}, image_size=8,
                       num_workers=0, epochs=2,  # a split-file data set (dataset names its kind), 3 channels
                       loss="bs", method="feedback-fill", method_params=dict(synthetic=str(split)),
                       out_dir=str(tmp_path / "runs"), progress=False)
    assert [row["images"] for row in record["history"]] == [2 * sum(real_counts)] * 2
    assert sum(map(sum, record["result"]["confusion"])) == 30


# --------------------------------------------------------------------------- bad input
def test_a_nan_producing_classifier_gives_a_clear_error(tiny):
    model, _ = tiny
    nan_classifier = lambda images, labels: images.flatten(1).sum(1) * float("nan")  # noqa: E731
    with pytest.raises(ValueError, match=r"feedback criterion is NaN or inf at DDIM step 0 .*samples \[0, 1\]"):
        feedback.guided_sample(model, [0, 1], nan_classifier, Guidance("loss", 0.1), steps=3)
    with pytest.raises(ValueError, match="initial noise x_T contains NaN"):
        model.sample([0], steps=2, noise=torch.full((1, 1, 8, 8), float("nan")))


def test_missing_checkpoints_and_bad_settings_give_clear_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="no diffusion checkpoint at .*make_checkpoints"):
        diffusion.load_diffusion(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no feedback classifier at"):
        feedback.load_feedback_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="no synthetic set at"):
        feedback.SyntheticSet.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown criterion 'margin'"):
        Guidance("margin")
    with pytest.raises(ValueError, match=r"scale=-0.1 must be >= 0 \(0 = no feedback"):
        Guidance("loss", -0.1)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        tiny[0].sample([10])
    with pytest.raises(ValueError, match="needs a classifier"):
        feedback.guided_sample(tiny[0], [1], None, Guidance())
    with pytest.raises(ValueError, match="target=-1 must be a non-negative integer"):
        feedback.fill_counts(COUNTS, -1)
    with pytest.raises(ValueError, match="feedback-fill needs method_params"):
        train.make_method("feedback-fill", {})
    with pytest.raises(ValueError, match=r"real_fraction=0 must lie in \(0, 1\]"):
        train.make_method("feedback-fill", dict(synthetic="x.pt", real_fraction=0))


# --------------------------------------------------------------------------- training with the fill
@pytest.fixture(scope="module")
def synthetic_path(tmp_path_factory):
    """A stand-in synthetic set (real test images with the fill labels' classes): the method only moves tensors."""
    digits = data.load_digits_lt()
    fill = feedback.fill_counts(digits.class_counts, 60)
    idx = torch.cat([torch.nonzero(digits.y_test == c).flatten().repeat(3)[:n] for c, n in enumerate(fill)])
    path = tmp_path_factory.mktemp("syn") / "fill.pt"
    return str(feedback.SyntheticSet(digits.x_test[idx], digits.y_test[idx], dict(target=60)).save(path))


def _fit(tmp_path, synthetic_path, **overrides):
    params = dict(epochs=2, loss="bs", method="feedback-fill", method_params=dict(synthetic=synthetic_path),
                  out_dir=str(tmp_path), progress=False)
    return train.fit("digits-lt", **{**params, **overrides})


def test_every_real_batch_gets_an_equal_synthetic_half(tmp_path, synthetic_path, monkeypatch):
    seen = []
    original = train.Context.mixed_loss
    monkeypatch.setattr(train.Context, "mixed_loss", lambda self, logits, batch: seen.append(batch) or
                        original(self, logits, batch))
    record = _fit(tmp_path, synthetic_path, epochs=1)
    assert record["history"][0]["images"] == 2 * 509
    for batch in seen:
        real = batch.index >= 0
        assert real.sum() == (~real).sum()
        assert torch.equal(real, torch.arange(len(real)) < real.sum())  # real first, then synthetic
    synthetic_labels = torch.cat([b.y[b.index < 0] for b in seen])
    fill = torch.tensor(feedback.SyntheticSet.load(synthetic_path).class_counts(10))  # 230 images
    drawn = torch.bincount(synthetic_labels, minlength=10)  # 509 draws: two passes over a permutation, then 49 more
    assert drawn.sum() == 509 and (drawn >= 2 * fill).all() and (drawn <= 3 * fill).all()


def test_mixed_prior_is_the_class_distribution_of_the_mixed_batches(synthetic_path):
    digits = data.load_digits_lt()
    method = train.make_method("feedback-fill", dict(synthetic=synthetic_path, prior="mixed"))
    config = train.preset("digits-lt")
    ctx = train.Context(config, digits, digits.class_counts, torch.nn.Identity(), losses.make_loss("ce", COUNTS),
                        None, torch.device("cpu"), train_x=digits.x_train, train_y=digits.y_train)
    method.setup(ctx)
    syn = np.array(feedback.fill_counts(COUNTS, 60))
    expected = 0.5 * np.array(COUNTS) / sum(COUNTS) + 0.5 * syn / syn.sum()
    np.testing.assert_allclose(method.log_prior.exp(), expected, rtol=1e-5)


def test_feedback_fill_resumes_bit_exactly(tmp_path, synthetic_path, monkeypatch):
    whole = _fit(tmp_path, synthetic_path, name="whole")
    save = train._checkpoint

    def save_then_die(path, ctx, method, epoch):
        save(path, ctx, method, epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, synthetic_path, name="cut")
    monkeypatch.setattr(train, "_checkpoint", save)
    resumed = _fit(tmp_path, synthetic_path, name="cut", if_exists="resume")
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    a = runs.load_checkpoint(f"{whole['dir']}/checkpoint.pt")["model"]
    b = runs.load_checkpoint(f"{resumed['dir']}/checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_draws_the_single_process_synthetic_batches(tmp_path, synthetic_path, monkeypatch):
    """Each rank takes a position shard of the same permutation: DDP == one process (MLP, no batch norm)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = dict(model="mlp", augment="none", epochs=1, imbalance_factor=14, loss="bs", method="feedback-fill",
                  method_params=dict(synthetic=synthetic_path), out_dir=str(tmp_path), progress=False)
    single = launch.run("digits-lt", name="single", **common)
    ddp = launch.run("digits-lt", nproc=2, name="ddp", **common)
    assert ddp["result"]["world_size"] == 2 and ddp["history"][0]["images"] == single["history"][0]["images"]
    for a, b in zip(single["history"], ddp["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    a = runs.load_checkpoint(f"{single['dir']}/checkpoint.pt")["model"]
    b = runs.load_checkpoint(f"{ddp['dir']}/checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the committed checkpoints
def test_a_committed_fill_is_named_by_reference_not_by_a_path_into_the_package(tmp_path, monkeypatch):
    """'committed:<generator>/<fill>' stays in the run record as written: a run made on one machine is reused on
    another (where the package is installed elsewhere) instead of failing with a config mismatch."""
    ref = feedback.committed_fill("digits-lt", "loss")
    assert ref == "committed:digits-lt/loss"
    assert feedback.resolve_synthetic(ref) == feedback.synthetic_set_path("digits-lt", "loss")
    assert feedback.resolve_synthetic("some/where.pt") == Path("some/where.pt")
    method = train.make_method("feedback-fill", dict(synthetic=ref))
    assert method.path == str(feedback.synthetic_set_path("digits-lt", "loss"))
    common = dict(epochs=1, max_steps=1, loss="bs", method="feedback-fill", method_params=dict(synthetic=ref),
                  out_dir=str(tmp_path), name="fill", progress=False)
    record = train.fit("digits-lt", **common)
    assert record["config"]["method_params"]["synthetic"] == ref
    assert str(diffusion.CHECKPOINT_DIR) not in json.dumps(record["config"])
    # the package installed elsewhere (another machine): the same config resumes the finished run
    moved = tmp_path / "elsewhere" / "synthetic"
    moved.mkdir(parents=True)
    shutil.copy(feedback.synthetic_set_path("digits-lt", "loss"), moved / "digits-lt-loss.pt")
    monkeypatch.setattr(feedback, "SYNTHETIC_DIR", moved)
    assert feedback.resolve_synthetic(ref) == moved / "digits-lt-loss.pt"
    again = train.fit("digits-lt", **common, if_exists="resume")
    assert again["result"] == record["result"]
    for bad, match in [("committed:digits-lt", "committed:<generator>/<fill>"),
                       ("committed:digits-lt/margin", "fill in"), ("committed:imagenet/loss", "generator in")]:
        with pytest.raises(checks.InputError, match=match):
            train.make_method("feedback-fill", dict(synthetic=bad))


def test_committed_checkpoints_make_digits_the_long_tailed_classifier_recognises():
    model = diffusion.load_diffusion("digits-lt")
    clf = feedback.load_feedback_classifier("digits-lt")
    assert model.image_shape == (1, 8, 8) and model.info["variant"] == "digits-lt"
    labels = torch.arange(20) % 10
    with torch.no_grad():
        images = model.sample(labels, steps=10, cfg_scale=2.0, seed=0)
        accuracy = (clf(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.7
    size = sum(f.stat().st_size for f in diffusion.CHECKPOINT_DIR.rglob("*") if f.is_file())
    assert size < 5e6
