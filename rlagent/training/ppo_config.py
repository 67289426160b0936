"""Configuration of stage 3 (`rlagent ppo`): one typed dataclass per YAML section, each field with a one-line doc.

`rlagent ppo --help` prints them; rlagent/train_ppo.py runs the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlagent.algorithms.registry import ADV_ESTIMATORS, POLICY_LOSSES
from rlagent.common.config import (
    AT_LEAST_ONE,
    FRACTION,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    ModelConfig,
    OptimConfig,
    Range,
    StageConfig,
    doc,
)

ESTIMATOR_NAMES = tuple(ADV_ESTIMATORS)  # Literal[...] of these: an unknown name is a config error listing them
POLICY_LOSS_NAMES = tuple(POLICY_LOSSES)


@dataclass
class EnvConfig:
    """Which environments to play and how many episodes per iteration."""

    ids: list[str] = doc(
        "Environment ids; episodes are split evenly between them.", factory=lambda: ["rlagent/Calculator-v0"]
    )
    episodes: int = doc("Episodes per iteration over all processes (the rollout batch).", 32, range=AT_LEAST_ONE)
    split: Literal["train", "test"] = doc("Task split to train on.", "train")
    wrappers: str | None = doc(
        "Robustness wrappers to train under, e.g. 'prompt_injection:0.1,tool_faults:0.1:timeout' (envs.wrappers); "
        "null = none.",
        None,
    )


@dataclass
class RolloutConfig:
    """Sampling during rollouts (plain temperature sampling, no top-k/top-p)."""

    max_new_tokens: int = doc("Longest assistant turn in tokens.", 96, range=AT_LEAST_ONE)
    temperature: float = doc(
        "Sampling temperature; the same value divides logits in every log-prob pass.", 1.0, range=POSITIVE
    )
    max_total_tokens: int = doc("Longest episode (prompt + all turns) in tokens.", 1024, range=AT_LEAST_ONE)
    backend: str = doc("Generation backend (rlagent.rollout.backends): hf.", "hf")
    dtype: Literal["auto", "float32", "bfloat16"] = doc(
        "The sampler's weights: a copy in this dtype refreshed after every update ('auto': bf16 where the hardware "
        "computes it natively, else fp32); the trainer's dtype shares its module.",
        "auto",
    )
    prefix_cache: bool = doc("Prefill the prompt prefix the episodes share (system prompt, tools) once.", True)


@dataclass
class ScoreConfig:
    """How episodes are scored (YAML section `reward:`; stage 2's config is train_reward.RewardConfig)."""

    model_path: str | None = doc("Stage-2 reward model folder (its final/); null = environment reward only.", None)
    env_weight: float = doc("Weight of the environment's verifiable reward.", 1.0)
    rm_weight: float = doc("Weight of the normalised reward-model score.", 0.0)
    functions: list[str] = doc(
        "Python reward functions of a finished episode, 'module:fn' each: fn(messages, tools, info) -> float "
        "(reward_models.functions); logged as reward/<fn>.",
        factory=list,
    )
    function_weights: list[float] | None = doc("Weight of each reward function, in order; null = 1 each.", None)
    missing_eos: Literal["penalty", "mask", "none"] = doc(
        "Episodes with a turn that hit max_new_tokens: subtract missing_eos_penalty, drop them from the loss, or "
        "nothing.",
        "penalty",
    )
    missing_eos_penalty: float = doc("Subtracted from the score when missing_eos is 'penalty'.", 1.0)
    max_skipped_iterations: int = doc(
        "Stop the run after this many iterations in a row with no policy token left to learn from (every episode "
        "dropped by missing_eos='mask' or a non-finite score).",
        3,
        range=AT_LEAST_ONE,
    )


@dataclass
class ValueConfig:
    """The critic."""

    init: Literal["policy", "reward_model"] = doc(
        "Initialise from the policy backbone (zero head) or the reward model.", "policy"
    )
    lr: float = doc("Critic learning rate.", 1e-3, range=LEARNING_RATE)
    warmup_iterations: int = doc("Iterations that train only the critic before the policy moves.", 0)
    freeze_embeddings: bool = doc(
        "Keep the critic's token embeddings fixed: at a 49k-token vocabulary they are a fifth of a 135 M model, and "
        "training them costs 12 bytes per weight (gradient + AdamW moments) for little value signal.",
        False,
    )


@dataclass
class AlgoConfig:
    """PPO hyper-parameters."""

    # The choices are the keys of rlagent/algorithms/registry.py: a newly registered estimator is accepted here.
    estimator: Literal[ESTIMATOR_NAMES] = doc(
        "Advantages: gae (with the critic), or critic-free grpo / rloo / reinforce_plus_plus.", "gae"
    )
    group_size: int = doc("Samples per task for estimators that compare groups (grpo, rloo).", 4, range=Range(2, None))
    gamma: float = doc("Discount over tokens.", 1.0, range=FRACTION)
    lam: float = doc("GAE lambda.", 0.95, range=FRACTION)
    whiten_advantages: bool = doc("Whiten advantages over policy tokens once per rollout batch.", True)
    ppo_epochs: int = doc("Passes over each rollout batch.", 2, range=AT_LEAST_ONE)
    policy_loss: Literal[POLICY_LOSS_NAMES] = doc("Policy loss (a key of the registry): ppo_clip.", "ppo_clip")
    clip_eps: float = doc("Policy ratio clip epsilon.", 0.2, range=POSITIVE)
    dual_clip: float | None = doc(
        "Dual-clip constant c > 1 for negative advantages (null = off).",
        None,
        range=Range(1, None, low_inclusive=False),
    )
    tis_cap: float | None = doc(
        "Truncated importance sampling: weight each policy token's loss by min(exp(old - sampler log-prob), cap), "
        "correcting for a sampler that differs from the learner (bf16 copy); null = off.",
        None,
        range=POSITIVE,
    )
    value_clip_eps: float | None = doc("Value clip around the old values (null = off).", 0.2, range=POSITIVE)
    vf_coef: float = doc("Weight of the value loss.", 0.5, range=NON_NEGATIVE)
    ent_coef: float = doc("Entropy bonus weight (0 is usual for LLMs; entropy is always logged).", 0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = doc("Per-token KL estimator in the reward.", "k1")
    kl_clamp: float = doc("Clamp per-token KL estimates to this magnitude.", 10.0, range=POSITIVE)
    kl_coef: float = doc("Initial KL penalty coefficient beta.", 0.05, range=NON_NEGATIVE)
    adaptive_kl: bool = doc("Adapt beta towards kl_target (Ziegler et al.).", False)
    kl_target: float = doc("Target KL in nats per EPISODE (sum over policy tokens, batch mean).", 2.0, range=POSITIVE)
    kl_horizon: int = doc("Adaptive-KL horizon in episodes.", 10000, range=AT_LEAST_ONE)
    target_approx_kl: float | None = doc(
        "Stop PPO epochs early when approx_kl > 1.5 x this (null = never).", None, range=POSITIVE
    )


@dataclass
class CurriculumConfig:
    """Raise task difficulty when the agent is ready."""

    enabled: bool = doc("Turn the curriculum on.", False)
    start: int = doc("Starting difficulty level.", 1, range=AT_LEAST_ONE)
    max_level: int = doc("Highest difficulty level.", 3, range=AT_LEAST_ONE)
    threshold: float = doc("Rolling success rate that moves an environment to the next level.", 0.8, range=FRACTION)
    window: int = doc("Episodes in the rolling success window.", 64, range=AT_LEAST_ONE)


@dataclass
class PPOConfig(StageConfig):
    """Multi-turn PPO for tool-using agents."""

    output_dir: str = doc("Where metrics, checkpoints and final/ go.", "runs/ppo")
    max_steps: int = doc("PPO iterations (rollout + update).", 30, range=AT_LEAST_ONE)
    model: ModelConfig = doc("Policy to start from (usually the SFT output's final/).", factory=ModelConfig)
    optim: OptimConfig = doc(
        "Policy optimiser; batch_size = episodes per minibatch (one optimizer step).",
        factory=lambda: OptimConfig(lr=3e-4, schedule="constant", warmup_ratio=0.0, batch_size=16, micro_batch_size=8),
    )
    env: EnvConfig = doc("Environments.", factory=EnvConfig)
    rollout: RolloutConfig = doc("Sampling.", factory=RolloutConfig)
    reward: ScoreConfig = doc("Scoring.", factory=ScoreConfig)
    value: ValueConfig = doc("Critic.", factory=ValueConfig)
    algo: AlgoConfig = doc("PPO hyper-parameters.", factory=AlgoConfig)
    curriculum: CurriculumConfig = doc("Difficulty curriculum.", factory=CurriculumConfig)
    log_samples_every: int = doc("Log a table of sample trajectories every N iterations (0 = never).", 10)
    save_every: int = doc("Checkpoint every N iterations (0 = only at the end).", 10)
    inject_nan_reward_at: int | None = doc(
        "Fault injection for tests: NaN score for episode 0 at this iteration.", None
    )
