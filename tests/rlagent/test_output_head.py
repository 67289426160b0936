"""rlagent.training.output_head and its users: the head applied at selected positions only gives the full-logits path's
log-probs, entropies, SFT loss and gradients (float tolerance), with and without LoRA; where it cannot, callers fall
back to full logits."""

import copy

import pytest
import torch

from rlagent.algorithms import ppo_core as core
from rlagent.common.config import LoraConfig, ModelConfig, TinyModelConfig
from rlagent.common.modeling import apply_lora
from rlagent.common.tiny import build_tiny_model, build_tiny_tokenizer
from rlagent.train_sft import token_loss_sum
from rlagent.training.output_head import head_removed, output_head
from rlagent.training.ppo_models import forward_policy


def tiny_policy(lora: bool = False, target_modules=("q_proj", "v_proj")):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 0)
    if lora:
        model = apply_lora(model, ModelConfig(lora=LoraConfig(enabled=True, r=4, target_modules=list(target_modules))))
        for name, param in model.named_parameters():  # non-zero B matrices, so the adapters change the outputs
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    return model


def batch(n: int = 4, width: int = 24, seed: int = 0):
    """Right-padded ids, and a policy mask of two turns with other tokens between them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, width), generator=g)
    attention = torch.ones(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i in range(n):
        length = width - 3 * i
        attention[i, length:] = 0
        mask[i, 5:9] = 1
        mask[i, 14 : length - 1] = 1
    return ids, attention, mask


def grads_of(model, loss) -> dict:
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("lora", [False, True])
def test_forward_policy_selective_equals_full_logits_values_and_gradients(lora):
    model = tiny_policy(lora)
    ids, attention, mask = batch()
    g = torch.Generator().manual_seed(1)
    coef_logp, coef_ent = torch.randn(ids.shape, generator=g), torch.randn(ids.shape, generator=g)
    outputs, grads = [], []
    for selective in (True, False):
        logp, entropy = forward_policy(model, ids, attention, 0.7, mask, selective)
        loss = core.masked_sum(logp * coef_logp + entropy * coef_ent, mask.bool())
        outputs.append((torch.where(mask.bool(), logp, 0.0).detach(), torch.where(mask.bool(), entropy, 0.0).detach()))
        grads.append(grads_of(model, loss))
    for a, b in zip(outputs[0], outputs[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_selective_path_never_calls_the_head_module_and_scores_only_selected_positions(monkeypatch):
    """Tokens outside the mask never reach the head: the lm_head module is not run, and the one head computation
    sees exactly the selected rows (position 0 excluded, it predicts nothing)."""
    model = tiny_policy()
    ids, attention, mask = batch()
    mask[:, 0] = 1
    head_calls, rows = [], []
    model.lm_head.register_forward_hook(lambda *args: head_calls.append(1))
    real = core.selected_logprobs
    monkeypatch.setattr(
        core, "selected_logprobs", lambda hidden, *a, **k: rows.append(len(hidden)) or real(hidden, *a, **k)
    )
    logp, _ = forward_policy(model, ids, attention, 1.0, mask)
    assert head_calls == [] and rows == [int(mask[:, 1:].sum())]
    assert (logp[~mask.bool()] == 0).all() and (logp[:, 0] == 0).all()
    assert isinstance(model.lm_head, torch.nn.Linear)  # restored after the forward


def test_sft_token_loss_selective_equals_full_cross_entropy():
    model = tiny_policy(lora=True)
    ids, attention, mask = batch()
    labels = torch.where(mask.bool(), ids, -100)
    results = []
    for selective in (True, False):
        loss, count = token_loss_sum(
            model, {"input_ids": ids, "attention_mask": attention, "labels": labels}, selective
        )
        results.append((loss.detach(), count, grads_of(model, loss)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-6)
    assert results[0][1] == results[1][1] == int(mask[:, 1:].sum())
    for name, grad in results[0][2].items():
        torch.testing.assert_close(grad, results[1][2][name], atol=1e-6, rtol=1e-5, msg=name)


def test_output_head_falls_back_where_the_head_cannot_be_applied_outside_the_forward():
    assert isinstance(output_head(tiny_policy()), torch.nn.Linear)
    assert isinstance(output_head(tiny_policy(lora=True)), torch.nn.Linear)  # PEFT wrapper looked through
    assert output_head(tiny_policy(lora=True, target_modules=("q_proj", "lm_head"))) is None  # LoRA on the head
    capped = tiny_policy()
    capped.config.final_logit_softcapping = 30.0  # Gemma-2: logits are post-processed inside the forward
    assert output_head(capped) is None
    sharded = tiny_policy()
    sharded.lm_head.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside its gathered forward
    assert output_head(sharded) is None


def test_forward_policy_falls_back_to_full_logits_with_lora_on_the_head():
    model = tiny_policy(lora=True, target_modules=("q_proj", "lm_head"))
    ids, attention, mask = batch()
    selective = forward_policy(model, ids, attention, 1.0, mask, True)
    full = forward_policy(copy.deepcopy(model), ids, attention, 1.0, mask, False)
    for a, b in zip(selective, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # the same path: every position filled


def test_head_removed_restores_the_head_when_the_forward_fails():
    model = tiny_policy()
    head = model.lm_head
    with pytest.raises(RuntimeError), head_removed(model):
        assert isinstance(model.lm_head, torch.nn.Identity)
        raise RuntimeError("forward failed")
    assert model.lm_head is head and model.get_output_embeddings() is head


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_recomputes_layers_and_keeps_loss_and_gradients(lora):
    """model.gradient_checkpointing: each decoder layer's body runs again in the backward pass (so activations were not
    kept), and the PPO loss and every trainable gradient match the plain path."""
    from rlagent.common.modeling import make_trainable

    ids, attention, mask = batch()
    results = []
    for checkpointing in (False, True):
        tok = build_tiny_tokenizer()
        model = build_tiny_model(
            TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 0
        )
        lora_cfg = LoraConfig(enabled=lora, r=4, target_modules=["q_proj", "v_proj"])
        torch.manual_seed(0)  # PEFT draws lora_A from the global generator
        model = make_trainable(model, ModelConfig(lora=lora_cfg, gradient_checkpointing=checkpointing))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(2))
        model.train()
        calls = []
        layer = model.get_base_model().model.layers[0] if lora else model.model.layers[0]
        # A wrapped forward, not a hook: torch does not fire module hooks while it recomputes a checkpoint.
        mlp_forward = layer.mlp.forward
        layer.mlp.forward = lambda *args, calls=calls, inner=mlp_forward, **kwargs: (
            calls.append(1) or inner(*args, **kwargs)
        )
        logp, entropy = forward_policy(model, ids, attention, 1.0, mask, True)
        loss = core.masked_sum(logp + 0.1 * entropy, mask.bool())
        results.append((loss.detach(), grads_of(model, loss), len(calls)))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert (calls_a, calls_b) == (1, 2)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)
