"""Stage 3 — multi-turn PPO: the policy plays tool-use episodes; a critic, GAE and a KL penalty shape the update.

One process:        rlagent ppo --config configs/quickstart/ppo.yaml   (same as: python rlagent/train_ppo.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_ppo.py --config ... (CPU: gloo)
GPUs / DeepSpeed:   accelerate launch --config_file configs/accelerate/zero2.yaml rlagent/train_ppo.py --config ...
From Python:        rlagent.PPOTrainer(config, model=..., env=..., reward_funcs=...).train()   (README "Python API")
                    or train_ppo.main(["--config", ...], callbacks=[MyCallback()])   (hooks: see `Callback`)

Per iteration (`PPOTrainer.iteration`): 1 rollout · 2 score · 3 old/ref log-probs and values · 4 per-token rewards ·
5 advantages · 6 PPO epochs · 7 KL controller and curriculum · 8 log · 9 checkpoint. An iteration whose episodes
were all dropped by scoring (missing end-of-turn with reward.missing_eos=mask, non-finite scores) skips 3-7 on every
process. Step 6, the PPO epochs and one minibatch update, follows the trainer in this file (`ppo_epochs` ->
`ppo_minibatch_step` -> `minibatch_loss`); its optimizer step is the one SFT and the reward model use
(rlagent/training/step.py). Every step calls pure functions: the math in rlagent/algorithms/ppo_core.py, the advantage
estimator and policy loss picked by name from rlagent/algorithms/registry.py. Models and their forwards:
rlagent/training/ppo_models.py; episode scores: rlagent/training/episode_scores.py; the config sections:
rlagent/training/ppo_config.py.
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

from reward_models.functions import RewardFunctionError, load_reward_functions
from rlagent.algorithms import ppo_core as core
from rlagent.algorithms.registry import AdvantageEstimator, AdvantageInputs, get_adv_estimator, get_policy_loss
from rlagent.common.config import ConfigError, parse_args, run_main, save_config
from rlagent.common.memory import release_freed_heap
from rlagent.common.modeling import count_parameters, load_tokenizer
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.engine import Trajectory, run_episodes
from rlagent.rollout.schedule import Curriculum, build_training_envs, episode_seeds
from rlagent.rollout.transcripts import sample_rows
from rlagent.training.checkpoints import load_checkpoint, resolve_resume, save_checkpoint, save_final
from rlagent.training.episode_scores import score_episodes
from rlagent.training.guards import StepGuard
from rlagent.training.ppo_config import AlgoConfig, PPOConfig  # PPOConfig: users import it from here (README)
from rlagent.training.ppo_metrics import iteration_metrics
from rlagent.training.ppo_models import (
    batched,
    forward_policy,
    forward_value,
    load_models,
    prepare_models,
    reference_context,
)
from rlagent.training.setup import check_batch_shape, make_accelerator, set_seed
from rlagent.training.step import optimizer_step, restore_training_state, training_state
from rlagent.training.tracking import Progress, Tracker

# TRL's unwrap_model_for_generation reads a transformers attribute deprecated in v5; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---------------------------------------------------------------------------------------------------------------------
# 5: advantages from the registered estimator


def advantages_for(algo: AlgoConfig, estimator: AdvantageEstimator, inputs: AdvantageInputs):
    """(advantages, returns) on policy tokens from the registered estimator (rlagent/algorithms/registry.py), then
    whitening once per batch unless the estimator normalised them itself."""
    adv, returns = estimator.fn(inputs, algo.gamma, algo.lam)
    # Whitening is per process; a process whose episodes were all dropped has nothing to whiten (all zeros).
    if algo.whiten_advantages and not estimator.self_normalised and bool(inputs.policy_mask.any()):
        adv = core.masked_whiten(adv, inputs.policy_mask, shift_mean=True) * inputs.policy_mask
    return adv, returns


# ---------------------------------------------------------------------------------------------------------------------


def build_sampler(cfg: PPOConfig, model, tokenizer) -> ModelPolicy:
    """The rollout policy on the configured generation backend (rollout.backend / dtype / prefix_cache)."""
    rollout = cfg.rollout
    return ModelPolicy(model, tokenizer, rollout.max_new_tokens, rollout.temperature, backend=rollout.backend,
                       dtype=rollout.dtype, prefix_cache=rollout.prefix_cache)  # fmt: skip


def check_shapes(cfg: PPOConfig, world: int) -> int:
    """Episodes per rank; every divisibility rule checked up front with a message naming the fields (the
    micro-batch is derived from optim.batch_size and the process count, see check_batch_shape)."""
    group = cfg.algo.group_size if get_adv_estimator(cfg.algo.estimator).needs_groups else 1
    unit = world * len(cfg.env.ids) * group
    if cfg.env.episodes % unit:
        raise ConfigError(
            f"env.episodes={cfg.env.episodes} must divide by processes ({world}) x len(env.ids) "
            f"({len(cfg.env.ids)}) x group size ({group}); try env.episodes={max(1, cfg.env.episodes // unit) * unit}"
        )
    per_rank, per_rank_batch = cfg.env.episodes // world, max(cfg.optim.batch_size // world, 1)
    if cfg.optim.batch_size > cfg.env.episodes or per_rank % per_rank_batch:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} (episodes per minibatch) must divide env.episodes="
            f"{cfg.env.episodes} into whole minibatches on each of the {world} process(es)"
        )
    check_batch_shape(cfg.optim, world, "rlagent ppo", "episodes per minibatch")
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

    def __init__(self, cfg: PPOConfig, callbacks: list[Callback] | tuple = (), reward_funcs: list | tuple = ()):
        """`reward_funcs`: reward functions (callables) added after cfg.reward.functions (the Python API's)."""
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.accelerator = make_accelerator(cfg.model.dtype)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        set_seed(cfg.seed, self.rank)
        self.per_rank = check_shapes(cfg, self.world)
        self.estimator = get_adv_estimator(cfg.algo.estimator)  # its traits: critic? groups? (registry.py)
        self.group = cfg.algo.group_size if self.estimator.needs_groups else 1
        try:  # before the models: a bad spec should cost a second, not a model load
            specs = [*cfg.reward.functions, *reward_funcs]
            self.reward_functions = load_reward_functions(specs, cfg.reward.function_weights)
        except RewardFunctionError as err:
            raise ConfigError(str(err)) from None
        self.resume = resolve_resume(cfg.resume_from, cfg.output_dir)
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        self._build_models()
        self.kl_ctl = (
            core.AdaptiveKLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
            if cfg.algo.adaptive_kl
            else core.FixedKLController(cfg.algo.kl_coef)
        )
        self.curriculum = Curriculum(cfg.curriculum, cfg.env.ids)
        self.shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + self.rank)
        self.start, self.skipped_in_a_row = 0, 0
        self.guard = StepGuard(cfg.optim.max_skipped_steps)
        self.last_metrics: dict = {}  # the latest iteration's metrics; checkpointed so a resume at the end summarises
        if self.resume:
            self._load_checkpoint(self.resume)
        per_env = self.per_rank // len(cfg.env.ids)
        self.envs = build_training_envs(cfg.env, per_env, cfg.seed * 1009 + self.rank)
        self.env_names = [env_id for env_id in cfg.env.ids for _ in range(per_env)]
        unwrapped = self.accelerator.unwrap_model(self.policy)
        generator_source = unwrapped if self.generation_copy is None else self.generation_copy
        self.sampler = build_sampler(cfg, generator_source, self.tokenizer)
        self.tracker = Tracker.for_run(cfg, self.accelerator.is_main_process, resume_step=self.start)

    def _build_models(self) -> None:
        """Policy, value, reference, reward model; their optimizer(s) and schedule(s); accelerate placement."""
        cfg, accelerator = self.cfg, self.accelerator
        policy, reference, value, self.reward_model = load_models(cfg, self.tokenizer, self.estimator.needs_critic)
        placed = prepare_models(cfg, accelerator, policy, value, reference)
        self.policy, self.value, self.reference = placed.policy, placed.value, placed.reference
        self.optimizers, self.schedulers, self.generation_copy = placed.optimizers, placed.schedulers, placed.copy
        if self.reward_model is not None:
            self.reward_model.to(accelerator.device)

    def _models(self) -> dict:
        return {"policy": self.policy} if self.value is None else {"policy": self.policy, "value": self.value}

    def _load_checkpoint(self, path: str) -> None:
        """Resume: weights, optimiser, schedule, KL controller, curriculum, shuffle RNG, iteration, skip streak."""
        models = {name: self.accelerator.unwrap_model(model) for name, model in self._models().items()}
        state = load_checkpoint(path, models, self.rank)
        self.start, self.last_metrics, loop = restore_training_state(
            self.accelerator, state, self.optimizers, self.schedulers
        )
        self.kl_ctl.load_state_dict(loop["kl_ctl"])
        self.curriculum.load_state_dict(loop["curriculum"])
        shuffle = loop["shuffle"]
        self.shuffle.set_state(shuffle[self.rank] if self.rank < len(shuffle) else shuffle[0])
        self.skipped_in_a_row = loop["skipped_in_a_row"]
        self.guard.updates = loop.get("updates", self.start)

    def train(self) -> dict:
        """Run the remaining iterations, save final/, write summary.json; returns the summary."""
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            trainable, total = count_parameters(self.policy)
            print(
                f"rlagent ppo: {trainable:,}/{total:,} trainable policy parameters, {cfg.env.episodes} episodes per "
                f"iteration over {self.world} process(es) ({accelerator.distributed_type.value}), "
                f"estimator={cfg.algo.estimator}, resume={self.resume}"
            )
        progress = Progress(
            cfg.max_steps, "ppo", enabled=cfg.progress and accelerator.is_main_process, start=self.start
        )
        for callback in self.callbacks:
            callback.on_train_begin(self)
        metrics = self.last_metrics
        for iteration in range(self.start, cfg.max_steps):
            metrics = self.iteration(iteration)
            release_freed_heap()  # freed rollout/training tensors back to the OS (rlagent.common.memory)
            kl, score = metrics.get("objective/kl", float("nan")), metrics["objective/scores"]
            progress.update(iteration + 1, success=metrics["env/success_rate"], kl=kl, score=score)
        progress.close()
        self.guard.require_an_update("final/")
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
            self.cfg.reward, it.traj, self.reward_model, self.tokenizer, inject_nan, self.reward_functions, self.envs
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
        inputs = AdvantageInputs(it.rewards, it.non_score, it.old_values, it.policy_mask, it.scores, group_ids)
        it.advantages, it.returns = advantages_for(self.cfg.algo, self.estimator, inputs)

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
            self.cfg,
            self.accelerator,
            self.policy,
            self.value,
            self.optimizers,
            batch,
            train_policy,
            self.shuffle,
            self.guard,
        )
        for scheduler in self.schedulers:
            scheduler.step()
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
        if every and (it.step % every == 0 or it.step == self.cfg.max_steps):  # the last iteration always shows
            shown = dataclasses.replace(it.traj, policy_mask=it.policy_mask.cpu())  # what was trained on
            columns, rows = sample_rows(shown, self.tokenizer, self.env_names, it.scores.cpu())
            self.tracker.log_table("samples", columns, rows, step=it.step, split_by="env")
        for callback in self.callbacks:
            callback.on_iteration(self, it.step, metrics)
        return metrics

    def metrics(self, it: Iteration) -> dict:
        """The logged row (rlagent/training/ppo_metrics.py; README "Metrics glossary"), averaged over processes."""
        return iteration_metrics(self, it)

    def mean(self, x) -> float:
        """Mean of this process's values, averaged over processes."""
        tensor = torch.as_tensor(x, dtype=torch.float32, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor.mean(), "mean"))

    # 9. Checkpoint (atomic): models, optimiser, schedule, KL controller, curriculum, RNG, shuffle state.
    def save(self, done: int) -> None:
        cfg = self.cfg
        if not ((cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps):
            return
        if self.guard.updates == 0:  # nothing learned yet: a checkpoint would only save the start model again
            return
        loop = {
            "kl_ctl": self.kl_ctl.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "shuffle": gather_generator_states(self.accelerator, self.shuffle),
            "skipped_in_a_row": self.skipped_in_a_row,
            "updates": self.guard.updates,
        }
        state = training_state(self.accelerator, self.optimizers, self.schedulers, done, self.last_metrics, loop)
        save_checkpoint(self.accelerator, cfg.output_dir, done, self._models(), state, cfg.keep_checkpoints)


# ---------------------------------------------------------------------------------------------------------------------
# 6 in detail: the PPO epochs over a rollout batch, and one minibatch update (one optimizer step)


def ppo_epochs(
    cfg, accelerator, policy, value, optimizer, batch: dict, train_policy: bool, generator, guard=None
) -> dict:
    """`algo.ppo_epochs` passes over the rollout batch in reshuffled minibatches; early stop on approx_kl.
    `guard` (a StepGuard) sees every optimizer step: non-finite weights or too many skipped steps stop the run."""
    n_local = batch["input_ids"].shape[0]
    per_rank = cfg.optim.batch_size // accelerator.num_processes
    all_stats, stopped = [], False
    for _ in range(cfg.algo.ppo_epochs):
        order = torch.randperm(n_local, generator=generator).tolist()
        for start in range(0, n_local - per_rank + 1, per_rank):
            stats = ppo_minibatch_step(
                cfg, accelerator, policy, value, optimizer, batch, order[start : start + per_rank], train_policy
            )
            if stats is None:  # no policy token on any rank: nothing to step (the caller made sure some exist)
                continue
            if guard is not None:
                models = {"policy": policy} if value is None else {"policy": policy, "value": value}
                guard.after_step(not stats["train/skipped_steps"], models, guard.updates + guard.skipped_in_a_row + 1)
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


def ppo_minibatch_step(
    cfg, accelerator, policy, value, optimizer, batch: dict, idx: list[int], train_policy: bool
) -> dict | None:
    """Losses of this rank's minibatch `idx`, micro-batch by micro-batch, then one optimizer step (the same
    rlagent.training.step.optimizer_step as SFT/RM: no gradient sync before the last micro-batch, clipping, a
    non-finite norm skips the step). Returns detached stats.

    The loss is a token mean over the GLOBAL minibatch: sum over this rank's tokens divided by the all-reduced
    policy-token count (docs/ppo.md G.27); a rank with no token of its own still runs its passes and contributes zero
    gradient. Returns None, on every rank alike, when the global minibatch has no policy token.
    """
    local_tokens = batch["policy_mask"][idx].sum().to(accelerator.device)
    normaliser = float(accelerator.reduce(local_tokens, reduction="sum"))
    if normaliser == 0:
        return None
    micro = cfg.optim.micro_batch_size
    micro_batches = [idx[start : start + micro] for start in range(0, len(idx), micro)]
    stats: dict[str, float] = {}

    def loss_of(rows: list[int]) -> torch.Tensor:
        mb = {k: v[rows].to(accelerator.device) for k, v in batch.items()}
        loss, mb_stats = minibatch_loss(cfg, policy, value, mb, normaliser, train_policy)
        # Stats report this rank's token means: losses are sums / global normaliser, stats are micro-batch means.
        to_local_mean = normaliser / max(float(local_tokens), 1.0)
        token_share = float(mb["policy_mask"].sum()) / max(float(local_tokens), 1.0)
        sums, means = mb_stats
        if "val/loss" in sums:
            _accumulate(stats, {"val/loss": sums.pop("val/loss") * to_local_mean}, 1.0)
        _accumulate(stats, {k: v * to_local_mean for k, v in sums.items()}, 1.0)
        _accumulate(stats, means, token_share)
        return loss

    models = [policy] if value is None else [policy, value]
    step_stats, norms = optimizer_step(accelerator, models, optimizer, micro_batches, loss_of, cfg.optim.max_grad_norm)
    if value is not None:
        stats["val/grad_norm"] = norms[1]
    return {**stats, **step_stats}


def minibatch_loss(cfg, policy, value, mb: dict, normaliser: float, train_policy: bool):
    """(loss, (sums, means)) of one micro-batch: the registered policy loss (algo.policy_loss) minus the entropy bonus,
    plus the clipped value loss when there is a critic. `sums` are losses / normaliser; `means` micro-batch means."""
    algo, mask = cfg.algo, mb["policy_mask"]
    logp, entropy = forward_policy(
        policy, mb["input_ids"], mb["attention_mask"], cfg.rollout.temperature, mask, cfg.model.selective_head
    )
    pg_loss, pg_stats = get_policy_loss(algo.policy_loss).fn(
        logp, mb["old_logprobs"], mb["advantages"], mask, algo.clip_eps, algo.dual_clip, normaliser
    )
    ent = (entropy * mask).sum() / normaliser
    loss = (pg_loss - algo.ent_coef * ent) if train_policy else 0.0 * pg_loss
    sums, means = {}, {f"policy/{k}": v for k, v in pg_stats.items()}
    if value is not None:
        values = forward_value(value, mb["input_ids"], mb["attention_mask"])
        vf_loss, vf_stats = core.value_loss(
            values, mb["old_values"], mb["returns"], mask, algo.value_clip_eps, normaliser
        )
        loss = loss + algo.vf_coef * vf_loss
        sums["val/loss"] = vf_loss
        means.update({f"val/{k}": v for k, v in vf_stats.items()})
    sums.update({"policy/loss": pg_loss, "objective/entropy": ent})
    return loss, (sums, means)


def _accumulate(stats: dict, new: dict, weight: float) -> None:
    for key, value in new.items():
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        if key.endswith("_max"):
            stats[key] = max(stats.get(key, value), value)
        else:
            stats[key] = stats.get(key, 0.0) + value * weight


CONFIG = PPOConfig  # the stage's config class (the Python API, rlagent/api.py, resolves configs with it)


def main(argv: list[str] | None = None, callbacks: list[Callback] | tuple = ()) -> dict:
    """`rlagent ppo --config FILE [key=value ...]`; `callbacks` hook into every iteration. Returns the summary."""
    cfg = parse_args(PPOConfig, argv, prog="rlagent ppo")
    return PPOTrainer(cfg, callbacks).train()


if __name__ == "__main__":
    run_main(main, prog="rlagent ppo")
