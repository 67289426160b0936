"""Distillation: move a trained agent's ability into a smaller model (`rlagent distill --config FILE`).

One process:        rlagent distill --config configs/distill/tiny.yaml   (same as: python rlagent/train_distill.py ...)
Several processes:  accelerate launch --multi_gpu --num_processes 2 rlagent/train_distill.py --config ... (CPU: gloo)

`distill.mode` picks one of two ways:
- on_policy: the student plays episodes in the environments with the rollout engine (PPO's rollout); the frozen
  teacher reads the same token ids and grades every token the student sampled. The loss is the per-token reverse
  KL(student || teacher) of the next-token distributions, on policy tokens only (prompt, tool output and template
  tokens are masked exactly as in PPO), a token mean over the global minibatch (rlagent/algorithms/ppo_core.py
  `reverse_kl`, `distillation_loss`). Teacher and student must share a tokenizer.
  Per iteration: 1 rollout · 2 teacher and student distributions on the policy tokens · 3 reverse-KL update, one
  optimizer step per minibatch of episodes (rlagent/training/step.py, as SFT, the reward model and PPO) ·
  4 held-out eval · 5 log · 6 checkpoint.
- sequence: the teacher plays `distill.teacher_episodes` episodes per environment (train split, sampled at
  rollout.temperature); its successful ones become SFT data (OUTPUT_DIR/teacher_episodes.jsonl) for a student with
  any tokenizer, trained by the SFT loss and loop (rlagent/train_sft.py, rlagent/training/fit.py).

Both write the stage contract (metrics.jsonl, summary.json, final/, checkpoints/step-N with resume_from=auto) and end
with the student's held-out success (test split, greedy, distill.eval_episodes per environment) as
`eval/success_rate` in summary.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from trl.models.utils import unwrap_model_for_generation

from rlagent.algorithms import ppo_core as core
from rlagent.common.config import (
    AT_LEAST_ONE,
    ConfigError,
    ModelConfig,
    OptimConfig,
    Range,
    doc,
    parse_args,
    run_main,
    save_config,
)
from rlagent.common.data import DataError, write_jsonl
from rlagent.common.modeling import count_parameters, disable_dropout, load_causal_lm, load_tokenizer, make_trainable
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.engine import Trajectory, play, run_episodes
from rlagent.rollout.schedule import build_training_envs, episode_seeds
from rlagent.train_ppo import build_sampler
from rlagent.train_sft import SFTConfig, SFTDataConfig, prepare_data, sft_task
from rlagent.training.checkpoints import (
    check_resume_from,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    save_final,
)
from rlagent.training.fit import SupervisedConfig, fit, time_is_up
from rlagent.training.guards import StepGuard
from rlagent.training.output_head import hidden_before, output_head
from rlagent.training.ppo_config import EnvConfig, RolloutConfig
from rlagent.training.setup import build_optimizer, check_batch_shape, make_accelerator, set_seed
from rlagent.training.step import optimizer_step, restore_training_state, training_state
from rlagent.training.tracking import Progress, Tracker

# TRL's unwrap_model_for_generation reads a transformers attribute deprecated in v5; the warning is not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
ENV_COUNTS = ("turns", "tool_calls", "invalid_tool_calls", "truncated")  # Trajectory fields logged as env/<name>


@dataclass
class TeacherConfig:
    """The trained agent to distil (frozen, eval mode, no gradients)."""

    name_or_path: str | None = doc(
        "A stage output's final/, a Hugging Face folder, a .gguf file or a short name (smollm2-135m-instruct).", None
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "The teacher's weights (auto = as model.dtype: fp32, bf16 autocast where the hardware has it).", "auto"
    )


@dataclass
class DistillSettings:
    """How the teacher's ability reaches the student."""

    mode: Literal["on_policy", "sequence"] = doc(
        "on_policy: the student samples, the teacher grades each token (reverse KL; shared tokenizer). sequence: the "
        "teacher's successful episodes become SFT data (any tokenizer).",
        "on_policy",
    )
    teacher_episodes: int = doc("Teacher episodes per environment (sequence).", 400, range=AT_LEAST_ONE)
    only_successful: bool = doc("Keep only the teacher's successful episodes (sequence).", True)
    eval_episodes: int = doc("Held-out (test split) episodes per environment for eval/success_rate (0 = none).", 64)
    eval_seed: int = doc("Seed of the first held-out episode (as rlagent eval --seed).", 0)
    eval_fraction: float = doc(
        "Fraction of the teacher's conversations held out for eval loss (sequence).",
        0.05,
        range=Range(0, 1, high_inclusive=False),
    )


@dataclass
class DistillConfig(SupervisedConfig):
    """Distil a teacher policy into a student: on-policy reverse KL on the student's own episodes, or SFT on the
    teacher's successful episodes (sequence)."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/distill")
    max_steps: int = doc(
        "on_policy: iterations (rollout + one optimizer step per minibatch); sequence: optimizer steps.",
        100,
        range=AT_LEAST_ONE,
    )
    model: ModelConfig = doc("The student (the model that is trained).", factory=ModelConfig)
    teacher: TeacherConfig = doc("The teacher.", factory=TeacherConfig)
    distill: DistillSettings = doc("Mode and evaluation.", factory=DistillSettings)
    optim: OptimConfig = doc(
        "Student optimiser; on_policy: batch_size = episodes per optimizer step; sequence: conversations per step.",
        factory=lambda: OptimConfig(lr=1e-3, schedule="constant", warmup_ratio=0.0, batch_size=16, micro_batch_size=8),
    )
    env: EnvConfig = doc(
        "Environments (on_policy: episodes per iteration; both: held-out evaluation).", factory=EnvConfig
    )
    rollout: RolloutConfig = doc(
        "Sampling of the student (on_policy) or the teacher (sequence).", factory=RolloutConfig
    )
    max_length: int = doc("Longest teacher conversation in student tokens (sequence).", 1024, range=AT_LEAST_ONE)
    eval_every: int = doc(
        "on_policy: held-out success every N iterations (0 = only at the end); sequence: eval loss every N steps.", 50
    )


# ---------------------------------------------------------------------------------------------------------------------
# Models


def teacher_tokenizer(cfg: DistillConfig):
    """The teacher's tokenizer; a missing teacher.name_or_path is a config error."""
    if not cfg.teacher.name_or_path:
        raise ConfigError("teacher.name_or_path must be set: the trained agent to distil (e.g. runs/.../final)")
    return load_tokenizer(cfg.teacher.name_or_path, "teacher.name_or_path")


def load_teacher(cfg: DistillConfig, tokenizer):
    """The teacher model, frozen in eval mode."""
    dtype = cfg.model.dtype if cfg.teacher.dtype == "auto" else cfg.teacher.dtype
    spec = ModelConfig(name_or_path=cfg.teacher.name_or_path, dtype=dtype)
    teacher = load_causal_lm(spec, tokenizer, cfg.seed).eval().requires_grad_(False)
    disable_dropout(teacher)
    return teacher


def check_shared_tokenizer(teacher_side, student_side, cfg: DistillConfig) -> None:
    """On-policy distillation compares the two models' distributions over the same token ids: same vocabulary, same
    end-of-turn and padding ids, else one config error naming both models."""
    same = (
        teacher_side.get_vocab() == student_side.get_vocab()
        and teacher_side.eos_token_id == student_side.eos_token_id
        and teacher_side.pad_token_id == student_side.pad_token_id
    )
    if not same:
        raise ConfigError(
            f"distill.mode=on_policy needs one tokenizer for both models: teacher.name_or_path="
            f"'{cfg.teacher.name_or_path}' has {len(teacher_side)} tokens, model.name_or_path="
            f"'{cfg.model.name_or_path}' has {len(student_side)} (or their end/pad tokens differ); use "
            f"distill.mode=sequence for models with different tokenizers"
        )


def logits_before(model, input_ids, attention_mask, positions) -> tuple[torch.Tensor, tuple]:
    """Next-token logits (N, V) that predict the tokens at `positions`, and those positions (rows, columns): the head
    runs on those positions only when it can (rlagent.training.output_head), else on the full forward's logits."""
    head = output_head(model)
    if head is None:
        selected = positions.bool().clone()
        selected[:, 0] = False
        rows, columns = selected.nonzero(as_tuple=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[rows, columns - 1], (rows, columns)
    hidden, (rows, columns) = hidden_before(model, input_ids, attention_mask, positions)
    return torch.nn.functional.linear(hidden, head.weight, head.bias), (rows, columns)


def token_reverse_kl(student, teacher, input_ids, attention_mask, policy_mask, temperature: float) -> torch.Tensor:
    """Per-token reverse KL(student || teacher) at the student's policy tokens, 0 elsewhere; gradients reach the
    student only. Shape: (B, T) each -> (B, T)."""
    student_logits, (rows, columns) = logits_before(student, input_ids, attention_mask, policy_mask)
    with torch.no_grad():
        teacher_logits, _ = logits_before(teacher, input_ids, attention_mask, policy_mask)
    kl = core.reverse_kl(student_logits, teacher_logits, temperature)
    return kl.new_zeros(input_ids.shape).index_put((rows, columns), kl)


# ---------------------------------------------------------------------------------------------------------------------
# Held-out evaluation (both modes)


@torch.no_grad()
def held_out_success(cfg: DistillConfig, model, tokenizer) -> dict:
    """The student's success on distill.eval_episodes test-split episodes per environment (greedy, as rlagent eval
    plays them: episode i reset with eval_seed + i); {} when eval_episodes is 0."""
    if not cfg.distill.eval_episodes:
        return {}
    was_training = model.training
    model.eval()
    policy = ModelPolicy(model, tokenizer, cfg.rollout.max_new_tokens, greedy=True, dtype="model")
    out, rates = {}, []
    for env_id in cfg.env.ids:
        batches = play(policy, tokenizer, env_id, cfg.distill.eval_episodes, cfg.distill.eval_seed, "test",
                       max_total_tokens=cfg.rollout.max_total_tokens)  # fmt: skip
        rate = float(torch.cat([traj.success for traj in batches]).mean())
        out[f"eval/{env_id.split('/')[-1]}/success_rate"] = rate
        rates.append(rate)
    model.train(was_training)
    return {"eval/success_rate": sum(rates) / len(rates), **out}


# ---------------------------------------------------------------------------------------------------------------------
# on_policy: the student plays, the teacher grades its tokens


class OnPolicyDistiller:
    """`OnPolicyDistiller(cfg).train()` runs cfg.max_steps iterations (steps 1-6) and returns the summary."""

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.accelerator = accelerator = make_accelerator(cfg.model.dtype)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        set_seed(cfg.seed, self.rank)
        self.per_rank = check_episode_shape(cfg, self.world)
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        check_shared_tokenizer(teacher_tokenizer(cfg), self.tokenizer, cfg)  # before minutes of loading models
        teacher = load_teacher(cfg, self.tokenizer)
        student = make_trainable(load_causal_lm(cfg.model, self.tokenizer, cfg.seed), cfg.model)
        disable_dropout(student)
        optimizer, self.scheduler = build_optimizer(student, cfg.optim, cfg.max_steps)
        self.student, self.optimizer = accelerator.prepare(student, optimizer)
        self.teacher = accelerator.prepare_model(teacher, evaluation_mode=True)
        self.shuffle = torch.Generator().manual_seed(cfg.seed * 7919 + self.rank)
        self.guard, self.start, self.last_metrics = StepGuard(cfg.optim.max_skipped_steps), 0, {}
        self.stopped_on_time = False  # max_seconds spent (train() sets t_start, from which it counts)
        self.resume = resolve_resume(cfg.resume_from, cfg.output_dir)
        if self.resume:
            self.load(self.resume)
        per_env = self.per_rank // len(cfg.env.ids)
        self.envs = build_training_envs(cfg.env, per_env, cfg.seed * 1009 + self.rank)
        self.sampler = build_sampler(cfg, accelerator.unwrap_model(self.student), self.tokenizer)
        self.tracker = Tracker.for_run(cfg, accelerator.is_main_process, resume_step=self.start)

    def train(self) -> dict:
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            trainable, total = count_parameters(self.student)
            teacher_total = count_parameters(self.teacher)[1]
            print(f"rlagent distill: on_policy, student {trainable:,}/{total:,} trainable parameters, teacher "
                  f"{teacher_total:,}, {cfg.env.episodes} episodes per iteration over {self.world} process(es), "
                  f"resume={self.resume}")  # fmt: skip
        progress = Progress(cfg.max_steps, "distill", cfg.progress and accelerator.is_main_process, self.start)
        metrics, done, self.t_start = self.last_metrics, self.start, time.time()  # max_seconds counts from here
        for iteration in range(self.start, cfg.max_steps):
            metrics, done = self.iteration(iteration), iteration + 1
            progress.update(done, kl=metrics["distill/reverse_kl"], success=metrics["env/success_rate"])
            if self.stopped_on_time:
                break
        progress.close()
        self.guard.require_an_update("final/")
        if "eval/success_rate" not in metrics:  # resumed at the end, or eval_episodes=0
            metrics.update(held_out_success(cfg, accelerator.unwrap_model(self.student), self.tokenizer))
        save_final(accelerator, self.student, self.tokenizer, os.path.join(cfg.output_dir, "final"))
        summary = {k: v for k, v in metrics.items() if not k.startswith("timing/")}
        summary.update(steps=done, mode="on_policy", stopped_on_time=self.stopped_on_time)
        self.tracker.finish(summary)
        return summary

    def iteration(self, iteration: int) -> dict:
        """One iteration (0-based index); returns the metrics it logged."""
        cfg, done = self.cfg, iteration + 1
        # 1. Rollout: the student plays this process's episodes (environment tokens get policy_mask 0).
        t0 = time.time()
        traj = self.rollout(iteration)
        t_rollout, t1 = time.time() - t0, time.time()
        # 2-3. Teacher and student distributions on the student's tokens; reverse-KL update per minibatch.
        update = self.update(traj)
        self.scheduler.step()
        metrics = {**update, **self.rollout_metrics(traj), "train/lr": self.scheduler.get_last_lr()[0]}
        metrics.update({"timing/rollout_s": t_rollout, "timing/train_s": time.time() - t1})
        # max_seconds spent: this iteration is the last (evaluated and saved as at max_steps).
        self.stopped_on_time = time_is_up(self.accelerator, self.t_start, cfg.max_seconds)
        last = done == cfg.max_steps or self.stopped_on_time
        # 4. Held-out success of the student every eval_every iterations and at the last.
        if (cfg.eval_every and done % cfg.eval_every == 0) or last:
            metrics.update(held_out_success(cfg, self.accelerator.unwrap_model(self.student), self.tokenizer))
        # 5. Log.
        if done % cfg.log_every == 0 or last or "eval/success_rate" in metrics:
            self.tracker.log(metrics, step=done)
        # 6. Checkpoint (atomic); resume_from=auto continues from here.
        self.last_metrics = metrics
        if (cfg.save_every and done % cfg.save_every == 0) or last:
            self.save(done)
        return metrics

    def rollout(self, iteration: int) -> Trajectory:
        self.student.eval()
        seeds = episode_seeds(self.cfg.seed, iteration, self.rank, self.per_rank)
        with unwrap_model_for_generation(self.student, self.accelerator) as unwrapped:
            self.sampler.sync_weights(unwrapped)  # sample from the weights of the last update
            traj = run_episodes(self.sampler, self.envs, seeds, self.tokenizer,
                                max_total_tokens=self.cfg.rollout.max_total_tokens)  # fmt: skip
        self.student.train()
        return traj

    def update(self, traj: Trajectory) -> dict:
        """One optimizer step per minibatch of this process's episodes (one pass, reshuffled each iteration)."""
        cfg, accelerator = self.cfg, self.accelerator
        device = accelerator.device
        batch = (traj.input_ids.to(device), traj.attention_mask.to(device), traj.policy_mask.to(device))
        per_rank_batch = cfg.optim.batch_size // self.world
        order = torch.randperm(len(traj), generator=self.shuffle).tolist()
        kl_sum, tokens, steps = 0.0, 0.0, []
        for start in range(0, len(order), per_rank_batch):
            idx = order[start : start + per_rank_batch]
            normaliser = float(accelerator.reduce(batch[2][idx].sum(), reduction="sum"))
            if normaliser == 0:  # no policy token in this minibatch on any process
                continue
            stats, minibatch_kl = self.minibatch_step(batch, idx, normaliser)
            steps.append(stats)
            kl_sum, tokens = kl_sum + minibatch_kl, tokens + normaliser
        return {
            "distill/reverse_kl": kl_sum / max(tokens, 1.0),
            "train/grad_norm": sum(s["train/grad_norm"] for s in steps) / max(len(steps), 1),
            "train/skipped_steps": sum(s["train/skipped_steps"] for s in steps),
            "train/minibatch_updates": float(len(steps)),
        }

    def minibatch_step(self, batch: tuple, idx: list[int], normaliser: float) -> tuple[dict, float]:
        """One optimizer step on minibatch `idx`: the reverse KL summed over its policy tokens, divided by their GLOBAL
        count `normaliser`, micro-batch by micro-batch. Returns the step's stats and the KL summed over all processes
        (before the step)."""
        cfg, accelerator = self.cfg, self.accelerator
        ids, attn, mask = batch
        kl_sum = [torch.zeros((), device=accelerator.device)]

        def loss_of(rows: list[int]) -> torch.Tensor:
            token_kl = token_reverse_kl(self.student, self.teacher, ids[rows], attn[rows], mask[rows],
                                        cfg.rollout.temperature)  # fmt: skip
            kl_sum[0] = kl_sum[0] + core.masked_sum(token_kl.detach(), mask[rows])
            return core.distillation_loss(token_kl, mask[rows], normaliser)

        micro = cfg.optim.micro_batch_size
        micro_batches = [idx[j : j + micro] for j in range(0, len(idx), micro)]
        stats, _ = optimizer_step(accelerator, [self.student], self.optimizer, micro_batches, loss_of,
                                  cfg.optim.max_grad_norm)  # fmt: skip
        self.guard.after_step(not stats["train/skipped_steps"], {"student": self.student}, self.guard.updates + 1)
        return stats, float(accelerator.reduce(kl_sum[0], reduction="sum"))

    def rollout_metrics(self, traj: Trajectory) -> dict:
        """The student's own episodes (train split, sampled), under PPO's names, averaged over processes."""

        def mean(x) -> float:
            tensor = torch.as_tensor(x, dtype=torch.float32, device=self.accelerator.device)
            return float(self.accelerator.reduce(tensor.mean(), "mean"))

        out = {f"env/{name}": mean(getattr(traj, name)) for name in ENV_COUNTS}
        out.update({"env/success_rate": mean(traj.success), "env/episode_reward": mean(traj.env_reward)})
        out.update({"response_length": mean(traj.policy_mask.sum(1)), "eos_rate": mean(1.0 - traj.missing_eos)})
        return out

    def save(self, done: int) -> None:
        loop = {"shuffle": self.shuffle.get_state(), "updates": self.guard.updates}
        state = training_state(self.accelerator, self.optimizer, self.scheduler, done, self.last_metrics, loop)
        save_checkpoint(self.accelerator, self.cfg.output_dir, done, {"model": self.student}, state,
                        self.cfg.keep_checkpoints)  # fmt: skip

    def load(self, path: str) -> None:
        """Resume: student weights, optimiser, schedule, shuffle RNG, iteration."""
        state = load_checkpoint(path, {"model": self.accelerator.unwrap_model(self.student)}, self.rank)
        self.start, self.last_metrics, loop = restore_training_state(
            self.accelerator, state, self.optimizer, self.scheduler
        )
        self.shuffle.set_state(loop["shuffle"])
        self.guard.updates = loop.get("updates", self.start)


def check_episode_shape(cfg: DistillConfig, world: int) -> int:
    """Episodes per process; env.episodes must split evenly over processes and environments, and into whole
    minibatches of optim.batch_size episodes."""
    unit = world * len(cfg.env.ids)
    if cfg.env.episodes % unit:
        raise ConfigError(
            f"env.episodes={cfg.env.episodes} must divide by processes ({world}) x len(env.ids) ({len(cfg.env.ids)}); "
            f"try env.episodes={max(1, cfg.env.episodes // unit) * unit}"
        )
    per_rank = cfg.env.episodes // world
    if cfg.optim.batch_size > cfg.env.episodes or per_rank % max(cfg.optim.batch_size // world, 1):
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} (episodes per optimizer step) must divide env.episodes="
            f"{cfg.env.episodes} into whole minibatches on each of the {world} process(es)"
        )
    check_batch_shape(cfg.optim, world, "rlagent distill", "episodes per optimizer step")
    return per_rank


# ---------------------------------------------------------------------------------------------------------------------
# sequence: the teacher's successful episodes become SFT data


def teacher_conversations(cfg: DistillConfig, accelerator) -> str:
    """OUTPUT_DIR/teacher_episodes.jsonl: the teacher's (successful) episodes as {"messages", "tools"} rows. A resumed
    run reuses the file; the main process writes it, the others wait."""
    path = os.path.join(cfg.output_dir, "teacher_episodes.jsonl")
    if accelerator.is_main_process and not os.path.isfile(path):
        tokenizer = teacher_tokenizer(cfg)
        teacher = load_teacher(cfg, tokenizer).to(accelerator.device)
        policy = ModelPolicy(teacher, tokenizer, cfg.rollout.max_new_tokens, cfg.rollout.temperature, dtype="model")
        rows = []
        for i, env_id in enumerate(cfg.env.ids):
            for traj in play(policy, tokenizer, env_id, cfg.distill.teacher_episodes, cfg.seed * 1000 + i * 100_000,
                             "train", max_total_tokens=cfg.rollout.max_total_tokens):  # fmt: skip
                for n, messages in enumerate(traj.messages):
                    if traj.success[n] or not cfg.distill.only_successful:
                        rows.append({"messages": messages, "tools": traj.tools[n], "success": bool(traj.success[n])})
        if not rows:
            raise DataError(f"the teacher ({cfg.teacher.name_or_path}) solved none of its episodes: nothing to learn")
        write_jsonl(path + ".tmp", rows)
        os.replace(path + ".tmp", path)  # a kill while writing never leaves a partial file behind
    accelerator.wait_for_everyone()
    return path


def train_sequence(cfg: DistillConfig) -> dict:
    """Sequence-level distillation: teacher episodes -> SFT of the student, then its held-out success."""
    accelerator = make_accelerator(cfg.model.dtype)
    set_seed(cfg.seed, accelerator.process_index)
    check_batch_shape(cfg.optim, accelerator.num_processes, "rlagent distill")
    # 1. Teacher episodes (kept if successful) as conversations.
    path = teacher_conversations(cfg, accelerator)
    # 2. Student tokens of those conversations, assistant-only masks (the SFT data path).
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = SFTDataConfig(source="file", path=path, eval_fraction=cfg.distill.eval_fraction)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SupervisedConfig)}
    sft_cfg = SFTConfig(**{**fields, "model": cfg.model, "data": data, "max_length": cfg.max_length})
    train_set, eval_set, data_stats = prepare_data(sft_cfg, tokenizer, accelerator.process_index)
    if len(train_set) < cfg.optim.batch_size:
        raise DataError(f"only {len(train_set)} teacher conversations to train on, fewer than optim.batch_size="
                        f"{cfg.optim.batch_size}; raise distill.teacher_episodes")  # fmt: skip
    # 3. The SFT loop on the student.
    model = make_trainable(load_causal_lm(cfg.model, tokenizer, cfg.seed), cfg.model)
    disable_dropout(model)
    task = sft_task(sft_cfg, train_set, eval_set, data_stats, tokenizer.pad_token_id, accelerator.device, "distill")
    run = fit(cfg, accelerator, model, task)
    # 4. Held-out success, final/ and the summary.
    success = held_out_success(cfg, accelerator.unwrap_model(run.model), tokenizer)
    save_final(accelerator, run.model, tokenizer, os.path.join(cfg.output_dir, "final"))
    with open(path, encoding="utf-8") as handle:
        kept = sum(1 for line in handle if line.strip())
    summary = {**data_stats, **run.summary(), "final/eval_loss": run.metrics.get("eval/loss"), **success}
    summary.update(mode="sequence", **{"data/teacher_episodes": cfg.distill.teacher_episodes * len(cfg.env.ids)})
    summary["data/teacher_kept"] = kept
    run.tracker.finish(summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """`rlagent distill --config FILE [key=value ...]`; returns the summary."""
    cfg = parse_args(DistillConfig, argv, prog="rlagent distill")
    check_resume_from(cfg.resume_from)
    if cfg.distill.mode == "sequence":
        return train_sequence(cfg)
    return OnPolicyDistiller(cfg).train()


if __name__ == "__main__":
    run_main(main, prog="rlagent distill")
