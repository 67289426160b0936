"""A real pretrained model end to end: SmolLM2-135M-Instruct cut to one decoder layer (its real 49,152-token
vocabulary, embeddings, chat template and pad == eos tokenizer) through the real CLI: sft (LoRA) -> reward (LoRA,
merged) -> ppo (1 iteration, 4 episodes, LoRA on the merged SFT adapter) -> eval -> rollout. Plus LoRA adapter
folders loading as merged models, and (slow) the full 30-layer model through `rlagent quickstart --model`."""

import json
import os

import pytest
import torch

from rlagent.common.modeling import load_pretrained_causal_lm, load_tokenizer
from tests.conftest import run_cli
from tests.rlagent.smollm2 import require_smollm2, smollm2_truncated

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
SHORT = ["progress=false", "save_every=0", "max_length=512"]


@pytest.fixture(scope="module")
def truncated(tmp_path_factory) -> str:
    require_smollm2()
    return smollm2_truncated(str(tmp_path_factory.mktemp("smollm2-1layer")), num_layers=1)


def stage(name: str, *overrides: str) -> None:
    run_cli("rlagent", name, "--config", os.path.join(CONFIGS, "smollm2", f"{name}.yaml"), *overrides)


def test_pipeline_on_a_truncated_smollm2(truncated, tmp_path):
    sft, reward, ppo = (str(tmp_path / name) for name in ("sft", "reward", "ppo"))
    batch = ["optim.batch_size=2", "optim.micro_batch_size=2"]
    stage("sft", f"output_dir={sft}", f"model.name_or_path={truncated}", "max_steps=2", "data.episodes=6", *batch,
          *SHORT)  # fmt: skip
    stage("reward", f"output_dir={reward}", f"model.name_or_path={truncated}", "max_steps=2", "data.pairs=4",
          "normalize.reference_samples=4", "model.gradient_checkpointing=true", *batch, *SHORT)  # fmt: skip
    stage("ppo", f"output_dir={ppo}", f"model.name_or_path={sft}/final", f"reward.model_path={reward}/final",
          "max_steps=1", "env.episodes=4", "optim.batch_size=4", "optim.micro_batch_size=4",
          "rollout.max_new_tokens=16", "model.gradient_checkpointing=true", "progress=false",
          # The shipped config is RLOO without a reward model; GAE with the critic from the reward model and its
          # score weighed keeps the whole LoRA chain (SFT adapter -> merged reward model -> critic) under test.
          "algo.estimator=gae", "value.init=reward_model", "reward.rm_weight=0.1")  # fmt: skip

    # LoRA stages write adapters; each names the model it was trained on, so loading one merges the whole chain.
    sft_adapter = json.loads((tmp_path / "sft" / "final" / "adapter_config.json").read_text())
    ppo_adapter = json.loads((tmp_path / "ppo" / "final" / "adapter_config.json").read_text())
    assert sft_adapter["base_model_name_or_path"] == os.path.abspath(truncated)
    assert ppo_adapter["base_model_name_or_path"] == os.path.abspath(f"{sft}/final")
    assert (tmp_path / "reward" / "final" / "config.json").is_file()  # merged: a plain sequence classifier
    # The tokenizer fix-ups were made once (stage 1), printed, and travel with every final/ folder.
    for folder in ("sft", "reward", "ppo"):
        config = json.loads((tmp_path / folder / "final" / "tokenizer_config.json").read_text())
        assert config["pad_token"] == "<|endoftext|>" and config["eos_token"] == "<|im_end|>"
        assert any(note.startswith("pad '<|im_end|>' == eos") for note in config["rlagent_tokenizer_fixups"])

    out = tmp_path / "eval.json"
    run_cli("rlagent", "eval", "--policy", f"{ppo}/final", "--env", "rlagent/Calculator-v0", "--episodes", "2",
            "--max-new-tokens", "8", "--out", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0
    proc = run_cli("rlagent", "rollout", "--policy", f"{ppo}/final", "--env", "rlagent/KBSearch-v0", "--episodes",
                   "1", "--max-new-tokens", "8")  # fmt: skip
    assert "policy_mask = 1 exactly on the policy spans" in proc.stdout


def test_lora_adapter_folder_loads_merged_and_stacks(truncated, tmp_path):
    """An adapter folder loads as its base with the adapter merged (same logits as PEFT's own forward), and an
    adapter trained on that merged model names the folder as its base, so it loads with both merged."""
    from peft import LoraConfig, get_peft_model

    def with_random_adapter(model, seed):
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        torch.manual_seed(seed)
        for name, parameter in peft.named_parameters():
            if "lora_" in name:
                parameter.data.normal_(0, 0.05)
        return peft.eval()

    ids = torch.tensor([[1, 200, 300, 400, 2]])
    first = with_random_adapter(load_pretrained_causal_lm(truncated, torch.float32), seed=0)
    first.save_pretrained(tmp_path / "first")
    with torch.no_grad():
        expected_first = first(ids).logits
        merged_first = load_pretrained_causal_lm(str(tmp_path / "first"), torch.float32)
        torch.testing.assert_close(merged_first(ids).logits, expected_first, rtol=1e-4, atol=1e-4)
        second = with_random_adapter(merged_first, seed=1)
        second.save_pretrained(tmp_path / "second")
        expected_second = second(ids).logits
        merged_second = load_pretrained_causal_lm(str(tmp_path / "second"), torch.float32)
        torch.testing.assert_close(merged_second(ids).logits, expected_second, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected_first, expected_second)  # the second adapter did change something


def test_load_tokenizer_fixes_smollm2_and_prints_once(truncated, capsys):
    tokenizer = load_tokenizer(truncated)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token == "<|im_end|>"
    assert "tokenizer: pad '<|im_end|>' == eos -> '<|endoftext|>' id 0" in capsys.readouterr().out


@pytest.mark.slow
def test_quickstart_on_the_full_smollm2(tmp_path):
    """The whole 30-layer model, a few steps per stage, zero-shot row included; a real model evaluates greedy only
    unless --decodings asks for more."""
    require_smollm2()
    proc = run_cli("rlagent", "quickstart", "--model", "smollm2-135m-instruct", "--smoke", "--eval-episodes", "2",
                   "--output-dir", str(tmp_path), timeout=3600)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    for env_id in ("rlagent/Calculator-hard-v0", "rlagent/KBSearch-hard-v0"):  # configs/smollm2's env ids
        for policy in ("zero_shot", "sft", "ppo"):
            assert summary[env_id][policy]["episodes"] == 2
        assert "sft_sampled" not in summary[env_id]
    assert "zero-shot" in proc.stdout
