"""The prior-preservation split and min-SNR weighting against a hand computation."""

from __future__ import annotations

import torch

from subjectgen.training.losses import diffusion_loss, min_snr_weights, snr


def test_prior_split_without_snr():
    pred = torch.zeros(4, 1, 1, 1)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)  # per-sample MSE: 1, 4, 9, 16
    alphas = torch.linspace(0.99, 0.01, 10)
    loss, parts = diffusion_loss(pred, target, torch.tensor([0, 1, 2, 3]), alphas, n_instance=2, prior_weight=0.5)
    assert torch.isclose(parts["instance"], torch.tensor(2.5))        # (1 + 4) / 2
    assert torch.isclose(parts["prior"], torch.tensor(12.5))          # (9 + 16) / 2
    assert torch.isclose(loss, torch.tensor(2.5 + 0.5 * 12.5))


def test_snr_weights_use_each_halfs_own_timesteps():
    alphas = torch.tensor([0.9, 0.5, 0.2, 0.1])                        # SNR: 9, 1, 0.25, 0.111
    timesteps = torch.tensor([0, 1, 2, 3])
    pred = torch.zeros(4, 1, 1, 1)
    target = torch.ones(4, 1, 1, 1)                                    # per-sample MSE: 1
    loss, parts = diffusion_loss(pred, target, timesteps, alphas, "epsilon", n_instance=2, snr_gamma=5.0)
    # epsilon weights: min(snr, 5) / snr -> 5/9, 1, 1, 1
    assert torch.isclose(parts["instance"], torch.tensor((5 / 9 + 1) / 2))
    assert torch.isclose(parts["prior"], torch.tensor(1.0))
    assert torch.isclose(loss, torch.tensor((5 / 9 + 1) / 2 + 1.0))


def test_snr_with_one_sample_per_half_matches_hand_value():
    alphas = torch.tensor([0.9, 0.5])                                  # SNR: 9, 1
    pred = torch.zeros(2, 1, 1, 1)
    target = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)                # MSE: 1 (instance), 4 (prior)
    loss, _ = diffusion_loss(pred, target, torch.tensor([0, 1]), alphas, n_instance=1, prior_weight=0.5,
                             snr_gamma=5.0)
    assert torch.isclose(loss, torch.tensor(5 / 9 * 1 + 0.5 * 1 * 4))
    # diffusers' train_dreambooth.py weighs the instance half with both halves' weights (mean 7/9): not this
    assert not torch.isclose(loss, torch.tensor(7 / 9 * 1 + 0.5 * 4))


def test_v_prediction_weights():
    s = snr(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    assert torch.allclose(s, torch.tensor([9.0, 1 / 9]))
    w = min_snr_weights(s, 5.0, "v_prediction")
    assert torch.allclose(w, torch.tensor([5 / 10, (1 / 9) / (1 / 9 + 1)]))


def test_no_prior_is_plain_mean():
    pred, target = torch.zeros(3, 2, 2, 2), torch.ones(3, 2, 2, 2) * 2
    loss, parts = diffusion_loss(pred, target, torch.tensor([1, 2, 3]), torch.linspace(0.9, 0.1, 5))
    assert torch.isclose(loss, torch.tensor(4.0)) and "prior" not in parts


def test_masked_loss_averages_each_instance_sample_over_its_mask_only():
    pred = torch.zeros(3, 2, 2, 2)
    target = torch.ones(3, 2, 2, 2)
    target[:, :, :, 1] = 3.0                                          # error 1 in the left column, 9 in the right
    masks = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).expand(2, 1, 2, 2)  # both instance samples: left column only
    alphas = torch.linspace(0.9, 0.1, 5)
    loss, parts = diffusion_loss(pred, target, torch.tensor([1, 2, 3]), alphas, n_instance=2, masks=masks)
    assert torch.isclose(parts["instance"], torch.tensor(1.0))        # the right column is not learned
    assert torch.isclose(parts["prior"], torch.tensor(5.0))           # class samples: the whole image
    half = torch.tensor([[0.5, 0.0], [0.5, 0.0]]).expand(2, 1, 2, 2)   # a uniformly scaled mask: same mean
    assert torch.isclose(diffusion_loss(pred, target, torch.tensor([1, 2, 3]), alphas, n_instance=2,
                                        masks=half)[1]["instance"], torch.tensor(1.0))
    ones = torch.ones(2, 1, 2, 2)
    assert torch.isclose(diffusion_loss(pred, target, torch.tensor([1, 2, 3]), alphas, n_instance=2, masks=ones)[0],
                         diffusion_loss(pred, target, torch.tensor([1, 2, 3]), alphas, n_instance=2)[0])


def test_masked_loss_has_no_gradient_outside_the_mask():
    pred = torch.zeros(1, 4, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    loss, _ = diffusion_loss(pred, torch.randn(1, 4, 4, 4), torch.tensor([0]), torch.tensor([0.5]), masks=mask)
    loss.backward()
    assert pred.grad[..., 2:, :].abs().max() == 0 and pred.grad[..., :2, :].abs().min() > 0
