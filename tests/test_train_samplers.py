"""Subnet samplers and the FocusFormer-style policy (deployvit.train.samplers / focus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployvit.counting import count_flops
from deployvit.errors import DeployvitError
from deployvit.spaces import get_space
from deployvit.train.focus import FocusPolicy, policy_from_state, specialise
from deployvit.train.samplers import make_sampler, unlocked_space

SPACE = get_space("test")


def test_uniform_is_a_function_of_seed_and_step():
    a, b = make_sampler("uniform", SPACE, seed=3), make_sampler("uniform", SPACE, seed=3)
    plans = [a.plan(s, 0, 64).archs for s in range(20)]
    assert plans == [b.plan(s, 0, 64).archs for s in range(20)]  # what every rank / a resumed run draws
    assert len({p[0].key for p in plans}) > 5
    assert make_sampler("uniform", SPACE, seed=4).plan(0, 0, 64).archs != plans[0] or plans[1] != make_sampler("uniform", SPACE, 4).plan(1, 0, 64).archs
    assert all(SPACE.contains(p[0]) for p in plans)


def test_sandwich_has_largest_smallest_and_randoms():
    plan = make_sampler("sandwich", SPACE, 0, sandwich_random=3).plan(5, 0, 64)
    assert plan.archs[0] == SPACE.max_arch() and plan.archs[1] == SPACE.min_arch()
    assert len(plan.archs) == 5 and not plan.split


def test_multi_arch_groups_and_width_unlocking():
    sampler = make_sampler("multi-arch", SPACE, 0, groups=4, unlock_epochs=2)
    assert len(sampler.plan(0, 5, 64).archs) == 4 and sampler.plan(0, 5, 64).split
    assert len(sampler.plan(0, 5, 40).archs) == 2  # at least 16 images per group
    early = [sampler.plan(s, 0, 64).archs for s in range(10)]
    assert {a.embed_dim for p in early for a in p} == {64}  # epoch 0: largest widths only
    assert {l.mlp_ratio for p in early for a in p for l in a.layers} == {4.0}
    late = {a.embed_dim for s in range(30) for a in sampler.plan(s, 2, 64).archs}
    assert late == {32, 48, 64}
    half = unlocked_space(SPACE, 0.5).stages[0]
    assert half.embed_dims == (48, 64) and half.num_heads == (2,) and half.depths == SPACE.stages[0].depths


def test_policy_probabilities_count_only_existing_layers():
    policy = FocusPolicy(SPACE)
    gen = torch.Generator().manual_seed(0)
    arch, logp, ent = policy.sample(0.5, gen)
    assert SPACE.contains(arch)
    # uniform start: log p = -log(#embed) - log(#depth) - depth * log(#heads * #ratios)
    s = SPACE.stages[0]
    expected = -np.log(len(s.embed_dims)) - np.log(len(s.depths)) - arch.depth * np.log(len(s.num_heads) * len(s.mlp_ratios))
    assert float(logp.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(ent.detach()) == pytest.approx(-expected, rel=1e-5)
    assert policy.position(SPACE.min_arch()) == 0 and policy.position(SPACE.max_arch()) == 1


def accuracy_like(policy, seed: int = 0):
    """A stand-in for held-out accuracy: saturating in size, noisy (std 0.02 per call, like 128
    images), and not monotone: a fourth layer on the narrowest embedding costs accuracy."""
    rng = np.random.default_rng(seed)

    def score(arch) -> float:
        p = policy.position(arch)
        worse = 0.06 if arch.embed_dim == 32 and arch.depth == 4 else 0.0
        return float(0.95 - 0.5 * np.exp(-4 * p) - worse + rng.normal(0, 0.02))

    return score


def test_focus_sampler_focuses_on_each_budget():
    """Trained on an accuracy-like reward, draws for budgets at 25/50/75% of the FLOPs range use most
    of their budget (median FLOPs 0.6-1.0 x budget) and stay within it (>= 90% of 64 draws)."""
    budgets = (0.25, 0.5, 0.75)
    sampler = make_sampler("focus", SPACE, 0, total_steps=1000, focus_budgets=list(budgets), focus_update_every=1)
    policy, score = sampler.policy, accuracy_like(sampler.policy)
    for step in range(200):
        sampler.after_step(step, score, lambda m: None)
    for b in budgets:
        budget = policy.budget_flops(b)
        gen = torch.Generator().manual_seed(7)
        used = np.array([count_flops(policy.sample(b, gen)[0]) / budget for _ in range(64)])
        assert 0.6 <= np.median(used) <= 1.0 and (used <= 1).mean() >= 0.9, (b, np.median(used), (used <= 1).mean())
    # specialisation returns an arch within the budget
    budget = policy.budget_flops(0.5)
    best = specialise(policy, budget, score, k=50)
    assert best is not None and count_flops(best) <= budget
    # the trained policy survives a state-dict round trip (what checkpoints store)
    state = sampler.state_dict()
    clone = policy_from_state(state)
    assert [a.key for a in clone.propose(0.5, 20, 3)] == [a.key for a in policy.propose(0.5, 20, 3)]
    other = make_sampler("focus", SPACE, 0, total_steps=1000, focus_budgets=list(budgets), focus_update_every=1)
    assert [a.key for a in other.policy.propose(0.5, 20, 3)] != [a.key for a in policy.propose(0.5, 20, 3)]  # untrained
    other.load_state_dict(state)
    assert [a.key for a in other.policy.propose(0.5, 20, 3)] == [a.key for a in policy.propose(0.5, 20, 3)]
    assert [other.plan(s, 0, 64) for s in range(20)] == [sampler.plan(s, 0, 64) for s in range(20)]


def test_rewards_put_accuracy_and_budget_on_one_scale():
    sampler = make_sampler("focus", SPACE, 0)
    policy = sampler.policy
    small, large = SPACE.min_arch(), SPACE.max_arch()
    # with the budget at the largest arch, the more accurate of two in-budget archs gets more reward
    reward, within = sampler.rewards(1.0, [small, large], lambda a: 0.5 if a == small else 0.51)
    assert within == 1.0 and reward[1] > reward[0]
    # over budget is worse than within, however accurate (scores that differ by a hair still count)
    reward, within = sampler.rewards(0.0, [small, large], lambda a: 0.5 if a == small else 0.99)
    assert within == 0.5 and reward[0] > reward[1]
    assert policy.budget_flops(0.0) == policy.flops_min


def test_sampler_errors():
    with pytest.raises(DeployvitError, match="unknown sampler"):
        make_sampler("greedy", SPACE, 0)
    with pytest.raises(DeployvitError, match=r"outside space 'test'.*\[0, 1\].*FLOPs range"):
        make_sampler("focus", SPACE, 0, focus_budgets=[1.5])
    with pytest.raises(DeployvitError, match="trained on space 'test-resnas'"):
        make_sampler("focus", SPACE, 0).load_state_dict(make_sampler("focus", get_space("test-resnas"), 0).state_dict())
    with pytest.raises(DeployvitError, match="options differ"):
        make_sampler("focus", SPACE, 0).load_state_dict(make_sampler("focus", SPACE, 0, focus_lr=0.5).state_dict())
    with pytest.raises(DeployvitError, match="trained with sampler"):
        make_sampler("sandwich", SPACE, 0).load_state_dict(make_sampler("uniform", SPACE, 0).state_dict())
    older = make_sampler("focus", SPACE, 0).state_dict()  # a policy saved as an MLP of b, before the budget bumps
    older["policy_config"] = {"space": older["policy_config"]["space"], "hidden": 64}
    with pytest.raises(DeployvitError, match="centers") as err:
        policy_from_state(older)
    assert "\n" not in str(err.value)


def test_size_is_rewarded_by_closeness_not_by_the_scores_trend():
    """Training feedback makes the sampler's (small) draws score higher; the reward must still prefer
    using the budget, and among archs of one size the more accurate one."""
    sampler = make_sampler("focus", SPACE, 0)
    rng = np.random.default_rng(0)
    archs = list({a.key: a for a in (SPACE.sample(rng) for _ in range(40))}.values())[:8]
    flops = {a.key: count_flops(a) for a in archs}
    budget = sampler.policy.budget_position(max(flops.values()))
    top = max(flops.values())
    trend = lambda a: 0.9 - 0.2 * flops[a.key] / top  # noqa: E731  smaller scores higher
    reward, within = sampler.rewards(budget, archs, trend)
    assert within == 1.0
    order = np.argsort([flops[a.key] for a in archs])
    ranked = reward.numpy()[order]
    assert np.all(np.diff(ranked) >= -1e-5) and ranked[-1] > ranked[0] + 1  # more of the budget used: more reward
    lucky = archs[int(order[3])]
    bumped, _ = sampler.rewards(budget, archs, lambda a: trend(a) + (0.05 if a is lucky else 0.0))
    assert bumped[int(order[3])] > reward[int(order[3])] + 1  # accurate for its size: about a unit more


def test_updates_take_the_focus_budgets_in_turn_and_score_each_arch_once():
    budgets = (0.25, 0.5, 0.75)
    sampler = make_sampler("focus", SPACE, 0, focus_budgets=list(budgets), focus_update_every=1, focus_update_budgets=2)
    rng = np.random.default_rng(0)
    seen = [b for u in range(6) for b in sampler._update_budgets(u, rng)]
    assert [seen.count(b) for b in budgets] == [4, 4, 4]  # 6 updates x 2 budgets: each budget 4 times
    calls = []

    def score(arch):
        calls.append(arch.key)
        return 0.5

    sampler.after_step(0, score, lambda m: None)
    assert len(calls) == len(set(calls)) and 1 <= len(calls) <= 2 * sampler.opts.policy_batch


def test_specialise_scores_k_distinct_archs_within_the_budget():
    policy = FocusPolicy(SPACE)
    with torch.no_grad():  # a policy that has focused: one embed dim and depth nearly always
        for logits, d in zip(policy.out.weight.split(policy.sizes), policy.decisions):
            if d.kind in ("embed_dim", "depth"):
                logits[0] += 6.0
    budget = policy.budget_flops(0.5)
    scored = []

    def score(arch):
        scored.append((arch.key, count_flops(arch)))
        return -count_flops(arch)

    small = policy.propose(0.5, 10, 1, accept=lambda a: count_flops(a) <= budget)
    assert len({a.key for a in small}) == 10 and all(count_flops(a) <= budget for a in small)
    assert len(policy.propose(0.5, 10, 1, max_draws=3)) <= 3  # the draws are bounded
    best = specialise(policy, budget, score, k=10, seed=1)
    assert len(scored) == len(set(scored)) == 10 and all(f <= budget for _, f in scored)  # ten candidates, not ten draws
    assert count_flops(best) == min(f for _, f in scored)
    assert specialise(policy, policy.flops_min - 1, score, k=5) is None  # nothing fits: None, not an error
