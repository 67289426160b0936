# ruff: noqa: F811  (the `tok` fixture is imported from test_rollout, and pytest passes it by parameter name)
"""The generation-backend seam: prefix cache on/off give the same tokens, sampler log-probs match the learner's,
sync_weights refreshes a bf16 copy, unknown backends are config errors, and the TIS weights are applied."""

import copy
import types

import pytest
import torch

from rlagent.algorithms import ppo_core as core
from rlagent.common.config import ConfigError
from rlagent.common.tiny import build_tiny_model
from rlagent.rollout.backends import GenerationRequest, SamplingParams, build_backend
from rlagent.rollout.decoding import ModelPolicy
from rlagent.rollout.engine import make_envs, run_episodes
from rlagent.train_ppo import PPOTrainer
from tests.rlagent.scripted_models import SMALL
from tests.rlagent.smollm2 import require_smollm2, smollm2_truncated
from tests.rlagent.test_rollout import one_thread, tok  # noqa: F401  (fixtures: one torch thread, the tiny tokenizer)

CALC, KB = "rlagent/Calculator-v0", "rlagent/KBSearch-v0"


def rollout(model, tok, env_id: str, n: int, max_new: int = 12, **kwargs):
    policy = ModelPolicy(model, tok, max_new_tokens=max_new, **kwargs)
    traj = run_episodes(policy, make_envs(env_id, n, split="test"), list(range(n)), tok, max_total_tokens=600)
    return traj, policy


def assert_prefix_cache_changes_nothing(model, tok, env_id: str, n: int):
    on, policy_on = rollout(model, tok, env_id, n, greedy=True, prefix_cache=True)
    off, policy_off = rollout(model, tok, env_id, n, greedy=True, prefix_cache=False)
    assert policy_on.backend.prefix_hits == n and policy_off.backend.prefix_hits == 0  # the shared prefix was used
    assert torch.equal(on.input_ids, off.input_ids) and torch.equal(on.policy_mask, off.policy_mask)
    assert torch.allclose(on.sampler_logprobs, off.sampler_logprobs, atol=1e-4)


@pytest.mark.parametrize("env_id", [CALC, KB])
def test_prefix_cache_gives_identical_tokens_tiny(tok, env_id):
    model = build_tiny_model(SMALL, tok, seed=0)
    assert_prefix_cache_changes_nothing(model, tok, env_id, 6)


def test_prefix_cache_gives_identical_tokens_smollm2(tmp_path_factory):
    require_smollm2()
    from rlagent.common.config import ModelConfig
    from rlagent.common.modeling import load_causal_lm, load_tokenizer

    folder = smollm2_truncated(str(tmp_path_factory.mktemp("smollm2-1layer")), num_layers=1)
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(ModelConfig(name_or_path=folder), tokenizer, seed=0).float()
    assert_prefix_cache_changes_nothing(model, tokenizer, CALC, 4)


def test_shared_prefix_is_reused_until_weights_change(tok):
    model = build_tiny_model(SMALL, tok, seed=0)
    policy = ModelPolicy(model, tok, max_new_tokens=4, greedy=True)
    envs = make_envs(CALC, 4, split="test")
    run_episodes(policy, envs, [0, 1, 2, 3], tok)
    stored = policy.backend._prefix
    assert stored is not None and len(stored[0]) >= 16
    run_episodes(policy, envs, [4, 5, 6, 7], tok)
    assert policy.backend._prefix is stored  # same prompt prefix, same weights: not prefilled again
    policy.sync_weights(model)
    assert policy.backend._prefix is None


def test_sampler_logprobs_match_learner_fp32(tok):
    """Shared fp32 module: the sampler's log-probs are the learner's (same temperature) on every policy token."""
    model = build_tiny_model(SMALL, tok, seed=1)
    torch.manual_seed(0)
    traj, _ = rollout(model, tok, CALC, 6, temperature=0.7)
    with torch.no_grad():
        logits = model(input_ids=traj.input_ids, attention_mask=traj.attention_mask).logits
    learner = core.token_logprobs(logits, traj.input_ids, 0.7)
    mask = traj.policy_mask.bool()
    assert mask.sum() > 20
    torch.testing.assert_close(traj.sampler_logprobs[mask], learner[mask], atol=2e-4, rtol=0)
    assert (traj.sampler_logprobs[~mask] == 0).all()


def test_bf16_copy_is_bf16_and_sync_weights_refreshes_it(tok):
    model = build_tiny_model(SMALL, tok, seed=2)
    backend = build_backend("hf", model, tok, dtype="bfloat16")
    assert backend.model is not model and {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the trainer's weights are untouched
    params = SamplingParams(max_new_tokens=6, greedy=True, stop_ids=())
    prompt = [GenerationRequest(0, [tok.bos_token_id or 1, 5, 6, 7])]
    before = backend.generate(prompt, params)[0].token_ids
    with torch.no_grad():  # "an update": a large random change of every weight
        generator = torch.Generator().manual_seed(0)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    assert backend.generate(prompt, params)[0].token_ids == before  # not synced yet: still the old weights
    backend.sync_weights(model)
    fresh = build_backend("hf", model, tok, dtype="bfloat16").generate(prompt, params)[0].token_ids
    after = backend.generate(prompt, params)[0].token_ids
    assert after == fresh and after != before
    assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}
    for copied, source in zip(backend.model.parameters(), model.parameters()):
        assert torch.equal(copied, source.to(torch.bfloat16))


def test_same_dtype_shares_the_module(tok):
    model = build_tiny_model(SMALL, tok, seed=0)
    assert build_backend("hf", model, tok, dtype="float32").model is model


def test_unknown_backend_is_a_one_line_config_error(tok):
    model = build_tiny_model(SMALL, tok, seed=0)
    with pytest.raises(ConfigError, match=r"rollout.backend: unknown generation backend 'vllm' \(known: hf\)"):
        build_backend("vllm", model, tok)


def test_tis_weights_by_hand():
    learner = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5]])
    # exp(0.5) = 1.6487 -> capped at 1.5; exp(-1) = 0.3679; exp(0) = 1
    expected = torch.tensor([[1.5, 0.36787944, 1.0]])
    torch.testing.assert_close(core.tis_weights(learner, sampler, cap=1.5), expected, atol=1e-7, rtol=0)


def test_sampler_mismatch_by_hand():
    learner = torch.tensor([[-1.0, -2.0, -9.0]])
    sampler = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is not a policy token: ignored
    stats = core.sampler_mismatch(learner, sampler, mask)
    # diffs 0.5, -1 -> |.| mean 0.75, max 1; k3: (e^0.5 - 1 - 0.5 + e^-1 - 1 + 1) / 2 = (0.148721 + 0.367879) / 2
    assert stats["rollout/logprob_diff_mean"] == pytest.approx(0.75, abs=1e-7)
    assert stats["rollout/logprob_diff_max"] == pytest.approx(1.0, abs=1e-7)
    assert stats["rollout/sampler_kl"] == pytest.approx((0.1487212707 + 0.3678794412) / 2, abs=1e-7)


def test_tis_correction_multiplies_the_policy_loss_where_the_sampler_differs():
    """Rigged log-probs: the trainer's advantages are scaled by the capped ratio only where sampler != learner, and
    the clipped loss of the scaled advantages is the per-token loss times the weight."""
    old = torch.tensor([[0.0, -1.0, -2.0, -0.3]])
    sampler = torch.tensor([[0.0, -1.0, -3.0, -0.1]])  # differs at tokens 2 (ratio e) and 3 (ratio e^-0.2)
    advantages = torch.tensor([[0.0, 1.0, -2.0, 0.5]])
    it = types.SimpleNamespace(
        advantages=advantages, old_logprobs=old, traj=types.SimpleNamespace(sampler_logprobs=sampler)
    )
    trainer = types.SimpleNamespace(cfg=types.SimpleNamespace(algo=types.SimpleNamespace(tis_cap=2.0)))
    weighted = PPOTrainer.importance_weighted(trainer, it)
    torch.testing.assert_close(weighted, torch.tensor([[0.0, 1.0, -4.0, 0.5 * 0.81873075]]), atol=1e-6, rtol=0)
    trainer.cfg.algo.tis_cap = None
    assert PPOTrainer.importance_weighted(trainer, it) is advantages
    new = torch.tensor([[0.0, -0.8, -2.5, -0.3]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    per_token = [core.policy_loss(new, old, advantages * m, m)[0] for m in torch.eye(4)[1:, None]]
    weights = torch.tensor([1.0, 2.0, 0.81873075])
    loss, _ = core.policy_loss(new, old, weighted, mask)
    assert float(loss) == pytest.approx(float(sum(w * p for w, p in zip(weights, per_token)) / 3), abs=1e-6)


def test_lora_policy_syncs_merged_weights_into_the_bf16_copy(tok):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_tiny_model(SMALL, tok, seed=3), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():  # LoRA's B starts at zero; make the adapter change the weights
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.1)
    backend = build_backend("hf", peft_model, tok, dtype="bfloat16")
    assert not hasattr(backend.model, "peft_config")  # a plain model of the merged weights
    assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for (name, copied), source in zip(backend.model.named_parameters(), merged.parameters()):
        assert torch.equal(copied, source.to(torch.bfloat16)), name
    assert any(p.requires_grad for p in peft_model.parameters())  # the trainer's adapters stay trainable


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group: enough for FSDP2's fully_shard to turn parameters into DTensors."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_sharded_model_is_gathered_into_the_unsharded_copy_and_never_run(tok, one_rank_group, lora, dtype):
    """PPO under FSDP: the backend is built from an unsharded copy of the policy; sync_weights(sharded policy) gathers
    the full weights into it (LoRA adapters too; a bf16 copy casts or merges them), and generation never calls
    the sharded module (its forward would be a collective). Tokens equal a backend built from the updated weights."""
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = build_tiny_model(SMALL, tok, seed=4)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    backend = build_backend("hf", copy.deepcopy(model), tok, dtype=dtype)
    with torch.no_grad():  # "an update", then the trainer's copy is sharded
        generator = torch.Generator().manual_seed(0)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    updated = copy.deepcopy(model)
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    assert type(next(model.parameters())).__name__ == "DTensor"

    def collective(*_):
        raise AssertionError("generation ran the sharded model")

    model.register_forward_pre_hook(collective)
    backend.sync_weights(model)
    params = SamplingParams(max_new_tokens=6, greedy=True, stop_ids=())
    prompt = [GenerationRequest(0, [tok.bos_token_id or 1, 5, 6, 7])]
    expected = build_backend("hf", updated, tok, dtype=dtype).generate(prompt, params)[0].token_ids
    assert backend.generate(prompt, params)[0].token_ids == expected
    reference = copy.deepcopy(updated).merge_and_unload() if lora and dtype == "bfloat16" else updated
    for (name, copied), source in zip(backend.model.named_parameters(), reference.parameters()):
        assert torch.equal(copied, source.to(copied.dtype)), name
    with pytest.raises(ValueError, match="unsharded copy"):
        build_backend("hf", model, tok, dtype=dtype)
