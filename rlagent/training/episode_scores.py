"""Step 2 of PPO (rlagent/train_ppo.py): episode scores — environment reward, reward model, reward functions, the
missing-EOS rule — and the policy mask the update trains on (dropped episodes masked out). `traj` is the
rollout engine's Trajectory (rlagent.rollout.engine; not imported: the training layer sits beside the rollout)."""

from __future__ import annotations

import sys

import torch

from reward_models.combine import combine_rewards
from reward_models.functions import call_reward_functions


def score_episodes(
    reward,
    traj,
    reward_model,
    tokenizer,
    inject_nan: bool = False,
    reward_functions: list | None = None,
    environments: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(scores, policy_mask, stats): episode scores and the mask the update trains on; `traj` is left unchanged.

    Score = env_weight x env reward + rm_weight x normalised RM score + each reward function's weight x value
    (reward_models.combine_rewards; `reward_functions` from reward_models.functions.load_reward_functions), then
    the missing-EOS rule. An episode that leaves the loss — missing end-of-turn with missing_eos='mask'
    (DAPO-style), a reward function that failed on it, or any other non-finite score, which would poison
    whitening and the loss — gets score 0 and an all-zero mask row.
    Shape: scores (B,), policy_mask (B, T) like traj.policy_mask.
    """
    rm_score, stats = None, {}
    if reward_model is not None:
        rm_score = reward_model.score_policy_ids(traj.input_ids, traj.attention_mask, tokenizer).float().cpu()
        stats["objective/rm_score"] = rm_score.mean().item()
    rm_weight = reward.rm_weight if rm_score is not None else 0.0  # no reward model loaded: environment only
    functions = function_scores(reward_functions or [], traj, stats, environments)
    scores = combine_rewards(traj.env_reward, rm_score, reward.env_weight, rm_weight, functions)
    dropped = torch.zeros(len(scores), dtype=torch.bool)
    if reward.missing_eos == "penalty":
        scores = scores - reward.missing_eos_penalty * traj.missing_eos
    elif reward.missing_eos == "mask":
        dropped = traj.missing_eos.bool()
    if inject_nan:
        scores[0] = float("nan")
    nonfinite = ~torch.isfinite(scores)
    stats["objective/nonfinite_scores"] = int(nonfinite.sum())
    dropped = dropped | nonfinite
    policy_mask = traj.policy_mask.masked_fill(dropped[:, None], 0)
    return torch.where(dropped, torch.zeros_like(scores), scores), policy_mask, stats


def function_scores(reward_functions: list, traj, stats: dict, environments: list | None = None) -> dict:
    """Run the user's reward functions (`environments`: the envs that played the episodes, for TRL-style ones); log
    reward/<name>/mean|std for them (over the episodes each scored) and for the environment's own reward components
    (episodes without one count 0), and reward/function_errors (episodes at least one function failed on);
    failures are reported on stderr."""
    components = sorted({name for episode in traj.reward_components for name in episode})
    for name in components:
        values = torch.tensor([float(episode.get(name, 0.0)) for episode in traj.reward_components])
        stats.update(component_stats(name, values))
    if not reward_functions:
        return {}
    functions, errors = call_reward_functions(reward_functions, traj, environments)
    failed = torch.zeros(len(traj), dtype=torch.bool)
    for name, (values, _) in functions.items():
        ok = torch.isfinite(values)
        failed |= ~ok
        stats.update(component_stats(name, values[ok]))
        stats[f"reward/{name}"] = stats[f"reward/{name}/mean"]  # the old name, kept as an alias for one release
    stats["reward/function_errors"] = int(failed.sum())
    if errors:  # the first failure says what went wrong; the count says how often
        print(f"rlagent ppo: warning: {errors[0]} ({len(errors)} failure(s) in this batch; those episodes are "
              "dropped from the update)", file=sys.stderr, flush=True)  # fmt: skip
    return functions


def component_stats(name: str, values: torch.Tensor) -> dict:
    """reward/<name>/mean and /std of `values`; the std is torch.std's unbiased one, as TRL's rewards/<fn>/std."""
    if not len(values):
        return {f"reward/{name}/mean": float("nan"), f"reward/{name}/std": float("nan")}
    std = values.float().std().item() if len(values) > 1 else 0.0
    return {f"reward/{name}/mean": values.float().mean().item(), f"reward/{name}/std": std}
