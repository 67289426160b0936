"""Step 8 of PPO (rlagent/train_ppo.py): the logged row of one iteration, under TRL's names where the meaning is the
same (README "Metrics glossary"), with the old names kept as aliases for one release.

`metrics` reads the Iteration the steps filled in; every batch statistic is over all processes (means reduced,
min/max/std over the gathered per-episode values).
"""

from __future__ import annotations

import torch

from rlagent.algorithms import ppo_core as core

# TRL's PPOTrainer name <- rlagent's old name, same meaning; both are logged until the next release drops the old.
RENAMED = {
    "policy/approxkl_avg": "policy/approx_kl",
    "policy/clipfrac_avg": "policy/clipfrac",
    "loss/policy_avg": "policy/loss",
    "loss/value_avg": "val/loss",
    "val/clipfrac_avg": "val/clipfrac",
}


def with_trl_names(row: dict) -> dict:
    """The row with each renamed metric also under its TRL name (the old name stays as the alias)."""
    out = dict(row)
    for new, old in RENAMED.items():
        if old in row:
            out[new] = row[old]
    return out


def gathered(accelerator, values) -> torch.Tensor:
    """Per-episode values of every process, concatenated (each process holds the same number of episodes)."""
    tensor = torch.as_tensor(values, dtype=torch.float32, device=accelerator.device).flatten()
    return (accelerator.gather(tensor) if accelerator.num_processes > 1 else tensor).cpu()


def group_metrics(accelerator, scores: torch.Tensor, group: int) -> dict:
    """TRL GRPO's `reward`, `reward_std` (std over all episodes) and, with groups, `frac_reward_zero_std` (share of
    groups whose episodes all scored the same: they give every token advantage 0 under GRPO/RLOO)."""
    every = gathered(accelerator, scores)
    out = {"reward": every.mean().item(), "reward_std": every.std().item() if len(every) > 1 else 0.0}
    if group > 1:
        spread = every.view(-1, group).std(dim=1)
        out["frac_reward_zero_std"] = (spread < 1e-6).float().mean().item()
    return out


def completion_metrics(accelerator, traj, policy_mask: torch.Tensor) -> dict:
    """TRL GRPO's completions/{mean,min,max}_length (policy tokens per episode) and completions/clipped_ratio
    (episodes with a turn cut at rollout.max_new_tokens), and this iteration's tokens (prompt, policy and env)."""
    lengths = gathered(accelerator, policy_mask.sum(1))
    clipped = gathered(accelerator, traj.missing_eos)
    tokens = gathered(accelerator, traj.attention_mask.sum())
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": clipped.mean().item(),
        "tokens_this_iteration": tokens.sum().item(),
    }


def per_env_success(accelerator, traj, env_names: list[str]) -> dict:
    """env/<id>/success_rate for each environment id (episodes of one id sit at the same slots on every process)."""
    success = gathered(accelerator, traj.success).view(accelerator.num_processes, -1)
    out = {}
    for env_id in dict.fromkeys(env_names):
        slots = [i for i, name in enumerate(env_names) if name == env_id]
        out[f"env/{env_id}/success_rate"] = success[:, slots].mean().item()
    return out


def iteration_metrics(trainer, it) -> dict:
    """The metric row of iteration `it` (a train_ppo.Iteration) of `trainer` (a train_ppo.PPOTrainer)."""
    traj, mask, mean, acc = it.traj, it.policy_mask, trainer.mean, trainer.accelerator
    out = {"objective/scores": mean(it.scores)}
    if not it.skipped:
        out["objective/kl"] = it.episode_kl
        out["objective/kl_coef"] = trainer.kl_ctl.value
        out["objective/non_score_reward"] = mean(it.non_score.sum(1))
        out["objective/rlhf_reward"] = mean(it.scores + it.non_score.sum(1))
    out["env/success_rate"], out["env/episode_reward"] = mean(traj.success), mean(traj.env_reward)
    out.update(per_env_success(acc, traj, trainer.env_names))
    for name in ("turns", "tool_calls", "invalid_tool_calls", "truncated"):
        out[f"env/{name}"] = mean(getattr(traj, name))
    out["env/render_mismatch"] = mean(torch.tensor(traj.render_mismatch, dtype=torch.float32))
    out["response_length"] = mean(mask.sum(1))
    out["eos_rate"] = mean(1.0 - traj.missing_eos)
    out.update(group_metrics(acc, it.scores, trainer.group))
    completions = completion_metrics(acc, traj, mask)
    out["num_tokens"] = trainer.last_metrics.get("num_tokens", 0.0) + completions.pop("tokens_this_iteration")
    out.update(completions)
    out["train/lr"] = trainer.schedulers[0].get_last_lr()[0]
    out["timing/rollout_s"], out["timing/train_s"] = it.t_rollout, it.t_train
    out["perf/tokens_per_s"] = traj.generated_tokens / max(it.t_rollout, 1e-9)
    out.update({**it.score_stats, **it.update, **trainer.curriculum.metrics()})
    # Diagnostics of this process's tokens; a process whose episodes were all dropped has none to report.
    if trainer.value is not None and not it.skipped and bool(mask.any()):
        out["val/explained_variance"] = float(core.explained_variance(it.old_values, it.returns, mask))
        out["val/mean"] = float(core.masked_mean(it.old_values, mask))
    if not it.skipped:  # sampler (generation backend) vs learner log-probs on the trained tokens
        sampler = it.traj.sampler_logprobs.to(it.old_logprobs.device)
        out.update(core.sampler_mismatch(it.old_logprobs, sampler, mask))
    out["train/skipped_iteration"] = float(it.skipped)
    return with_trl_names(out)
