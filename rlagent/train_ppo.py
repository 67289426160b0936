"""Stage 3 — multi-turn PPO: the policy plays tool-use episodes; a critic, GAE and a KL penalty shape the update.

One process:        rlagent ppo --config configs/quickstart/ppo.yaml   (same as: python rlagent/train_ppo.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_ppo.py --config ... (CPU: gloo)
GPUs / DeepSpeed:   accelerate launch --config_file configs/accelerate/zero2.yaml rlagent/train_ppo.py --config ...
From Python:        train_ppo.main(["--config", ...], callbacks=[MyCallback()])   (hooks: see `Callback`)

Per iteration (`PPOTrainer.iteration`): 1 rollout · 2 score · 3 old/ref log-probs and values · 4 per-token rewards ·
5 advantages · 6 PPO epochs · 7 KL controller and curriculum · 8 log · 9 checkpoint. An iteration whose episodes
were all dropped by scoring (missing end-of-turn with reward.missing_eos=mask, non-finite scores) skips 3-7 on every
process. All math lives in rlagent/algorithms/ppo_core.py; the config sections in rlagent/training/ppo_config.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from trl.models.utils import unwrap_model_for_generation

from reward_models.combine import combine_rewards
from reward_models.functions import RewardFunctionError, call_reward_functions, load_reward_functions
from rlagent.algorithms import ppo_core as core
from rlagent.common.config import ConfigError, parse_args, run_main, save_config
from rlagent.common.modeling import count_parameters, load_tokenizer
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.engine import Trajectory, make_envs, run_episodes
from rlagent.rollout.schedule import Curriculum, episode_seeds, sample_rows
from rlagent.training.checkpoints import load_checkpoint, resolve_resume, save_checkpoint, save_final
from rlagent.training.ppo_config import (  # noqa: F401  (re-exported: users import the config from the stage script)
    AlgoConfig,
    CurriculumConfig,
    EnvConfig,
    PPOConfig,
    RolloutConfig,
    ScoreConfig,
    ValueConfig,
)
from rlagent.training.ppo_models import (
    batched,
    forward_policy,
    forward_value,
    load_models,
    ppo_epochs,
    reference_context,
)
from rlagent.training.setup import build_optimizer, make_accelerator, set_seed
from rlagent.training.tracking import Progress, Tracker

# TRL's unwrap_model_for_generation reads a transformers attribute deprecated in v5; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---------------------------------------------------------------------------------------------------------------------
# 2 and 5: scores and advantages


def score_episodes(
    reward: ScoreConfig,
    traj: Trajectory,
    reward_model,
    tokenizer,
    inject_nan: bool = False,
    reward_functions: list | None = None,
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
    functions = function_scores(reward_functions or [], traj, stats)
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


def function_scores(reward_functions: list, traj: Trajectory, stats: dict) -> dict:
    """Run the user's reward functions; log reward/<name> (mean over the episodes it scored) and
    reward/function_errors (episodes at least one function failed on); failures are reported on stderr."""
    if not reward_functions:
        return {}
    functions, errors = call_reward_functions(reward_functions, traj)
    failed = torch.zeros(len(traj), dtype=torch.bool)
    for name, (values, _) in functions.items():
        ok = torch.isfinite(values)
        failed |= ~ok
        stats[f"reward/{name}"] = values[ok].mean().item() if bool(ok.any()) else float("nan")
    stats["reward/function_errors"] = int(failed.sum())
    if errors:  # the first failure says what went wrong; the count says how often
        print(f"rlagent ppo: warning: {errors[0]} ({len(errors)} failure(s) in this batch; those episodes are "
              "dropped from the update)", file=sys.stderr, flush=True)  # fmt: skip
    return functions


def build_training_envs(env: EnvConfig, per_env: int, wrapper_seed: int) -> list:
    """per_env environments of each id; a bad spec, a protocol gap or a bad wrapper spec is a ConfigError naming
    the key.

    Wrapper hits are drawn per (wrapper_seed, reset seed): processes differ, a resumed run repeats its draws.
    """
    from envs.wrappers import parse_wrappers

    try:
        parse_wrappers(env.wrappers)
    except ValueError as err:
        raise ConfigError(f"env.wrappers: {err}") from None
    try:
        return [e for env_id in env.ids for e in make_envs(env_id, per_env, env.split, env.wrappers, wrapper_seed)]
    except ConfigError as err:
        raise ConfigError(f"env.ids: {err}") from None


def advantages_for(algo: AlgoConfig, rewards, non_score, values, policy_mask, scores, group_ids):
    """(advantages, returns) on policy tokens: GAE with the critic, or group-relative outcome advantages."""
    if algo.estimator == "gae":
        adv, returns = core.gae(rewards, values, policy_mask, algo.gamma, algo.lam)
    else:
        # Critic-free: the outcome advantage of the episode on every policy token, minus the KL still to come.
        outcome = (
            core.grpo_advantages(scores, group_ids)
            if algo.estimator == "grpo"
            else core.rloo_advantages(scores, group_ids)
        )
        kl_to_go = core.gae(non_score, torch.zeros_like(non_score), policy_mask, 1.0, 1.0)[0]
        adv = core.broadcast_to_tokens(outcome, policy_mask) + kl_to_go
        returns = adv
    # Whitening is per process; a process whose episodes were all dropped has nothing to whiten (all zeros).
    if algo.whiten_advantages and bool(policy_mask.any()):
        adv = core.masked_whiten(adv, policy_mask, shift_mean=True) * policy_mask
    return adv, returns


# ---------------------------------------------------------------------------------------------------------------------


def build_sampler(cfg: PPOConfig, model, tokenizer) -> ModelPolicy:
    """The rollout policy on the configured generation backend (rollout.backend / dtype / prefix_cache)."""
    if cfg.algo.tis_cap is not None and cfg.algo.tis_cap <= 0:
        raise ConfigError(f"algo.tis_cap must be > 0 (or null for off), got {cfg.algo.tis_cap}")
    rollout = cfg.rollout
    return ModelPolicy(model, tokenizer, rollout.max_new_tokens, rollout.temperature, backend=rollout.backend,
                       dtype=rollout.dtype, prefix_cache=rollout.prefix_cache)  # fmt: skip


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


def gather_generator_states(accelerator, generator) -> list:
    """Every rank's minibatch-shuffle generator state, so each resumes its own stream."""
    state = generator.get_state()
    if accelerator.num_processes == 1:
        return [state]
    import torch.distributed as dist

    out = [None] * accelerator.num_processes
    dist.all_gather_object(out, state)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The trainer: set-up once, then `iteration` = steps 1-9 as one method each


class Callback:
    """Hooks into the PPO loop; subclass and override what you need (the benchmarks gate iterations with these)."""

    def on_train_begin(self, trainer: PPOTrainer) -> None:
        """Set-up is done (models placed, checkpoint restored); the first iteration starts right after."""

    def on_iteration(self, trainer: PPOTrainer, step: int, metrics: dict) -> None:
        """Iteration `step` (1-based, as in metrics.jsonl) is logged; its checkpoint, if any, comes after."""


@dataclass
class Iteration:
    """What one iteration produced, filled in step by step; `PPOTrainer.metrics` turns it into the logged row.

    Tensors are (B, T) on the accelerator device unless noted; B = this process's episodes.
    """

    step: int  # 1-based iteration number, as logged
    traj: Trajectory  # the rollout, as played (its policy_mask is never edited)
    t_rollout: float  # seconds spent in step 1
    scores: torch.Tensor | None = None  # (B,) after the missing-EOS rule; 0 for dropped episodes
    policy_mask: torch.Tensor | None = None  # traj.policy_mask without the episodes scoring dropped
    score_stats: dict = dataclasses.field(default_factory=dict)
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None  # zeros for critic-free estimators
    kl: torch.Tensor | None = None  # per-token KL estimate on policy tokens
    rewards: torch.Tensor | None = None  # -beta KL + score at the last policy token
    non_score: torch.Tensor | None = None  # -beta KL part of `rewards`
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    update: dict = dataclasses.field(default_factory=dict)  # averaged minibatch stats of step 6
    t_train: float = 0.0
    episode_kl: float = 0.0  # per-episode summed KL, mean over all processes
    skipped: bool = False  # no policy token on any process: steps 3-7 did not run


class PPOTrainer:
    """Multi-turn PPO: `PPOTrainer(cfg, callbacks).train()` runs `cfg.max_steps` iterations and returns the summary."""

    def __init__(self, cfg: PPOConfig, callbacks: list[Callback] | tuple = ()):
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.accelerator = make_accelerator()
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        set_seed(cfg.seed, self.rank)
        self.per_rank = check_shapes(cfg, self.world)
        self.group = cfg.algo.group_size if cfg.algo.estimator != "gae" else 1
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        self._build_models()
        self.kl_ctl = (
            core.AdaptiveKLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
            if cfg.algo.adaptive_kl
            else core.FixedKLController(cfg.algo.kl_coef)
        )
        self.curriculum = Curriculum(cfg.curriculum, cfg.env.ids)
        try:
            self.reward_functions = load_reward_functions(cfg.reward.functions, cfg.reward.function_weights)
        except RewardFunctionError as err:
            raise ConfigError(str(err)) from None
        self.shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + self.rank)
        self.start, self.skipped_in_a_row = 0, 0
        self.last_metrics: dict = {}  # the latest iteration's metrics; checkpointed so a resume at the end summarises
        self.resume = resolve_resume(cfg.resume_from, cfg.output_dir)
        if self.resume:
            self._load_checkpoint(self.resume)
        per_env = self.per_rank // len(cfg.env.ids)
        self.envs = build_training_envs(cfg.env, per_env, cfg.seed * 1009 + self.rank)
        self.env_names = [env_id for env_id in cfg.env.ids for _ in range(per_env)]
        unwrapped = self.accelerator.unwrap_model(self.policy)
        self.sampler = build_sampler(cfg, unwrapped, self.tokenizer)
        self.tracker = Tracker.for_run(cfg, self.accelerator.is_main_process, resume_step=self.start)

    def _build_models(self) -> None:
        """Policy, value, reference, reward model; one optimizer (two param groups); accelerate placement."""
        cfg, accelerator = self.cfg, self.accelerator
        policy, reference, value, self.reward_model = load_models(cfg, self.tokenizer)
        params = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.optim.lr}]
        if value is not None:
            params.append({"params": [p for p in value.parameters() if p.requires_grad], "lr": cfg.value.lr})
        optimizer, self.scheduler = build_optimizer(params, cfg.optim, cfg.max_steps)
        if value is not None:
            policy, value, optimizer = accelerator.prepare(policy, value, optimizer)
        else:
            policy, optimizer = accelerator.prepare(policy, optimizer)
        self.policy, self.value, self.optimizer = policy, value, optimizer
        self.reference = reference.to(accelerator.device) if reference is not None else None
        if self.reward_model is not None:
            self.reward_model.to(accelerator.device)

    def _models(self) -> dict:
        return {"policy": self.policy} if self.value is None else {"policy": self.policy, "value": self.value}

    def _load_checkpoint(self, path: str) -> None:
        """Resume: weights, optimiser, schedule, KL controller, curriculum, shuffle RNG, iteration, skip streak."""
        models = {name: self.accelerator.unwrap_model(model) for name, model in self._models().items()}
        state = load_checkpoint(path, models, self.rank)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.curriculum.load_state_dict(state["curriculum"])
        shuffle = state["shuffle"]
        self.shuffle.set_state(shuffle[self.rank] if self.rank < len(shuffle) else shuffle[0])
        self.start = state["step"]
        self.skipped_in_a_row = state.get("skipped_in_a_row", 0)  # absent in checkpoints older than the field
        self.last_metrics = state.get("metrics", {})

    def train(self) -> dict:
        """Run the remaining iterations, save final/, write summary.json; returns the summary."""
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            trainable, total = count_parameters(self.policy)
            print(
                f"rlagent ppo: {trainable:,}/{total:,} trainable policy parameters, {cfg.env.episodes} episodes per "
                f"iteration over {self.world} process(es), estimator={cfg.algo.estimator}, resume={self.resume}"
            )
        progress = Progress(
            cfg.max_steps, "ppo", enabled=cfg.progress and accelerator.is_main_process, start=self.start
        )
        for callback in self.callbacks:
            callback.on_train_begin(self)
        metrics = self.last_metrics
        for iteration in range(self.start, cfg.max_steps):
            metrics = self.iteration(iteration)
            kl, score = metrics.get("objective/kl", float("nan")), metrics["objective/scores"]
            progress.update(iteration + 1, success=metrics["env/success_rate"], kl=kl, score=score)
        progress.close()
        save_final(accelerator, self.policy, self.tokenizer, os.path.join(cfg.output_dir, "final"))
        summary = {k: v for k, v in metrics.items() if not k.startswith("timing/")}
        summary["steps"] = cfg.max_steps
        self.tracker.finish(summary)
        return summary

    def iteration(self, iteration: int) -> dict:
        """One PPO iteration (0-based index); returns the metrics it logged."""
        it = self.rollout(iteration)  # 1
        it.scores, it.policy_mask, it.score_stats = self.score(it)  # 2
        it.skipped = self.nothing_to_learn(it)
        if not it.skipped:
            self.old_ref_value_passes(it)  # 3
            self.token_rewards(it)  # 4
            self.advantages(it)  # 5
            self.ppo_update(it)  # 6
            self.controllers(it)  # 7
        else:
            self.curriculum.update(self.env_names, it.traj.success.tolist())  # the episodes were still played
        metrics = self.last_metrics = self.log(it)  # 8
        self.save(it.step)  # 9
        return metrics

    # 1. Rollout: every episode of this rank in one batched engine call (GRPO groups share a task seed).
    def rollout(self, iteration: int) -> Iteration:
        t0 = time.time()
        self.set_train_mode(False)
        seeds = episode_seeds(self.cfg.seed, iteration, self.rank, self.per_rank, self.group)
        # ZeRO-3 shards the parameters: gather them for generation (TRL's unwrapped-model pattern); otherwise this
        # just unwraps DDP.
        with unwrap_model_for_generation(self.policy, self.accelerator) as unwrapped:
            self.sampler.sync_weights(unwrapped)  # the backend samples from the weights of the last update
            traj = run_episodes(
                self.sampler,
                self.envs,
                seeds,
                self.tokenizer,
                self.curriculum.options(self.env_names),
                max_total_tokens=self.cfg.rollout.max_total_tokens,
            )
        return Iteration(step=iteration + 1, traj=traj, t_rollout=time.time() - t0)

    def set_train_mode(self, training: bool) -> None:
        """Eval mode for generation and the no-grad passes, train mode for the update (where activation
        checkpointing acts); the critic too, which from_pretrained hands over in eval mode."""
        for model in (self.policy, self.value):
            if model is not None:
                model.train(training)

    # 2. Score: environment reward + RM; missing EOS; non-finite scores dropped (a new mask, traj untouched).
    def score(self, it: Iteration) -> tuple[torch.Tensor, torch.Tensor, dict]:
        inject_nan = self.cfg.inject_nan_reward_at == it.step - 1
        scores, policy_mask, stats = score_episodes(
            self.cfg.reward, it.traj, self.reward_model, self.tokenizer, inject_nan, self.reward_functions
        )
        return scores.to(self.accelerator.device), policy_mask.to(self.accelerator.device), stats

    def nothing_to_learn(self, it: Iteration) -> bool:
        """True on every process alike when no process has a policy token left: the iteration is skipped.

        Deciding on the global count keeps the processes in lock-step (no collective runs on only some of them);
        a process with an empty mask while others have tokens takes part in the update with zero loss.
        `reward.max_skipped_iterations` such iterations in a row stop the run.
        """
        tokens = float(self.accelerator.reduce(it.policy_mask.sum().float(), reduction="sum"))
        if tokens > 0:
            self.skipped_in_a_row = 0
            return False
        self.skipped_in_a_row += 1
        limit = self.cfg.reward.max_skipped_iterations
        why = "every episode was dropped (missing end-of-turn with reward.missing_eos=mask, or a non-finite score)"
        if self.skipped_in_a_row >= limit:
            raise ConfigError(
                f"{self.skipped_in_a_row} iterations in a row had no policy token to learn from: {why} "
                f"(reward.max_skipped_iterations={limit}); raise rollout.max_new_tokens or set "
                f"reward.missing_eos=penalty"
            )
        if self.accelerator.is_main_process:
            print(f"rlagent ppo: warning: iteration {it.step} skipped, {why}", file=sys.stderr, flush=True)
        return True

    # 3. Old log-probs recomputed by the training forward (ratio == 1 on the first minibatch), reference log-probs,
    #    values — all in eval mode with the same micro-batch layout as training.
    def old_ref_value_passes(self, it: Iteration) -> None:
        traj, device, temperature = it.traj, self.accelerator.device, self.cfg.rollout.temperature
        ids, attn = traj.input_ids.to(device), traj.attention_mask.to(device)
        micro, policy, value = self.cfg.optim.micro_batch_size, self.policy, self.value
        sel, mask = self.cfg.model.selective_head, it.policy_mask.to(device)  # log-probs needed on policy tokens only
        it.old_logprobs, _ = batched(
            lambda a, b, m: forward_policy(policy, a, b, temperature, m, sel), ids, attn, micro, mask
        )
        with reference_context(self.accelerator.unwrap_model(policy), self.reference) as ref:
            it.ref_logprobs, _ = batched(
                lambda a, b, m: forward_policy(ref, a, b, temperature, m, sel), ids, attn, micro, mask
            )
        it.old_values = (
            batched(lambda a, b: forward_value(value, a, b), ids, attn, micro)
            if value is not None
            else torch.zeros_like(it.old_logprobs)
        )

    # 4. Per-token rewards: -beta * KL on policy tokens, plus the score at the last policy token.
    def token_rewards(self, it: Iteration) -> None:
        algo = self.cfg.algo
        it.kl = core.kl_penalty(it.old_logprobs, it.ref_logprobs, algo.kl_estimator, algo.kl_clamp) * it.policy_mask
        it.rewards, it.non_score = core.token_rewards(it.kl, it.scores, it.policy_mask, self.kl_ctl.value)

    # 5. Advantages (GAE skips environment tokens) and returns; whitening once per batch.
    def advantages(self, it: Iteration) -> None:
        group_ids = (torch.arange(self.per_rank) // self.group).to(self.accelerator.device)
        it.advantages, it.returns = advantages_for(
            self.cfg.algo, it.rewards, it.non_score, it.old_values, it.policy_mask, it.scores, group_ids
        )

    # 6. PPO epochs over reshuffled minibatches (critic-only during value warm-up).
    def ppo_update(self, it: Iteration) -> None:
        self.set_train_mode(True)
        device = self.accelerator.device
        batch = {
            "input_ids": it.traj.input_ids.to(device),
            "attention_mask": it.traj.attention_mask.to(device),
            "policy_mask": it.policy_mask,
            "old_logprobs": it.old_logprobs,
            "old_values": it.old_values,
            "advantages": self.importance_weighted(it),
            "returns": it.returns,
        }
        train_policy = it.step - 1 >= self.cfg.value.warmup_iterations
        t1 = time.time()
        it.update = ppo_epochs(
            self.cfg, self.accelerator, self.policy, self.value, self.optimizer, batch, train_policy, self.shuffle
        )
        self.scheduler.step()
        it.t_train = time.time() - t1

    def importance_weighted(self, it: Iteration) -> torch.Tensor:
        """The advantages, times the truncated importance-sampling weights when algo.tis_cap is set.

        The weights are >= 0 and carry no gradient, so scaling A by w scales the clipped (and dual-clipped)
        per-token loss max(-A r, -A clip(r)) by w exactly: the correction multiplies the policy-gradient loss.
        """
        if self.cfg.algo.tis_cap is None:
            return it.advantages
        sampler = it.traj.sampler_logprobs.to(it.old_logprobs.device)
        return it.advantages * core.tis_weights(it.old_logprobs, sampler, self.cfg.algo.tis_cap)

    # 7. KL controller (per-episode summed KL, batch mean) and curriculum.
    def controllers(self, it: Iteration) -> None:
        it.episode_kl = float(self.accelerator.reduce(it.kl.sum(1).mean(), "mean"))
        self.kl_ctl.update(it.episode_kl, self.cfg.env.episodes)
        self.curriculum.update(self.env_names, it.traj.success.tolist())

    # 8. Log: metrics row, sample table, then the callbacks.
    def log(self, it: Iteration) -> dict:
        metrics = self.metrics(it)
        self.tracker.log(metrics, step=it.step)
        every = self.cfg.log_samples_every
        if every and it.step % every == 0:
            shown = dataclasses.replace(it.traj, policy_mask=it.policy_mask.cpu())  # what was trained on
            rows = sample_rows(shown, self.tokenizer, self.env_names, it.scores.cpu())
            self.tracker.log_table("samples", *rows, step=it.step)
        for callback in self.callbacks:
            callback.on_iteration(self, it.step, metrics)
        return metrics

    def metrics(self, it: Iteration) -> dict:
        """The metric names of docs/ppo.md §I, averaged over processes (README "Metrics glossary")."""
        traj, mask = it.traj, it.policy_mask
        out = {"objective/scores": self._mean(it.scores)}
        if not it.skipped:
            out["objective/kl"] = it.episode_kl
            out["objective/kl_coef"] = self.kl_ctl.value
            out["objective/non_score_reward"] = self._mean(it.non_score.sum(1))
            out["objective/rlhf_reward"] = self._mean(it.scores + it.non_score.sum(1))
        out["env/success_rate"], out["env/episode_reward"] = self._mean(traj.success), self._mean(traj.env_reward)
        for name in ("turns", "tool_calls", "invalid_tool_calls", "truncated"):
            out[f"env/{name}"] = self._mean(getattr(traj, name))
        out["env/render_mismatch"] = self._mean(torch.tensor(traj.render_mismatch, dtype=torch.float32))
        out["response_length"] = self._mean(mask.sum(1))
        out["eos_rate"] = self._mean(1.0 - traj.missing_eos)
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["timing/rollout_s"], out["timing/train_s"] = it.t_rollout, it.t_train
        out["perf/tokens_per_s"] = traj.generated_tokens / max(it.t_rollout, 1e-9)
        out.update({**it.score_stats, **it.update, **self.curriculum.metrics()})
        # Diagnostics of this process's tokens; a process whose episodes were all dropped has none to report.
        if self.value is not None and not it.skipped and bool(mask.any()):
            out["val/explained_variance"] = float(core.explained_variance(it.old_values, it.returns, mask))
            out["val/mean"] = float(core.masked_mean(it.old_values, mask))
        if not it.skipped:  # sampler (generation backend) vs learner log-probs on the trained tokens
            sampler = it.traj.sampler_logprobs.to(it.old_logprobs.device)
            out.update(core.sampler_mismatch(it.old_logprobs, sampler, mask))
        out["train/skipped_iteration"] = float(it.skipped)
        return out

    def _mean(self, x) -> float:
        tensor = torch.as_tensor(x, dtype=torch.float32, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor.mean(), "mean"))

    # 9. Checkpoint (atomic): models, optimiser, schedule, KL controller, curriculum, RNG, shuffle state.
    def save(self, done: int) -> None:
        cfg = self.cfg
        if not ((cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps):
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "step": done,
            "shuffle": gather_generator_states(self.accelerator, self.shuffle),
            "skipped_in_a_row": self.skipped_in_a_row,
            "metrics": self.last_metrics,
        }
        save_checkpoint(self.accelerator, cfg.output_dir, done, self._models(), state, cfg.keep_checkpoints)


def main(argv: list[str] | None = None, callbacks: list[Callback] | tuple = ()) -> dict:
    """`rlagent ppo --config FILE [key=value ...]`; `callbacks` hook into every iteration. Returns the summary."""
    cfg = parse_args(PPOConfig, argv, prog="rlagent ppo")
    return PPOTrainer(cfg, callbacks).train()


if __name__ == "__main__":
    run_main(main, prog="rlagent ppo")
