"""PPO math against values worked out by hand (the comments show the arithmetic)."""

import math

import pytest
import torch

from alignment.rl.ppo_math import (
    KLController,
    RunningMoments,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    logprobs_of,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

t = torch.tensor


def flat(rows, **kw):
    return pytest.approx([v for r in rows for v in r], **kw)


def test_gae_full_row():
    # gamma 1, lam 0.5, V = .5 .6 .7, reward 1 at the end:
    # d2 = 1 + 0 - .7 = .3            A2 = .3
    # d1 = 0 + .7 - .6 = .1           A1 = .1 + .5 * .3 = .25
    # d0 = 0 + .6 - .5 = .1           A0 = .1 + .5 * .25 = .225
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == flat([[0.225, 0.25, 0.3]])
    assert ret.flatten().tolist() == flat([[0.725, 0.85, 1.0]])


def test_gae_padding_ends_the_episode():
    # the last position is padding: its reward (9) and value (.7) are ignored, V after the end is 0
    # d1 = 1 + 0 - .6 = .4 -> A1 = .4 ; d0 = 0 + .6 - .5 = .1 -> A0 = .1 + .5 * .4 = .3
    adv, ret = gae(t([[0.0, 1.0, 9.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 0]]), gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == flat([[0.3, 0.4, 0.0]])
    assert ret.flatten().tolist() == flat([[0.8, 1.0, 0.0]])


def test_gae_discount():
    # gamma .9, lam 1: A_t = discounted return - V_t; rewards 1,1 with V = 0 -> A = [1 + .9, 1]
    adv, _ = gae(t([[1.0, 1.0]]), t([[0.0, 0.0]]), t([[1, 1]]), gamma=0.9, lam=1.0)
    assert adv.flatten().tolist() == flat([[1.9, 1.0]])


def test_policy_loss_clipping():
    # ratios 1.5, 0.5, 1.1 with advantages 1, -1, 2 and clip .2:
    # tok0: max(-1.5, -1.2) = -1.2 (clipped)  tok1: max(.5, .8) = .8 (clipped)  tok2: -2.2 (inside the band)
    old = t([[0.0, 0.0, 0.0]])
    new = torch.log(t([[1.5, 0.5, 1.1]]))
    loss, stats = policy_loss(new, old, t([[1.0, -1.0, 2.0]]), t([[1, 1, 1]]), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    # approx_kl (k3 of old||new): mean of (r - 1) - log r
    expected = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert stats["approx_kl"].item() == pytest.approx(expected, rel=1e-5)


def test_policy_loss_ignores_padding_and_has_the_right_gradient():
    new = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(new, torch.zeros(1, 2), t([[2.0, 100.0]]), t([[1, 0]]))
    loss.backward()
    assert loss.item() == pytest.approx(-2.0)  # only token 0: -A * ratio = -2
    assert new.grad.flatten().tolist() == flat([[-2.0, 0.0]])  # d(-A e^x)/dx at 0 = -A


def test_value_loss_clipping():
    # V 1.0, V_old .5, R 2: clipped V = .7; max((1-2)^2, (.7-2)^2) = 1.69; loss = .845, clipped taken
    loss, stats = value_loss(t([[1.0]]), t([[0.5]]), t([[2.0]]), t([[1]]), clip=0.2)
    assert loss.item() == pytest.approx(0.845)
    assert stats["value_clipfrac"].item() == 1.0
    # inside the band: plain 0.5 * (V - R)^2 = 0.5 * .36
    loss, stats = value_loss(t([[0.6]]), t([[0.5]]), t([[0.0]]), t([[1]]), clip=0.2)
    assert loss.item() == pytest.approx(0.18)
    assert stats["value_clipfrac"].item() == 0.0


def test_kl_estimators():
    logp, ref = t([-1.0]), t([-2.0])  # log p - log q = 1
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert kl_per_token(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(logp, ref, "k4")


def test_kl_estimators_agree_in_expectation():
    # sampling x ~ p, the mean of k1 and k3 both converge to KL(p||q)
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    x = torch.multinomial(p, 200_000, replacement=True)
    exact = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        est = kl_per_token(p.log()[x], q.log()[x], kind).mean().item()
        assert est == pytest.approx(exact, abs=0.01)


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    r = token_rewards(t([2.0, 3.0]), kl, t([[1, 1, 1], [1, 1, 0]]), kl_coef=0.5)
    assert r.flatten().tolist() == flat([[-0.05, -0.1, 1.85], [-0.2, 2.75, 0.0]])


def test_masked_whiten_and_mean():
    x, m = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    # mean 2, unbiased variance 1 -> -1, 0, 1; the padded entry is 0
    assert masked_whiten(x, m).tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(x, m, shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
    assert masked_mean(t([[1.0, 3.0], [5.0, 7.0]]), t([[1, 1], [1, 0]]), dim=1).tolist() == [2.0, 5.0]


def test_entropy_logprobs_explained_variance():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    logits = torch.log(t([[[0.5, 0.25, 0.25]]]))
    assert logprobs_of(logits, t([[1]])).item() == pytest.approx(math.log(0.25))
    r, m = t([[1.0, 2.0, 3.0]]), t([[1, 1, 1]])
    assert explained_variance(r, r, m) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(r, 2.0), r, m) == pytest.approx(0.0)


def test_kl_controller():
    fixed = KLController(0.1)
    assert [fixed.update(kl, 256) for kl in (100.0, 0.0, 6.0)] == [0.1, 0.1, 0.1], "no target: the coefficient stays"
    # KL twice the target: error clipped to .2 -> coef * (1 + .2 * 256 / 10000)
    adaptive = KLController(0.1, target=6.0, horizon=10_000)
    assert adaptive.update(12.0, 256) == pytest.approx(0.1 * 1.00512)
    # KL at half the target: error -.5 clipped to -.2
    assert KLController(0.1, 6.0, 1000).update(3.0, 100) == pytest.approx(0.1 * 0.98)


def test_running_moments_equal_the_moments_of_everything_seen():
    batches = [t([1.0, 2.0, 3.0]), t([10.0]), t([-4.0, 0.5, 7.0, 2.0])]
    m = RunningMoments()
    for b in batches:
        m.update(b)
    every = torch.cat(batches)
    assert m.count == 8
    assert m.mean == pytest.approx(every.mean().item())
    assert m.std == pytest.approx(every.std(unbiased=False).item())
    # normalised with the moments so far: mean 0, unit (population) spread over what was seen
    z = m.normalise(every)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6) and z.std(unbiased=False).item() == pytest.approx(1.0)
    # a first batch of one value: centred, not divided by a zero spread
    one = RunningMoments()
    one.update(t([3.0]))
    assert one.normalise(t([3.0, 5.0])).tolist() == [0.0, 2.0]
