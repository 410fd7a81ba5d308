"""Region-perturbation curves against Quantus 0.6 where its definition is heatjob's, against
closed-form curves of a linear model, and the cases where heatjob differs on purpose."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import scipy.ndimage
import torch

from heatjob.errors import SpecError
from heatjob.eval.faithfulness import aopc, aopc_table, patch_orders, resolve_settings
from heatjob.eval.perturbation import baseline_values, gaussian_blur, unit_curves

UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: the input is the image itself


def settings(**changes):
    return resolve_settings({"steps": 6, "patch": 4, **changes}, 16, "test:")


def small_cnn(size: int, n_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, n_classes),
    ).eval()


def case(n=3, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    x += np.array([1.0, 0.0, -1.0], np.float32)[:, None, None]  # channels with other means
    heatmaps = rng.standard_normal((n, size, size)).astype(np.float32)
    return x, heatmaps, np.array([0, 2, 4])[:n]


def heatjob_curves(model, x, heatmaps, targets, s, batch_size=7):
    rows = np.arange(len(x))
    out = unit_curves(
        model, torch.from_numpy(x), {"m": heatmaps}, targets, rows, rows, s, batch_size, *UNIT
    )
    return out["m"]


def quantus_region(model, x, heatmaps, targets, order, steps, patch, baseline):
    metric = quantus.RegionPerturbation(
        patch_size=patch,
        order=order,
        regions_evaluation=steps,
        perturb_baseline=baseline,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=model, x_batch=x, y_batch=targets, a_batch=heatmaps[:, None], softmax=False
        )
    return np.asarray(scores)  # f(x_0) - f(x_k), k = 1..steps


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_equals_quantus_with_a_zero_baseline(order):
    model = small_cnn(16)
    x, heatmaps, targets = case()
    s = settings(baseline="zero", order=[order], steps=10)
    curve = heatjob_curves(model, x, heatmaps, targets, s)[order]
    expected = quantus_region(model, x, heatmaps, targets, order, 10, 4, 0.0)
    np.testing.assert_allclose(curve[:, :1] - curve[:, 1:], expected, rtol=1e-5, atol=1e-5)


def test_mean_baseline_equals_quantus_given_the_channel_means():
    """Quantus takes an array of baseline values per perturbed index; a patch's indices run
    channel by channel, so the image's channel means, repeated, are heatjob's "mean"."""
    model = small_cnn(16)
    x, heatmaps, targets = case()
    patch = 4
    means = np.repeat(x.mean(axis=(2, 3)), patch * patch, axis=1)  # (n, C·p·p)
    curve = heatjob_curves(model, x, heatmaps, targets, settings(order=["morf"]))["morf"]
    expected = quantus_region(model, x, heatmaps, targets, "morf", 6, patch, means)
    np.testing.assert_allclose(curve[:, :1] - curve[:, 1:], expected, rtol=1e-5, atol=1e-5)


def test_quantus_mean_differs_on_purpose():
    """Quantus's "mean" is one value over all channels of the image as perturbed so far
    (it moves as patches are replaced); heatjob's is each channel's mean of the original
    image. Quantus's first step is the all-channel mean of the original image, by hand."""
    model = small_cnn(16)
    x, heatmaps, targets = case()
    ours = heatjob_curves(model, x, heatmaps, targets, settings(order=["morf"]))["morf"]
    theirs = quantus_region(model, x, heatmaps, targets, "morf", 6, 4, "mean")
    assert np.abs((ours[:, :1] - ours[:, 1:]) - theirs).max() > 1e-3
    first = patch_orders(heatmaps, 4, "morf", np.arange(3), 0)[:, 0]
    by_hand = x.copy()
    for i, p in enumerate(first):
        py, px = divmod(int(p), 4)
        by_hand[i, :, py * 4 : py * 4 + 4, px * 4 : px * 4 + 4] = x[i].mean()
    with torch.no_grad():
        f0 = model(torch.from_numpy(x))[np.arange(3), targets].numpy()
        f1 = model(torch.from_numpy(by_hand))[np.arange(3), targets].numpy()
    np.testing.assert_allclose(theirs[:, 0], f0 - f1, rtol=1e-5, atol=1e-5)


def test_one_pixel_patches_equal_quantus_pixel_flipping():
    """PixelFlipping flips (channel, pixel) features most relevant first; with the heatmap
    on every channel and three features a step, a step is one pixel: heatjob's patch = 1."""
    size = 6  # Quantus wants H·W divisible by features_in_step
    model = small_cnn(size)
    x, heatmaps, targets = case(size=size)
    s = resolve_settings(
        {"steps": size * size, "patch": 1, "order": ["morf"], "baseline": "zero"}, size, "t:"
    )
    curve = heatjob_curves(model, x, heatmaps, targets, s, batch_size=64)["morf"]
    metric = quantus.PixelFlipping(
        features_in_step=3, perturb_baseline=0.0, normalise=False, abs=False,
        disable_warnings=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = metric(
            model=model, x_batch=x, y_batch=targets, a_batch=heatmaps[:, None], softmax=False
        )
    np.testing.assert_allclose(curve[:, 1:], np.asarray(expected), rtol=1e-5, atol=1e-5)


def linear_case(size=16, seed=1):
    """f(x) = W·x + b on the flattened image: removing a region changes the target logit
    by exactly Σ w (x − baseline) over it, and gradient × input is the exact heatmap."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 4)).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    targets = np.array([1, 3])
    w = model[1].weight.detach().numpy().reshape(4, 3, size, size)[targets]
    heatmaps = (w * x).sum(axis=1)
    return model, x, targets, w, heatmaps


@pytest.mark.parametrize("baseline", ["zero", "mean"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_linear_model_curves_in_closed_form(order, baseline):
    model, x, targets, w, heatmaps = linear_case()
    s = settings(order=[order], baseline=baseline, steps=12)
    curve = heatjob_curves(model, x, heatmaps, targets, s)[order]
    fill = 0.0 if baseline == "zero" else x.mean(axis=(2, 3), keepdims=True)
    change = (w * (x - fill)).sum(axis=1)  # (n, S, S): what removing a pixel takes away
    f0 = np.einsum("nchw,nchw->n", w, x) + model[1].bias.detach().numpy()[targets]
    for i in range(2):
        sums = [
            change[i, py : py + 4, px : px + 4].sum()
            for py in range(0, 16, 4)
            for px in range(0, 16, 4)
        ]
        ranking = [
            heatmaps[i, py : py + 4, px : px + 4].sum()
            for py in range(0, 16, 4)
            for px in range(0, 16, 4)
        ]
        chosen = sorted(range(16), key=lambda p: -ranking[p] if order == "morf" else ranking[p])
        expected = [f0[i]] + [f0[i] - sum(sums[p] for p in chosen[:k]) for k in range(1, 13)]
        np.testing.assert_allclose(curve[i], expected, rtol=1e-4, atol=1e-4)
        removed = [f0[i] - e for e in expected]
        assert aopc(curve[i : i + 1])[0] == pytest.approx(np.mean(removed), abs=1e-4)


def test_linear_model_morf_removes_most_and_lerf_least():
    """With the exact heatmap of a linear model and a zero baseline, MoRF's cumulative drop
    is the largest any order can have at every step, LeRF's the smallest."""
    model, x, targets, _, heatmaps = linear_case()
    c = heatjob_curves(model, x, heatmaps, targets, settings(baseline="zero", steps=16))
    assert (c["morf"] <= c["random"] + 1e-4).all() and (c["random"] <= c["lerf"] + 1e-4).all()
    assert (aopc(c["morf"]) > aopc(c["random"])).all() and (
        aopc(c["random"]) > aopc(c["lerf"])
    ).all()


def test_batching_steps_does_not_change_the_curves():
    model = small_cnn(16)
    x, heatmaps, targets = case()
    one = heatjob_curves(model, x, heatmaps, targets, settings(), batch_size=1)
    many = heatjob_curves(model, x, heatmaps, targets, settings(), batch_size=64)
    for order in one:
        np.testing.assert_allclose(one[order], many[order], rtol=1e-5, atol=1e-5)


def test_random_order_is_seeded_per_row_and_shared_by_methods():
    """Quantus draws its random order from NumPy's global state; heatjob's is fixed by
    (seed, store row), whatever the heatmap and however rows are grouped."""
    model = small_cnn(16)
    x, heatmaps, targets = case()
    rows = np.array([10, 11, 12])
    s = settings()
    out = unit_curves(
        model, torch.from_numpy(x), {"a": heatmaps, "b": -heatmaps}, targets, rows, rows, s, 5,
        *UNIT,
    )  # fmt: skip
    np.testing.assert_array_equal(out["a"]["random"], out["b"]["random"])
    assert not np.array_equal(out["a"]["morf"], out["b"]["morf"])
    alone = patch_orders(heatmaps[1:2], 4, "random", rows[1:2], 0)
    np.testing.assert_array_equal(alone[0], patch_orders(heatmaps, 4, "random", rows, 0)[1])
    assert not np.array_equal(
        patch_orders(heatmaps, 4, "random", rows, 1), patch_orders(heatmaps, 4, "random", rows, 0)
    )


def test_ties_are_taken_in_patch_order():
    flat = np.zeros((1, 8, 8), np.float32)
    flat[0, 4:, 4:] = 1.0  # patch 3 first, then 0, 1, 2 as they come
    np.testing.assert_array_equal(patch_orders(flat, 4, "morf", np.arange(1), 0)[0], [3, 0, 1, 2])
    np.testing.assert_array_equal(patch_orders(flat, 4, "lerf", np.arange(1), 0)[0], [0, 1, 2, 3])


def test_blur_equals_scipy_gaussian_filter():
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), 4.0).numpy()
    theirs = scipy.ndimage.gaussian_filter(x, sigma=(0, 0, 4, 4), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_noise_is_a_seeded_uniform_image_in_the_normalised_space():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.zeros(2, 3, 16, 16)
    noise = baseline_values(x, "noise", 4, np.array([5, 5]), 0, mean, std).numpy()
    pixels = noise * np.array(std)[:, None, None] + np.array(mean)[:, None, None]
    assert pixels.min() >= -1e-6 and pixels.max() < 1 + 1e-6 and pixels.std() > 0.25
    np.testing.assert_array_equal(noise[0], noise[1])  # one sample: one noise image
    other = baseline_values(x, "noise", 4, np.array([6, 6]), 0, mean, std).numpy()
    assert not np.array_equal(noise[0], other[0])


def test_aopc_bootstrap_resamples_images_with_their_rows():
    values = {"a": np.array([1.0, 3.0, 2.0, np.nan]), "b": np.array([0.0, 0.0, 1.0, 1.0])}
    rows_sample = np.array([0, 0, 1, 2])
    means, intervals = aopc_table(values, rows_sample, 3, 200, 0)
    assert means == {"a": 2.0, "b": 0.5}
    # "a": sample 0 gives (1 + 3), sample 1 gives 2: every resample's mean lies in [1.0, 3.0]
    # and can only be 2 (both or only sample 0, or only sample 1): the interval is [2, 2]
    assert intervals["a"] == [2.0, 2.0]
    lo, hi = intervals["b"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"steps": 0}, "steps must be 1 to 16"),
        ({"steps": 17}, "steps must be 1 to 16"),
        ({"patch": 5}, "patch must divide [dataset] image_size = 16"),
        ({"patch": True}, "patch must be an integer"),
        ({"order": ["morf", "first"]}, "order must be a list of morf, lerf, random"),
        ({"order": ["morf", "morf"]}, "lists an order twice"),
        ({"baseline": "black"}, "baseline must be one of mean, zero, blur, noise"),
        ({"size": 3}, "unknown key 'size'"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(table, fragment):
    with pytest.raises(SpecError) as error:
        where = "job.toml: [evaluation] faithfulness"
        resolve_settings({"patch": 4, "steps": 4, **table}, 16, where)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert message.startswith("job.toml: [evaluation] faithfulness")
