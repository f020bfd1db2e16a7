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


def test_focus_sampler_learns_to_sit_just_under_the_budget():
    """Reward = size (bigger is better, as accuracy tends to be) minus the over-budget penalty: after
    training, draws for budget 0.4 fit it more often and sit closer to it than uniform draws."""
    options = dict(total_steps=1000, focus_budgets=[0.4], focus_update_every=1, focus_policy_batch=16)
    sampler = make_sampler("focus", SPACE, 0, **options)
    policy = sampler.policy
    for step in range(150):
        sampler.after_step(step, policy.position, lambda m: None)
    b = 0.4
    drawn = [policy.position(a) for a in policy.propose(b, 200, seed=1)] or [2.0]
    rng = np.random.default_rng(1)
    uniform = [policy.position(SPACE.sample(rng)) for _ in range(300)]
    fit_policy = np.mean([p <= b for p in drawn])
    fit_uniform = np.mean([p <= b for p in uniform])
    gap_policy = np.mean([b - p for p in drawn if p <= b])
    gap_uniform = np.mean([b - p for p in uniform if p <= b])
    assert fit_policy > fit_uniform and gap_policy < gap_uniform, (fit_policy, fit_uniform, gap_policy, gap_uniform)
    # specialisation returns an arch within the budget
    budget = policy.flops_min + b * (policy.flops_max - policy.flops_min)
    best = specialise(policy, budget, policy.position, k=50)
    assert best is not None and count_flops(best) <= budget
    # the trained policy survives a state-dict round trip (what checkpoints store)
    state = sampler.state_dict()
    clone = policy_from_state(state)
    assert [a.key for a in clone.propose(b, 20, 3)] == [a.key for a in policy.propose(b, 20, 3)]
    other = make_sampler("focus", SPACE, 0, **options)
    assert [a.key for a in other.policy.propose(b, 20, 3)] != [a.key for a in policy.propose(b, 20, 3)]  # untrained
    other.load_state_dict(state)
    assert [a.key for a in other.policy.propose(b, 20, 3)] == [a.key for a in policy.propose(b, 20, 3)]
    assert [other.plan(s, 0, 64) for s in range(20)] == [sampler.plan(s, 0, 64) for s in range(20)]


def test_sampler_errors():
    with pytest.raises(DeployvitError, match="unknown sampler"):
        make_sampler("greedy", SPACE, 0)
    with pytest.raises(DeployvitError, match=r"\[0, 1\]"):
        make_sampler("focus", SPACE, 0, focus_budgets=[1.5])
    with pytest.raises(DeployvitError, match="options differ"):
        make_sampler("focus", SPACE, 0).load_state_dict(make_sampler("focus", SPACE, 0, focus_lr=0.5).state_dict())
    with pytest.raises(DeployvitError, match="trained with sampler"):
        make_sampler("sandwich", SPACE, 0).load_state_dict(make_sampler("uniform", SPACE, 0).state_dict())
