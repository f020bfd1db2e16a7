"""deployvit's implementation of the idea of FocusFormer (arXiv 2208.10861): a learned architecture
sampler conditioned on a resource budget, trained alongside the supernet, that moves probability to
accurate archs just under each budget (the Pareto front). Design in docs/REFERENCES.md section 7; the
paper's code is not public, so this is not a reproduction.

Resource: analytic FLOPs (`count_flops`). A budget is normalised to b in [0, 1], its position between
the space's smallest and largest arch. The policy maps b, through a few Gaussian bumps over [0, 1],
to independent logits for every decision of the space (`SearchSpace.decisions()`: per stage embed
dim, depth, and per layer heads and MLP ratio), so each region of budgets learns its own distribution. A layer's decisions count in the
log-probability only when the layer exists (depth), so equal archs have one probability. Policies
saved before the bumps (an MLP of b) are refused with one line.

During training (`FocusArchSampler`): each step draws b (from `budgets`, or uniform) and an arch from
the policy, or with probability epsilon (decaying from `epsilon` to `epsilon_min`) a uniform arch, so
the whole space keeps training. Every `update_every` steps the policy is updated with REINFORCE on
`policy_batch` fresh draws for each of `update_budgets` budgets (the focus budgets in turn); an arch
drawn twice in one update is scored once.

Reward and penalty on one scale (issue 12: a raw accuracy fraction from 128 images differs between
archs by 0.01-0.05 with noise about 0.04, while a fixed penalty of 0.5 made "be small" the only
signal, and the policy collapsed onto the smallest archs whatever the budget). Within the draws of
one budget, the score's linear trend in budget use is removed and the residual standardised (z:
mean 0, std 1): "more accurate than the other candidates *of its size*" is worth about one unit
whatever the score's scale and noise. Without the detrending, real supernet training fed back into
the reward (the archs the sampler draws get trained more and so score higher) and the policy settled
on archs using 16-45% of their budget. Size is rewarded separately, in the same units:
`closeness` x (FLOPs / budget) for an arch within its budget, and for an arch over it -`penalty` -
`penalty_slope` x (FLOPs / budget - 1), so over budget is always worse than within. The advantage is
the reward minus its mean over the budget's draws (the per-budget baseline), plus an entropy bonus.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from deployvit import io
from deployvit.arch import Arch
from deployvit.counting import count_flops
from deployvit.errors import DeployvitError
from deployvit.spaces import SearchSpace, space_from_dict
from deployvit.train.sampler_base import ArchSampler, Score, StepPlan


class FocusPolicy(nn.Module):
    """Budget-conditioned architecture distribution over a space.

    The logits are linear in `centers` normalised Gaussian bumps of the budget position b (spaced
    evenly over [0, 1], one spacing wide): each region of budgets has logits of its own, blended
    smoothly in between. With a shared MLP of b (the first design) the gradients of all budgets met in
    shared weights, the tightest budget's over-budget penalty won, and in real supernet training the
    policy collapsed onto one small arch for every budget within 20 updates."""

    def __init__(self, space: SearchSpace, centers: int = 9):
        super().__init__()
        if centers < 1:
            raise DeployvitError(f"the focus policy needs at least one budget centre, got {centers}")
        self.space, self.centers = space, centers
        self.decisions = space.decisions()  # one logit group each, in this order (a saved policy's layout)
        self.sizes = [len(d.choices) for d in self.decisions]
        self.register_buffer("mu", torch.linspace(0.0, 1.0, centers), persistent=False)
        self.width = 1.0 / max(centers - 1, 1)
        self.out = nn.Linear(centers, sum(self.sizes), bias=False)
        nn.init.zeros_(self.out.weight)  # start uniform: every arch equally likely
        self.flops_min, self.flops_max = count_flops(space.min_arch()), count_flops(space.max_arch())

    # --- resources ---------------------------------------------------------------------------------

    def position(self, arch: Arch) -> float:
        """Normalised resource of `arch` in [0, 1]."""
        return (count_flops(arch) - self.flops_min) / max(self.flops_max - self.flops_min, 1)

    def budget_flops(self, b: float) -> float:
        """FLOPs of normalised budget position b."""
        return self.flops_min + b * (self.flops_max - self.flops_min)

    def budget_position(self, flops: float) -> float:
        """Normalised position of a FLOPs budget (clipped to [0, 1])."""
        return float(np.clip((flops - self.flops_min) / max(self.flops_max - self.flops_min, 1), 0.0, 1.0))

    # --- the distribution ---------------------------------------------------------------------------

    def logits(self, b: torch.Tensor) -> list[torch.Tensor]:
        """Per-decision logits for a batch of budgets b [N] -> list of [N, choices]."""
        d = (b.float().view(-1, 1) - self.mu) / self.width
        bumps = torch.exp(-0.5 * d * d)
        return list(self.out(bumps / bumps.sum(-1, keepdim=True)).split(self.sizes, dim=-1))

    def _decode(self, picks: Sequence[int]) -> tuple[Arch, list[bool]]:
        """Arch of one choice per decision, and which decisions it actually uses (a layer's only
        when the arch has that layer)."""
        chosen = {d: d.choices[p] for d, p in zip(self.decisions, picks)}
        arch = self.space.compose(chosen.__getitem__)
        used = [d.layer < arch.stages[d.stage].depth for d in self.decisions]
        return arch, used

    def sample(self, b: float, generator: torch.Generator) -> tuple[Arch, torch.Tensor, torch.Tensor]:
        """One arch for budget b with its log-probability and entropy (differentiable)."""
        logits = self.logits(torch.tensor([b]))
        picks = [int(torch.multinomial(l.softmax(-1)[0].detach(), 1, generator=generator)) for l in logits]
        arch, used = self._decode(picks)
        logp = sum(l.log_softmax(-1)[0, p] for l, p, u in zip(logits, picks, used) if u)
        ent = sum(-(l.softmax(-1) * l.log_softmax(-1)).sum() for l, u in zip(logits, used) if u)
        return arch, logp, ent

    @torch.no_grad()
    def propose(self, b: float, k: int, seed: int = 0, accept: Callable[[Arch], bool] | None = None,
                max_draws: int | None = None) -> list[Arch]:
        """Up to k *distinct* archs for normalised budget b that `accept` admits (e.g. "within the
        budget"; every arch when None), in the order drawn, from at most `max_draws` (default 20 k)
        draws. Distinct: a trained policy repeats its favourites, and k candidates should be k archs
        to score, as many as a search over k uniform archs would score."""
        gen = torch.Generator().manual_seed(seed)
        found: dict[str, Arch] = {}
        for _ in range(max_draws or 20 * k):
            arch = self.sample(b, gen)[0]
            if arch.key not in found and (accept is None or accept(arch)):
                found[arch.key] = arch
                if len(found) == k:
                    break
        return list(found.values())

    def config(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "centers": self.centers}


def specialise(policy: FocusPolicy, budget_flops: float, score: Score, k: int = 50, seed: int = 0) -> Arch | None:
    """FocusFormer's deployment step: k distinct proposals of the policy within the budget
    (`FocusPolicy.propose`), the best by `score` (e.g. supernet held-out accuracy); None when no
    draw fits the budget."""
    fits = policy.propose(policy.budget_position(budget_flops), k, seed, accept=lambda a: count_flops(a) <= budget_flops)
    return max(fits, key=score) if fits else None


@dataclass(frozen=True)
class FocusOptions:
    budgets: tuple[float, ...] = ()  # normalised budgets to focus on; empty: uniform in [0, 1]
    epsilon: float = 0.5  # share of uniform draws at the start ...
    epsilon_min: float = 0.1  # ... decaying linearly to this by the end of training
    update_every: int = 2  # steps per policy update: about 170 updates in a 10-epoch digits run
    policy_batch: int = 8  # draws per budget and update
    update_budgets: int = 4  # budgets per update (with `budgets`: the next ones in turn)
    lr: float = 0.1  # Adam: about this much logit movement per update, for each budget region
    closeness: float = 6.0  # reward units for an arch at exactly its budget (0 at no FLOPs)
    penalty: float = 4.0  # reward units lost by any arch over its budget ...
    penalty_slope: float = 8.0  # ... plus this per unit of FLOPs / budget above 1
    entropy: float = 0.01
    centers: int = 9  # budget regions of the policy (FocusPolicy)


class FocusArchSampler(ArchSampler):
    name = "focus"

    def __init__(self, space: SearchSpace, seed: int, total_steps: int = 1, **options):
        super().__init__(space, seed)
        known = {f"focus_{k}": k for k in FocusOptions.__dataclass_fields__}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DeployvitError(f"unknown focus sampler option {unknown[0]!r}")
        self.opts = FocusOptions(**{known[k]: (tuple(v) if k == "focus_budgets" else v) for k, v in options.items()})
        for b in self.opts.budgets:
            if not 0.0 <= b <= 1.0:
                lo, hi = count_flops(space.min_arch()), count_flops(space.max_arch())
                raise DeployvitError(f"focus budget {b} is outside space {space.name!r}: budgets are positions in [0, 1] "
                                     f"of its FLOPs range {lo / 1e6:.3g}-{hi / 1e6:.3g} M")
        if self.opts.update_every < 1 or self.opts.policy_batch < 2 or self.opts.update_budgets < 1:
            raise DeployvitError("focus update interval and budgets per update must be >= 1, draws per budget >= 2")
        self.total_steps = max(total_steps, 1)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the policy's init is part of the shared seed, identical on every rank
        self.policy = FocusPolicy(space, self.opts.centers)
        torch.random.set_rng_state(torch_state)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.opts.lr)

    @classmethod
    def from_options(cls, space: SearchSpace, seed: int, total_steps: int, options: dict) -> "FocusArchSampler":
        """Reads the `focus_*` options that are set (None: this sampler's default)."""
        return cls(space, seed, total_steps, **{k: v for k, v in options.items() if k.startswith("focus_") and v is not None})

    def _budget(self, rng: np.random.Generator) -> float:
        if self.opts.budgets:
            return float(self.opts.budgets[int(rng.integers(len(self.opts.budgets)))])
        return float(rng.random())

    def _update_budgets(self, update: int, rng: np.random.Generator) -> list[float]:
        """The budgets of policy update number `update`: with focus budgets, the next
        `update_budgets` of them in turn, so each budget's logits get the same share of updates
        (four drawn at random from three budgets leave a given one out of one update in five);
        otherwise uniform positions."""
        n, k = len(self.opts.budgets), self.opts.update_budgets
        if not n:
            return [float(rng.random()) for _ in range(k)]
        return [float(self.opts.budgets[(update * k + i) % n]) for i in range(k)]

    def epsilon(self, step: int) -> float:
        frac = min(step / self.total_steps, 1.0)
        return self.opts.epsilon + (self.opts.epsilon_min - self.opts.epsilon) * frac

    def plan(self, step: int, epoch: int, batch_size: int) -> StepPlan:
        rng = self.rng(step)
        b = self._budget(rng)
        if rng.random() < self.epsilon(step):
            return StepPlan((self.space.sample(rng),))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad():
            return StepPlan((self.policy.sample(b, gen)[0],))

    def after_step(self, step: int, score: Score, sync: Callable) -> dict[str, float]:
        """REINFORCE update every `update_every` steps; `sync(policy)` makes all ranks agree."""
        if (step + 1) % self.opts.update_every:
            return {}
        rng = np.random.default_rng([self.seed, step, 0xF0C5])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        terms, rewards, within = [], [], []
        cached = _per_arch(score)
        for b in self._update_budgets(step // self.opts.update_every, rng):
            draws = [self.policy.sample(b, gen) for _ in range(self.opts.policy_batch)]
            reward, fits = self.rewards(b, [a for a, _, _ in draws], cached)
            adv = reward - reward.mean()
            terms.append(-(adv * torch.stack([lp for _, lp, _ in draws])).mean()
                         - self.opts.entropy * torch.stack([e for _, _, e in draws]).mean())
            rewards.append(float(reward.mean()))
            within.append(fits)
        loss = torch.stack(terms).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sync(self.policy)
        return {"focus_reward": float(np.mean(rewards)), "focus_within_budget": float(np.mean(within))}

    def rewards(self, b: float, archs: list[Arch], score: Score) -> tuple[torch.Tensor, float]:
        """Rewards of one budget's draws on one scale (module docstring), and the share within budget."""
        budget = self.policy.budget_flops(b)
        s = torch.tensor([float(score(a)) for a in archs], dtype=torch.float64)
        use = torch.tensor([count_flops(a) / budget for a in archs], dtype=torch.float64)
        z = _standardised(_size_residual(s, use))
        over = use > 1
        cost = torch.where(over, -self.opts.penalty - self.opts.penalty_slope * (use - 1), self.opts.closeness * use)
        return (z + cost).float(), float((~over).double().mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "options": asdict(self.opts),
            "policy": self.policy.state_dict(),
            "policy_config": self.policy.config(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        io.check_schema(state, _RESUME_SCHEMA, "checkpoint sampler state", "sampler")
        plain = lambda d: {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}  # noqa: E731
        theirs = space_from_dict(state["policy_config"]["space"], allow_preset_name=True)
        if theirs.hash() != self.space.hash():
            raise DeployvitError(f"the focus sampler in this checkpoint was trained on space {theirs.name!r} "
                                 f"(hash {theirs.hash()}), not {self.space.name!r} (hash {self.space.hash()})")
        if plain(state["options"]) != plain(asdict(self.opts)):
            raise DeployvitError("cannot resume: the checkpoint's focus sampler options differ from this run's")
        _load_policy(self.policy, state["policy"], "checkpoint sampler state")
        self.optimizer.load_state_dict(state["optimizer"])


def _per_arch(score: Score) -> Score:
    """`score` computed once per arch: within one update the weights and the minibatch are fixed,
    so a policy's repeated draws (most of them, once it has focused) cost nothing."""
    seen: dict[str, float] = {}

    def cached(arch: Arch) -> float:
        if arch.key not in seen:
            seen[arch.key] = float(score(arch))
        return seen[arch.key]

    return cached


def _size_residual(score: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """What is left of the scores once their linear trend in budget use is removed: accuracy *for
    an arch's size*. Size is rewarded by the closeness term alone, so the training's feedback (the
    archs the sampler draws are trained more, and so score higher) cannot pull the sampler away from
    its budget, in either direction."""
    if len(score) < 3 or float(use.std()) == 0:
        return score - score.mean()
    design = torch.stack([torch.ones_like(use), use], 1)
    coef = torch.linalg.lstsq(design, score.unsqueeze(1)).solution
    return score - (design @ coef).squeeze(1)


def _standardised(x: torch.Tensor) -> torch.Tensor:
    spread = float(x.std()) if len(x) > 1 else 0.0
    return (x - x.mean()) / spread if spread > 1e-12 * max(float(x.abs().max()), 1.0) else torch.zeros_like(x)


def policy_from_state(state: dict[str, Any]) -> FocusPolicy:
    """Rebuild a trained policy from a sampler state dict (as stored in checkpoints)."""
    io.check_schema(state, _POLICY_SCHEMA, "sampler state", "sampler")
    cfg = state["policy_config"]
    policy = FocusPolicy(space_from_dict(cfg["space"], allow_preset_name=True), cfg["centers"])
    _load_policy(policy, state["policy"], "sampler state")
    return policy.eval()


#: the sampler state fields `policy_from_state` and a resume read (`io.check_schema`)
_POLICY_SCHEMA = {"policy_config": {"space": dict, "centers": (int, 1, 4096)}, "policy": {str: torch.Tensor}}
_RESUME_SCHEMA = {"options": dict, "policy": {str: torch.Tensor}, "policy_config": {"space": dict, "centers": (int, 1, 4096)},
                  "optimizer": dict}


def _load_policy(policy: FocusPolicy, weights: dict, where: str) -> None:
    try:
        policy.load_state_dict(weights)
    except RuntimeError as exc:  # missing / unexpected / mis-shaped tensors
        raise DeployvitError(f"{where}: sampler.policy: {str(exc).splitlines()[0]} (not this space's policy)") from None


def load_sampler(path: str | os.PathLike) -> FocusPolicy:
    """The trained FocusFormer-style policy of a supernet checkpoint (`search --method focus`)."""
    from deployvit.train.checkpoint import read_checkpoint

    state = read_checkpoint(path)
    sampler = state.get("sampler") or {}
    if sampler.get("name") != "focus":
        raise DeployvitError(
            f"{path}: supernet was trained with sampler {sampler.get('name')!r}; a learned sampler needs --sampler focus"
        )
    try:
        return policy_from_state(sampler)
    except DeployvitError as exc:
        raise DeployvitError(f"{path}: {exc}") from None
