"""Stage 3 — multi-turn PPO: the policy plays tool-use episodes; a critic, GAE and a KL penalty shape the update.

One process:        rlagent ppo --config configs/quickstart/ppo.yaml   (same as: python rlagent/train_ppo.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_ppo.py --config ... (CPU: gloo)
GPUs / DeepSpeed:   accelerate launch --config_file configs/accelerate/zero2.yaml rlagent/train_ppo.py --config ...

Per iteration: 1 rollout · 2 score · 3 old/ref log-probs and values · 4 per-token rewards · 5 advantages ·
6 PPO epochs · 7 KL controller and curriculum · 8 log · 9 checkpoint. All math lives in rlagent/ppo_core.py.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from trl.models.utils import unwrap_model_for_generation

from rlagent import ppo_core as core
from rlagent.config import ModelConfig, OptimConfig, StageConfig, doc, parse_args, run_main, save_config
from rlagent.modeling import count_parameters, load_tokenizer
from rlagent.ppo_models import batched, forward_policy, forward_value, load_models, reference_context
from rlagent.ppo_schedule import Curriculum, episode_seeds, sample_rows
from rlagent.rollout import ModelPolicy, make_envs, run_episodes
from rlagent.tracking import Progress, Tracker
from rlagent.training import (
    build_optimizer,
    load_checkpoint,
    make_accelerator,
    resolve_resume,
    save_checkpoint,
    save_final,
    set_seed,
)

# TRL's unwrap_model_for_generation reads a transformers attribute deprecated in v5; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@dataclass
class EnvConfig:
    """Which environments to play and how many episodes per iteration."""

    ids: list[str] = doc(
        "Environment ids; episodes are split evenly between them.", factory=lambda: ["rlagent/Calculator-v0"]
    )
    episodes: int = doc("Episodes per iteration over all processes (the rollout batch).", 32)
    split: Literal["train", "test"] = doc("Task split to train on.", "train")


@dataclass
class RolloutConfig:
    """Sampling during rollouts (plain temperature sampling, no top-k/top-p)."""

    max_new_tokens: int = doc("Longest assistant turn in tokens.", 96)
    temperature: float = doc("Sampling temperature; the same value divides logits in every log-prob pass.", 1.0)
    max_total_tokens: int = doc("Longest episode (prompt + all turns) in tokens.", 1024)


@dataclass
class RewardConfig:
    """How episodes are scored."""

    model_path: str | None = doc("Stage-2 reward model folder (its final/); null = environment reward only.", None)
    env_weight: float = doc("Weight of the environment's verifiable reward.", 1.0)
    rm_weight: float = doc("Weight of the normalised reward-model score.", 0.0)
    missing_eos: Literal["penalty", "mask", "none"] = doc(
        "Episodes with a turn that hit max_new_tokens: subtract missing_eos_penalty, drop them from the loss, or "
        "nothing.",
        "penalty",
    )
    missing_eos_penalty: float = doc("Subtracted from the score when missing_eos is 'penalty'.", 1.0)


@dataclass
class ValueConfig:
    """The critic."""

    init: Literal["policy", "reward_model"] = doc(
        "Initialise from the policy backbone (zero head) or the reward model.", "policy"
    )
    lr: float = doc("Critic learning rate.", 1e-3)
    warmup_iterations: int = doc("Iterations that train only the critic before the policy moves.", 0)


@dataclass
class AlgoConfig:
    """PPO hyper-parameters."""

    estimator: Literal["gae", "grpo", "rloo"] = doc(
        "Advantages: GAE with the critic, or critic-free grpo / rloo.", "gae"
    )
    group_size: int = doc("Samples per task for grpo / rloo.", 4)
    gamma: float = doc("Discount over tokens.", 1.0)
    lam: float = doc("GAE lambda.", 0.95)
    whiten_advantages: bool = doc("Whiten advantages over policy tokens once per rollout batch.", True)
    ppo_epochs: int = doc("Passes over each rollout batch.", 2)
    clip_eps: float = doc("Policy ratio clip epsilon.", 0.2)
    dual_clip: float | None = doc("Dual-clip constant c > 1 for negative advantages (null = off).", None)
    value_clip_eps: float | None = doc("Value clip around the old values (null = off).", 0.2)
    vf_coef: float = doc("Weight of the value loss.", 0.5)
    ent_coef: float = doc("Entropy bonus weight (0 is usual for LLMs; entropy is always logged).", 0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = doc("Per-token KL estimator in the reward.", "k1")
    kl_clamp: float = doc("Clamp per-token KL estimates to this magnitude.", 10.0)
    kl_coef: float = doc("Initial KL penalty coefficient beta.", 0.05)
    adaptive_kl: bool = doc("Adapt beta towards kl_target (Ziegler et al.).", False)
    kl_target: float = doc("Target KL in nats per EPISODE (sum over policy tokens, batch mean).", 2.0)
    kl_horizon: int = doc("Adaptive-KL horizon in episodes.", 10000)
    target_approx_kl: float | None = doc("Stop PPO epochs early when approx_kl > 1.5 x this (null = never).", None)


@dataclass
class CurriculumConfig:
    """Raise task difficulty when the agent is ready."""

    enabled: bool = doc("Turn the curriculum on.", False)
    start: int = doc("Starting difficulty level.", 1)
    max_level: int = doc("Highest difficulty level.", 3)
    threshold: float = doc("Rolling success rate that moves an environment to the next level.", 0.8)
    window: int = doc("Episodes in the rolling success window.", 64)


@dataclass
class PPOConfig(StageConfig):
    """Multi-turn PPO for tool-using agents."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/ppo")
    max_steps: int = doc("PPO iterations (rollout + update).", 30)
    model: ModelConfig = doc("Policy to start from (usually the SFT output's final/).", factory=ModelConfig)
    optim: OptimConfig = doc(
        "Policy optimiser; batch_size = episodes per minibatch (one optimizer step).",
        factory=lambda: OptimConfig(lr=3e-4, schedule="constant", warmup_ratio=0.0, batch_size=16, micro_batch_size=8),
    )
    env: EnvConfig = doc("Environments.", factory=EnvConfig)
    rollout: RolloutConfig = doc("Sampling.", factory=RolloutConfig)
    reward: RewardConfig = doc("Scoring.", factory=RewardConfig)
    value: ValueConfig = doc("Critic.", factory=ValueConfig)
    algo: AlgoConfig = doc("PPO hyper-parameters.", factory=AlgoConfig)
    curriculum: CurriculumConfig = doc("Difficulty curriculum.", factory=CurriculumConfig)
    log_samples_every: int = doc("Log a table of sample trajectories every N iterations (0 = never).", 10)
    save_every: int = doc("Checkpoint every N iterations (0 = only at the end).", 10)
    inject_nan_reward_at: int | None = doc(
        "Fault injection for tests: NaN score for episode 0 at this iteration.", None
    )


# ---------------------------------------------------------------------------------------------------------------------
# 2-5: scores, log-probs, rewards, advantages


def score_episodes(cfg: PPOConfig, traj, reward_model, tokenizer, iteration: int) -> tuple[torch.Tensor, dict]:
    """Environment reward (+ weighted, normalised RM score); missing-EOS rule; non-finite scores are dropped."""
    scores = cfg.reward.env_weight * traj.env_reward
    stats = {}
    if reward_model is not None:
        rm = reward_model.score_policy_ids(traj.input_ids, traj.attention_mask, tokenizer).float().cpu()
        scores = scores + cfg.reward.rm_weight * rm
        stats["objective/rm_score"] = rm.mean().item()
    if cfg.reward.missing_eos == "penalty":
        scores = scores - cfg.reward.missing_eos_penalty * traj.missing_eos
    elif cfg.reward.missing_eos == "mask":
        # DAPO-style: the episode leaves the loss entirely (its score goes with it).
        traj.policy_mask[traj.missing_eos.bool()] = 0
        scores = torch.where(traj.missing_eos.bool(), torch.zeros_like(scores), scores)
    if cfg.inject_nan_reward_at == iteration:
        scores[0] = float("nan")
    bad = ~torch.isfinite(scores)
    # A non-finite score would poison whitening and the loss: drop those episodes from this update and say so.
    traj.policy_mask[bad] = 0
    stats["objective/nonfinite_scores"] = int(bad.sum())
    return torch.where(bad, torch.zeros_like(scores), scores), stats


def advantages_for(cfg: PPOConfig, rewards, non_score, values, policy_mask, scores, group_ids):
    """(advantages, returns) on policy tokens: GAE with the critic, or group-relative outcome advantages."""
    if cfg.algo.estimator == "gae":
        adv, returns = core.gae(rewards, values, policy_mask, cfg.algo.gamma, cfg.algo.lam)
    else:
        # Critic-free: the outcome advantage of the episode on every policy token, minus the KL still to come.
        outcome = (
            core.grpo_advantages(scores, group_ids)
            if cfg.algo.estimator == "grpo"
            else core.rloo_advantages(scores, group_ids)
        )
        kl_to_go = core.gae(non_score, torch.zeros_like(non_score), policy_mask, 1.0, 1.0)[0]
        adv = core.broadcast_to_tokens(outcome, policy_mask) + kl_to_go
        returns = adv
    if cfg.algo.whiten_advantages:
        adv = core.masked_whiten(adv, policy_mask, shift_mean=True) * policy_mask
    return adv, returns


# ---------------------------------------------------------------------------------------------------------------------
# 6: one minibatch update


def ppo_minibatch_step(cfg, accelerator, policy, value, optimizer, batch: dict, idx: list[int], train_policy: bool):
    """Accumulate micro-batches of this rank's minibatch `idx`, then one optimizer step. Returns detached stats.

    The loss is a token mean over the GLOBAL minibatch: sum over this rank's tokens divided by the all-reduced
    policy-token count, times the process count because DDP averages gradients (PPO_CHECKLIST G.27).
    """
    mask = batch["policy_mask"]
    local_tokens = mask[idx].sum().to(accelerator.device)
    normaliser = float(accelerator.reduce(local_tokens, reduction="sum"))
    scale = accelerator.num_processes
    # Stats report this rank's token means: losses are sums / global normaliser, stats are micro-batch means.
    to_local_mean = normaliser / max(float(local_tokens), 1.0)
    micro = cfg.optim.micro_batch_size
    stats: dict[str, float] = {}
    n_micro = math.ceil(len(idx) / micro)
    for m in range(n_micro):
        rows = idx[m * micro : (m + 1) * micro]
        mb = {k: v[rows].to(accelerator.device) for k, v in batch.items()}
        logp, entropy = forward_policy(policy, mb["input_ids"], mb["attention_mask"], cfg.rollout.temperature)
        pg_loss, pg_stats = core.policy_loss(
            logp,
            mb["old_logprobs"],
            mb["advantages"],
            mb["policy_mask"],
            cfg.algo.clip_eps,
            cfg.algo.dual_clip,
            normaliser,
        )
        ent = (entropy * mb["policy_mask"]).sum() / normaliser
        loss = (pg_loss - cfg.algo.ent_coef * ent) if train_policy else 0.0 * pg_loss
        vf_stats = {}
        if value is not None:
            values = forward_value(value, mb["input_ids"], mb["attention_mask"])
            vf_loss, vf_stats = core.value_loss(
                values, mb["old_values"], mb["returns"], mb["policy_mask"], cfg.algo.value_clip_eps, normaliser
            )
            loss = loss + cfg.algo.vf_coef * vf_loss
            _accumulate(stats, {"val/loss": vf_loss * to_local_mean}, 1.0)
            vf_stats = {f"val/{k}": v for k, v in vf_stats.items()}
        accelerator.backward(loss * scale)
        token_share = float(mb["policy_mask"].sum()) / max(float(local_tokens), 1.0)
        _accumulate(stats, {"policy/loss": pg_loss * to_local_mean, "objective/entropy": ent * to_local_mean}, 1.0)
        _accumulate(stats, {**{f"policy/{k}": v for k, v in pg_stats.items()}, **vf_stats}, token_share)
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm)
    if value is not None:
        stats["val/grad_norm"] = float(accelerator.clip_grad_norm_(value.parameters(), cfg.optim.max_grad_norm))
    finite = math.isfinite(float(grad_norm)) and math.isfinite(stats.get("val/grad_norm", 0.0))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats.update({"grad_norm": float(grad_norm), "train/skipped_steps": float(not finite)})
    return stats


def _accumulate(stats: dict, new: dict, weight: float) -> None:
    for key, value in new.items():
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        if key.endswith("_max"):
            stats[key] = max(stats.get(key, value), value)
        else:
            stats[key] = stats.get(key, 0.0) + value * weight


def ppo_epochs(cfg, accelerator, policy, value, optimizer, batch: dict, train_policy: bool, generator) -> dict:
    """`ppo_epochs` passes over the rollout batch in reshuffled minibatches; early stop on approx_kl."""
    n_local = batch["input_ids"].shape[0]
    per_rank = cfg.optim.batch_size // accelerator.num_processes
    all_stats, stopped = [], False
    for _ in range(cfg.algo.ppo_epochs):
        order = torch.randperm(n_local, generator=generator).tolist()
        for start in range(0, n_local - per_rank + 1, per_rank):
            stats = ppo_minibatch_step(
                cfg, accelerator, policy, value, optimizer, batch, order[start : start + per_rank], train_policy
            )
            stats = {
                k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                for k, v in stats.items()
            }
            all_stats.append(stats)
            limit = cfg.algo.target_approx_kl
            if limit is not None and stats.get("policy/approx_kl", 0.0) > 1.5 * limit:
                stopped = True
                break
        if stopped:
            break
    out = {k: sum(s[k] for s in all_stats) / len(all_stats) for k in all_stats[0]}
    out["train/skipped_steps"] = sum(s["train/skipped_steps"] for s in all_stats)
    out["policy/early_stopped"] = float(stopped)
    out["policy/minibatch_updates"] = float(len(all_stats))
    return out


# ---------------------------------------------------------------------------------------------------------------------


def check_shapes(cfg: PPOConfig, world: int) -> int:
    """Episodes per rank; every divisibility rule checked up front with a message naming the fields."""
    group = cfg.algo.group_size if cfg.algo.estimator != "gae" else 1
    unit = world * len(cfg.env.ids) * group
    if cfg.env.episodes % unit:
        raise ValueError(
            f"env.episodes={cfg.env.episodes} must divide by processes ({world}) x len(env.ids) "
            f"({len(cfg.env.ids)}) x group size ({group})"
        )
    per_rank = cfg.env.episodes // world
    if cfg.optim.batch_size % world or per_rank % (cfg.optim.batch_size // world):
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} must divide by processes and divide "
            f"env.episodes per process ({per_rank})"
        )
    return per_rank


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(PPOConfig, argv, prog="rlagent ppo")
    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed, rank)
    per_rank = check_shapes(cfg, world)

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    policy, reference, value, reward_model = load_models(cfg, tokenizer)
    params = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
    if value is not None:
        params.append({"params": list(value.parameters()), "lr": cfg.value.lr})
    optimizer, scheduler = build_optimizer(params, cfg.optim, cfg.max_steps)
    if value is not None:
        policy, value, optimizer = accelerator.prepare(policy, value, optimizer)
    else:
        policy, optimizer = accelerator.prepare(policy, optimizer)
    if reference is not None:
        reference = reference.to(accelerator.device)
    if reward_model is not None:
        reward_model.to(accelerator.device)
    trainable, total = count_parameters(policy)

    # Resume: weights, optimiser, schedule, KL controller, curriculum, RNG and iteration.
    kl_ctl = (
        core.AdaptiveKLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
        if cfg.algo.adaptive_kl
        else core.FixedKLController(cfg.algo.kl_coef)
    )
    curriculum = Curriculum(cfg.curriculum, cfg.env.ids)
    shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    start = 0
    resume = resolve_resume(cfg.resume_from, cfg.output_dir)
    if resume:
        models = {"policy": accelerator.unwrap_model(policy)}
        if value is not None:
            models["value"] = accelerator.unwrap_model(value)
        state = load_checkpoint(resume, models, rank)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        kl_ctl.load_state_dict(state["kl_ctl"])
        curriculum.load_state_dict(state["curriculum"])
        shuffle.set_state(state["shuffle"][rank] if rank < len(state["shuffle"]) else state["shuffle"][0])
        start = state["step"]

    envs = [env for env_id in cfg.env.ids for env in make_envs(env_id, per_rank // len(cfg.env.ids), cfg.env.split)]
    env_names = [env_id for env_id in cfg.env.ids for _ in range(per_rank // len(cfg.env.ids))]
    sampler = ModelPolicy(
        accelerator.unwrap_model(policy), tokenizer, cfg.rollout.max_new_tokens, cfg.rollout.temperature
    )
    tracker = Tracker.for_run(cfg, accelerator.is_main_process, resume_step=start)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        print(
            f"rlagent ppo: {trainable:,}/{total:,} trainable policy parameters, {cfg.env.episodes} episodes per "
            f"iteration over {world} process(es), estimator={cfg.algo.estimator}, resume={resume}"
        )
    progress = Progress(cfg.max_steps, "ppo", enabled=cfg.progress and accelerator.is_main_process, start=start)
    group = cfg.algo.group_size if cfg.algo.estimator != "gae" else 1
    metrics: dict = {}

    for iteration in range(start, cfg.max_steps):
        t0 = time.time()
        # 1. Rollout: every episode of this rank in one batched engine call (GRPO groups share a task seed).
        policy.eval()
        seeds = episode_seeds(cfg.seed, iteration, rank, per_rank, group)
        # ZeRO-3 shards the parameters: gather them for generation (TRL's unwrapped-model pattern); otherwise this
        # just unwraps DDP.
        with unwrap_model_for_generation(policy, accelerator) as unwrapped:
            sampler.model = unwrapped
            traj = run_episodes(
                sampler,
                envs,
                seeds,
                tokenizer,
                curriculum.options(env_names),
                max_total_tokens=cfg.rollout.max_total_tokens,
            )
        t_rollout = time.time() - t0

        # 2. Score: environment reward + RM; missing EOS; non-finite scores dropped.
        scores, score_stats = score_episodes(cfg, traj, reward_model, tokenizer, iteration)
        group_ids = torch.arange(per_rank) // group
        ids, attn, mask = (t.to(accelerator.device) for t in (traj.input_ids, traj.attention_mask, traj.policy_mask))

        # 3. Old log-probs recomputed by the training forward (ratio == 1 on the first minibatch), reference
        #    log-probs, values — all in eval mode with the same micro-batch layout as training.
        micro = cfg.optim.micro_batch_size
        old_logp, _ = batched(lambda a, b: forward_policy(policy, a, b, cfg.rollout.temperature), ids, attn, micro)
        with reference_context(accelerator.unwrap_model(policy), reference) as ref:
            ref_logp, _ = batched(lambda a, b: forward_policy(ref, a, b, cfg.rollout.temperature), ids, attn, micro)
        old_values = (
            batched(lambda a, b: forward_value(value, a, b), ids, attn, micro)
            if value is not None
            else torch.zeros_like(old_logp)
        )

        # 4. Per-token rewards: -beta * KL on policy tokens, plus the score at the last policy token.
        kl = core.kl_penalty(old_logp, ref_logp, cfg.algo.kl_estimator, cfg.algo.kl_clamp) * mask
        rewards, non_score = core.token_rewards(kl, scores.to(accelerator.device), mask, kl_ctl.value)

        # 5. Advantages (GAE skips environment tokens) and returns; whitening once per batch.
        adv, returns = advantages_for(
            cfg, rewards, non_score, old_values, mask, scores.to(accelerator.device), group_ids.to(accelerator.device)
        )

        # 6. PPO epochs over reshuffled minibatches (critic-only during value warm-up).
        policy.train()
        batch = {
            "input_ids": ids,
            "attention_mask": attn,
            "policy_mask": mask,
            "old_logprobs": old_logp,
            "old_values": old_values,
            "advantages": adv,
            "returns": returns,
        }
        train_policy = iteration >= cfg.value.warmup_iterations
        t1 = time.time()
        update = ppo_epochs(cfg, accelerator, policy, value, optimizer, batch, train_policy, shuffle)
        scheduler.step()
        t_train = time.time() - t1

        # 7. KL controller (per-episode summed KL, batch mean) and curriculum.
        episode_kl = float(accelerator.reduce(kl.sum(1).mean(), "mean"))
        kl_ctl.update(episode_kl, cfg.env.episodes)
        curriculum.update(env_names, traj.success.tolist())

        # 8. Log.
        metrics = collect_metrics(
            accelerator,
            traj,
            scores,
            episode_kl,
            kl_ctl,
            non_score,
            mask,
            old_values,
            returns,
            update,
            score_stats,
            t_rollout,
            t_train,
            scheduler,
            curriculum,
            value is not None,
        )
        tracker.log(metrics, step=iteration + 1)
        if cfg.log_samples_every and (iteration + 1) % cfg.log_samples_every == 0:
            tracker.log_table("samples", *sample_rows(traj, tokenizer, env_names, scores), step=iteration + 1)
        progress.update(
            iteration + 1,
            success=metrics["env/success_rate"],
            kl=metrics["objective/kl"],
            score=metrics["objective/scores"],
        )

        # 9. Checkpoint (atomic): models, optimiser, schedule, KL controller, curriculum, RNG, shuffle state.
        done = iteration + 1
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "kl_ctl": kl_ctl.state_dict(),
                "curriculum": curriculum.state_dict(),
                "step": done,
                "shuffle": gather_generator_states(accelerator, shuffle),
            }
            models = {"policy": policy} if value is None else {"policy": policy, "value": value}
            save_checkpoint(accelerator, cfg.output_dir, done, models, state, cfg.keep_checkpoints)
    progress.close()

    save_final(accelerator, policy, tokenizer, os.path.join(cfg.output_dir, "final"))
    summary = {k: v for k, v in metrics.items() if not k.startswith("timing/")}
    summary["steps"] = cfg.max_steps
    tracker.finish(summary)
    return summary


def gather_generator_states(accelerator, generator) -> list:
    """Every rank's minibatch-shuffle generator state, so each resumes its own stream."""
    state = generator.get_state()
    if accelerator.num_processes == 1:
        return [state]
    import torch.distributed as dist

    out = [None] * accelerator.num_processes
    dist.all_gather_object(out, state)
    return out


def collect_metrics(
    accelerator,
    traj,
    scores,
    episode_kl,
    kl_ctl,
    non_score,
    mask,
    values,
    returns,
    update,
    score_stats,
    t_rollout,
    t_train,
    scheduler,
    curriculum,
    has_value: bool,
) -> dict:
    """The PPO_CHECKLIST §I metric names, averaged over processes."""

    def mean(x):
        return float(
            accelerator.reduce(torch.as_tensor(x, dtype=torch.float32, device=accelerator.device).mean(), "mean")
        )

    response_tokens = mask.sum(1)
    metrics = {
        "objective/scores": mean(scores),
        "objective/kl": episode_kl,
        "objective/kl_coef": kl_ctl.value,
        "objective/non_score_reward": mean(non_score.sum(1)),
        "objective/rlhf_reward": mean(scores.to(non_score.device) + non_score.sum(1)),
        "env/success_rate": mean(traj.success),
        "env/episode_reward": mean(traj.env_reward),
        "env/turns": mean(traj.turns),
        "env/tool_calls": mean(traj.tool_calls),
        "env/invalid_tool_calls": mean(traj.invalid_tool_calls),
        "env/truncated": mean(traj.truncated),
        "env/render_mismatch": mean(torch.tensor(traj.render_mismatch, dtype=torch.float32)),
        "response_length": mean(response_tokens),
        "eos_rate": mean(1.0 - traj.missing_eos),
        "lr": scheduler.get_last_lr()[0],
        "timing/rollout_s": t_rollout,
        "timing/train_s": t_train,
        "perf/tokens_per_s": traj.generated_tokens / max(t_rollout, 1e-9),
        **score_stats,
        **update,
        **curriculum.metrics(),
    }
    if has_value:
        metrics["val/explained_variance"] = float(core.explained_variance(values, returns, mask))
        metrics["val/mean"] = float(core.masked_mean(values, mask))
    return metrics


if __name__ == "__main__":
    run_main(main, prog="rlagent ppo")
