"""Stage 3: PPO update invariants on a synthetic multi-turn batch, and the loop end to end as a subprocess."""

import copy
import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from rlagent.algorithms import ppo_core as core
from rlagent.common.config import ConfigError, TinyModelConfig, TrainingError, load_config
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.train_ppo import Callback, PPOConfig, PPOTrainer, ppo_minibatch_step
from rlagent.training.episode_scores import score_episodes
from rlagent.training.ppo_models import forward_policy, forward_value, load_value_model
from rlagent.training.setup import make_accelerator
from tests.conftest import BIN, SMALL_MODEL, assert_metrics_documented, launch_two_processes, read_metrics, run_cli

WORKER = os.path.join(os.path.dirname(__file__), "ppo_step_worker.py")


def synthetic_batch(n: int = 8, seed: int = 0):
    """A multi-turn-shaped batch: prompt, policy turn, environment reply, policy turn, right padding."""
    tok = build_tiny_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    policy = build_tiny_model(cfg, tok, seed)
    value = load_value_model("policy", policy, None, torch.float32)
    torch.nn.init.normal_(value.score.weight, std=0.1)  # a non-trivial critic
    g = torch.Generator().manual_seed(seed)
    width = 40
    input_ids = torch.randint(0, 256, (n, width), generator=g)
    attention = torch.ones(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i in range(n):
        length = width - (i % 4) * 3  # different lengths -> right padding
        attention[i, length:] = 0
        input_ids[i, length:] = tok.pad_token_id
        mask[i, 8:16] = 1  # first policy turn
        mask[i, 24 : length - 2] = 1  # second policy turn (env tokens 16..24 in between)
    with torch.no_grad():
        old_logp, _ = forward_policy(policy, input_ids, attention, 1.0)
        old_values = forward_value(value, input_ids, attention)
    scores = torch.randn(n, generator=g)
    kl = torch.zeros(n, width)
    rewards, _ = core.token_rewards(kl, scores, mask, 0.0)
    adv, returns = core.gae(rewards, old_values, mask, 1.0, 0.95)
    adv = core.masked_whiten(adv, mask) * mask
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "policy_mask": mask,
        "old_logprobs": old_logp,
        "old_values": old_values,
        "advantages": adv,
        "returns": returns,
    }
    return policy, value, batch


def one_step(policy, value, batch, micro: int, accelerator=None):
    accelerator = accelerator or make_accelerator()
    n = batch["input_ids"].shape[0]
    cfg = load_config(
        PPOConfig, None, [f"optim.batch_size={n}", f"optim.micro_batch_size={micro}", "optim.lr=0.01", "value.lr=0.01"]
    )
    params = [
        {"params": list(policy.parameters()), "lr": cfg.optim.lr},
        {"params": list(value.parameters()), "lr": cfg.value.lr},
    ]
    optimizer = torch.optim.AdamW(params, betas=(0.9, 0.95), weight_decay=0.0)
    stats = ppo_minibatch_step(cfg, accelerator, policy, value, optimizer, batch, list(range(n)), True)
    return stats


def test_first_minibatch_ratio_is_exactly_one():
    """Old log-probs come from the same training forward, so ratio == 1 and approx_kl == 0 before any update."""
    policy, value, batch = synthetic_batch()
    stats = one_step(policy, value, batch, micro=4)
    assert stats["policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["policy/ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert stats["policy/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["policy/clipfrac"] == 0.0


def test_minibatch_step_selective_head_equals_full_logits():
    """model.selective_head on and off: the same stats and the same gradients (float tolerance), with the policy
    and the critic both training; the ratio starts at 1 on either path."""
    policy, value, batch = synthetic_batch()
    results = []
    for selective in ("true", "false"):
        p, v = copy.deepcopy(policy), copy.deepcopy(value)
        cfg = load_config(
            PPOConfig, None, ["optim.batch_size=8", "optim.micro_batch_size=4", f"model.selective_head={selective}"]
        )
        opt = torch.optim.SGD(list(p.parameters()) + list(v.parameters()), lr=0.0)
        opt.zero_grad = lambda set_to_none=True: None  # keep the gradients for inspection
        stats = ppo_minibatch_step(cfg, make_accelerator(), p, v, opt, batch, list(range(8)), True)
        results.append((stats, [q.grad.clone() for q in list(p.parameters()) + list(v.parameters())]))
    (stats_a, grads_a), (stats_b, grads_b) = results
    assert stats_a.keys() == stats_b.keys()
    for key in stats_a:
        assert stats_a[key] == pytest.approx(stats_b[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_environment_tokens_get_no_gradient():
    """Changing targets (advantages, returns, old log-probs) on environment tokens changes no gradient."""
    policy, value, batch = synthetic_batch()
    env = (batch["policy_mask"] == 0) & (batch["attention_mask"] == 1)
    grads = []
    for variant in range(2):
        p, v, b = copy.deepcopy(policy), copy.deepcopy(value), {k: t.clone() for k, t in batch.items()}
        if variant:
            for key in ("advantages", "returns", "old_logprobs", "old_values"):
                b[key][env] = torch.randn(int(env.sum())) * 100
        cfg = load_config(
            PPOConfig, None, ["optim.batch_size=8", "optim.micro_batch_size=8", "optim.lr=0.0", "value.lr=0.0"]
        )
        opt = torch.optim.SGD(list(p.parameters()) + list(v.parameters()), lr=0.0)
        original_zero = opt.zero_grad
        opt.zero_grad = lambda set_to_none=True: None  # keep the gradients for inspection
        ppo_minibatch_step(cfg, make_accelerator(), p, v, opt, b, list(range(8)), True)
        grads.append([q.grad.clone() for q in list(p.parameters()) + list(v.parameters())])
        opt.zero_grad = original_zero
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_loss_invariant_to_accumulation_and_processes(tmp_path):
    """Global batch 8 as micro 8 x 1, micro 2 x 4, and 2 processes x (micro 4 x 1): the same parameters after one
    SGD step with lr 1 (so parameter change == gradient) to 1e-6 absolute, with gradients up to ~5e-2; float32
    summation order is the only difference (measured ~3e-8)."""
    policy, value, batch = synthetic_batch()
    saved = tmp_path / "batch.pt"
    torch.save({"policy": policy, "value": value, "batch": batch}, saved)
    results = {}
    for name, micro in (("8x1", 8), ("2x4", 2)):
        run_cli(os.path.join(BIN, "python"), WORKER, str(saved), str(tmp_path / f"{name}.pt"), str(micro))
        results[name] = torch.load(tmp_path / f"{name}.pt")
    launch_two_processes(WORKER, str(saved), str(tmp_path / "2proc.pt"), "4")
    results["2proc"] = torch.load(tmp_path / "2proc.pt")
    before = {
        **{f"policy.{k}": v for k, v in policy.state_dict().items()},
        **{f"value.{k}": v for k, v in value.state_dict().items()},
    }
    moved = max((results["8x1"][k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-3  # the step really changed the parameters
    for other in ("2x4", "2proc"):
        for key in before:
            torch.testing.assert_close(results[other][key], results["8x1"][key], rtol=0, atol=1e-6)


def ppo(output_dir, sft_final, *extra, check=True):
    return run_cli(
        "rlagent",
        "ppo",
        f"output_dir={output_dir}",
        f"model.name_or_path={sft_final}",
        "progress=false",
        "env.episodes=8",
        "optim.batch_size=4",
        "optim.micro_batch_size=4",
        "rollout.max_new_tokens=48",
        "rollout.max_total_tokens=512",
        *extra,
        check=check,
    )


@pytest.fixture(scope="module")
def small_sft(tmp_path_factory):
    """A briefly trained small policy (seconds): enough to emit tool calls sometimes."""
    out = tmp_path_factory.mktemp("sft")
    run_cli(
        "rlagent",
        "sft",
        f"output_dir={out}",
        "max_steps=30",
        "progress=false",
        "save_every=0",
        "data.episodes=200",
        "optim.lr=3e-3",
        *SMALL_MODEL,
    )
    return str(out / "final")


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in rows]


def test_ppo_resume_gives_identical_metrics(tmp_path, small_sft):
    ppo(tmp_path / "a", small_sft, "max_steps=4", "save_every=2")
    ppo(tmp_path / "b", small_sft, "max_steps=4", "save_every=2")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-4")
    shutil.rmtree(tmp_path / "b" / "final")
    proc = ppo(tmp_path / "b", small_sft, "max_steps=4", "save_every=2", "resume_from=auto")
    assert "checkpoints/step-2" in proc.stdout
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert comparable(a) == comparable(b)
    keys = ("objective/kl", "policy/approx_kl", "policy/clipfrac", "val/loss", "env/success_rate", "train/grad_norm")
    for key in keys:
        assert key in a[-1]
    assert_metrics_documented(tmp_path / "a")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 4 and (tmp_path / "a" / "final" / "config.json").is_file()


def test_nan_reward_is_skipped_and_logged(tmp_path, small_sft):
    ppo(tmp_path, small_sft, "max_steps=3", "save_every=0", "inject_nan_reward_at=1", "curriculum.enabled=true")
    rows = read_metrics(tmp_path)
    assert "curriculum/Calculator-v0_level" in rows[-1]
    assert_metrics_documented(tmp_path)
    assert [r["objective/nonfinite_scores"] for r in rows] == [0, 1, 0]
    assert all(isinstance(r["policy/loss"], float) for r in rows)  # finite numbers, not "nan" strings
    assert rows[-1]["step"] == 3


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_plus_plus"])
def test_critic_free_estimators_run(tmp_path, small_sft, estimator):
    ppo(tmp_path, small_sft, "max_steps=2", "save_every=0", f"algo.estimator={estimator}", "algo.group_size=4")
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and "val/loss" not in rows[-1]
    assert_metrics_documented(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring, and iterations with nothing to learn from (reward.missing_eos=mask)


def test_score_episodes_returns_a_new_mask_and_leaves_the_trajectory_alone():
    """Hand-computed: env 1.0 x [1, 0, 2, 1]; episode 1 misses end-of-turn, episode 3 gets a NaN score."""
    traj = SimpleNamespace(
        env_reward=torch.tensor([1.0, 0.0, 2.0, 1.0]),
        missing_eos=torch.tensor([0.0, 1.0, 0.0, 0.0]),
        policy_mask=torch.ones(4, 3),
        reward_components=[{}, {}, {}, {}],
    )
    masked = load_config(PPOConfig, None, ["reward.missing_eos=mask", "reward.env_weight=2.0"]).reward
    traj.env_reward[3] = float("nan")
    scores, mask, stats = score_episodes(masked, traj, None, None)
    assert scores.tolist() == [2.0, 0.0, 4.0, 0.0]  # 2 x env reward; dropped episodes score 0
    assert mask.sum(1).tolist() == [3.0, 0.0, 3.0, 0.0]
    assert traj.policy_mask.sum().item() == 12.0  # the trajectory's own mask is untouched
    assert stats["objective/nonfinite_scores"] == 1
    penalty = load_config(PPOConfig, None, ["reward.missing_eos=penalty", "reward.missing_eos_penalty=0.5"]).reward
    traj.env_reward[3] = 1.0
    scores, mask, _ = score_episodes(penalty, traj, None, None, inject_nan=True)
    assert scores.tolist() == [0.0, -0.5, 2.0, 1.0]  # episode 0 injected NaN -> dropped; episode 1: 0 - 0.5
    assert mask.sum(1).tolist() == [0.0, 3.0, 3.0, 3.0]


class ScriptedTurns:
    """A rollout policy that never samples: each turn is `max_new_tokens` digits, ending with end-of-turn only in
    the environments listed in `ends_turn` (positions in the trainer's env list), so missing_eos is forced."""

    def __init__(self, trainer, ends_turn: set[int]):
        self.max_new_tokens, self.envs, self.ends_turn = trainer.cfg.rollout.max_new_tokens, trainer.envs, ends_turn
        self.digit, self.eos = trainer.tokenizer.convert_tokens_to_ids("7"), trainer.tokenizer.eos_token_id

    def act(self, episodes) -> list[list[int]]:
        turns = []
        for ep in episodes:
            ends = next(i for i, env in enumerate(self.envs) if env is ep.env) in self.ends_turn
            turns.append([self.digit] * (self.max_new_tokens - 1) + [self.eos if ends else self.digit])
        return turns

    def sync_weights(self, model) -> None:  # the trainer refreshes its sampler after every update: nothing to copy
        pass


class Recorder(Callback):
    def __init__(self):
        self.began, self.rows = 0, []

    def on_train_begin(self, trainer):
        self.began += 1

    def on_iteration(self, trainer, step, metrics):
        self.rows.append((step, metrics))


def scripted_trainer(tmp_path, ends_turn: set[int], *extra) -> tuple[PPOTrainer, Recorder]:
    cfg = load_config(
        PPOConfig,
        None,
        [
            f"output_dir={tmp_path}",
            "model.name_or_path=tiny",
            "progress=false",
            "env.episodes=4",
            "optim.batch_size=4",
            "optim.micro_batch_size=4",
            "rollout.max_new_tokens=4",
            "reward.missing_eos=mask",
            "save_every=0",
            "log_samples_every=1",
            *extra,
        ],
    )
    recorder = Recorder()
    trainer = PPOTrainer(cfg, callbacks=[recorder])
    trainer.sampler = ScriptedTurns(trainer, ends_turn)
    return trainer, recorder


def test_iterations_with_nothing_to_learn_are_skipped_then_stop_the_run(tmp_path, capsys):
    """No episode ends its turn: every iteration is skipped (no update, metric + warning) and the third in a row
    stops the run with a message naming the keys; the weights never move."""
    trainer, recorder = scripted_trainer(tmp_path, set(), "max_steps=5", "reward.max_skipped_iterations=3")
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    with pytest.raises(ConfigError, match=r"3 iterations in a row .*\(reward\.max_skipped_iterations=3\)"):
        trainer.train()
    assert recorder.began == 1
    assert [step for step, _ in recorder.rows] == [1, 2]
    for _, metrics in recorder.rows:
        assert metrics["train/skipped_iteration"] == 1.0 and metrics["eos_rate"] == 0.0
        assert metrics["response_length"] == 0.0 and "policy/loss" not in metrics
    assert "iteration 1 skipped" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    assert_metrics_documented(tmp_path)


def test_a_run_whose_every_iteration_was_skipped_writes_no_final_and_no_checkpoint(tmp_path):
    """max_steps=1 and nothing to learn from: the run ends without one optimizer step, so it stops with a
    TrainingError (exit 1 from the CLI) and leaves neither final/ (the untrained policy) nor a checkpoint."""
    trainer, recorder = scripted_trainer(tmp_path, set(), "max_steps=1", "reward.max_skipped_iterations=3")
    with pytest.raises(TrainingError, match="no optimizer step was applied in the whole run, so final/ is not"):
        trainer.train()
    assert [step for step, _ in recorder.rows] == [1]
    assert not (tmp_path / "final").exists() and not (tmp_path / "checkpoints").exists()


def test_some_episodes_masked_still_update_and_reset_the_streak(tmp_path):
    """Half the episodes end their turns: the iteration trains on those (finite loss, skip metric 0)."""
    trainer, recorder = scripted_trainer(tmp_path, {0, 2}, "max_steps=2", "reward.max_skipped_iterations=1")
    summary = trainer.train()
    assert summary["steps"] == 2 and [step for step, _ in recorder.rows] == [1, 2]
    for _, metrics in recorder.rows:
        assert metrics["train/skipped_iteration"] == 0.0 and metrics["eos_rate"] == 0.5
        assert math.isfinite(metrics["policy/loss"]) and metrics["policy/minibatch_updates"] == 2.0
    assert_metrics_documented(tmp_path)


def test_value_init_policy_with_lora_copies_the_plain_backbone():
    """value.init=policy under LoRA: the critic is the starting policy's backbone, with no adapter layers in it."""
    from rlagent.training.ppo_models import load_models

    overrides = ["model.lora.enabled=true", "model.lora.r=4", "value.init=policy", "reward.rm_weight=0"]
    overrides += ["model.tiny.hidden_size=32", "model.tiny.num_layers=2", "model.tiny.num_heads=2"]
    cfg = load_config(PPOConfig, None, overrides + ["model.tiny.intermediate_size=64"])
    policy, reference, value, _ = load_models(cfg, build_tiny_tokenizer(), with_value=True)
    assert reference is None and value is not None
    value_state = value.model.state_dict()
    assert not any("lora_" in key for key in value_state)
    with policy.disable_adapter():
        base = policy.get_base_model().model
        plain = {key.replace(".base_layer", ""): t for key, t in base.state_dict().items() if "lora_" not in key}
    assert plain.keys() == value_state.keys()
    for key, tensor in value_state.items():
        assert torch.equal(tensor, plain[key]), key
    assert torch.count_nonzero(value.score.weight) == 0
    with pytest.raises(ValueError, match="before LoRA"):
        load_value_model("policy", policy, None, torch.float32)


def test_value_freeze_embeddings_leaves_the_critic_embeddings_out_of_training():
    from rlagent.training.ppo_models import load_models

    overrides = ["model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2"]
    overrides += ["reward.rm_weight=0"]
    for freeze in (False, True):
        cfg = load_config(PPOConfig, None, overrides + [f"value.freeze_embeddings={freeze}"])
        _, _, value, _ = load_models(cfg, build_tiny_tokenizer(), with_value=True)
        embeddings = value.get_input_embeddings().weight
        assert embeddings.requires_grad is (not freeze)
        assert all(p.requires_grad for name, p in value.named_parameters() if p is not embeddings)


def test_policy_and_critic_generate_in_eval_mode_and_update_in_train_mode(tmp_path, monkeypatch):
    """Both models arrive in eval mode (as from_pretrained hands them over); rollout and the no-grad passes run in
    eval mode, the PPO epochs in train mode (where activation checkpointing acts)."""
    import rlagent.train_ppo as train_ppo_module

    trainer, _ = scripted_trainer(tmp_path, {0, 1, 2, 3}, "max_steps=1")
    trainer.policy.eval()
    trainer.value.eval()
    modes = {}
    real_passes, real_epochs = PPOTrainer.old_ref_value_passes, train_ppo_module.ppo_epochs

    def passes(self, it):
        modes["passes"] = (self.policy.training, self.value.training)
        return real_passes(self, it)

    def epochs(cfg, accelerator, policy, value, *args):
        modes["epochs"] = (policy.training, value.training)
        return real_epochs(cfg, accelerator, policy, value, *args)

    monkeypatch.setattr(PPOTrainer, "old_ref_value_passes", passes)
    monkeypatch.setattr(train_ppo_module, "ppo_epochs", epochs)
    trainer.train()
    assert modes == {"passes": (False, False), "epochs": (True, True)}
