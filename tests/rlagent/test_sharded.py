"""The multi-process launch configs on CPU processes (gloo): FSDP2 full shard and two simulated machines against one
process, in fp32 (`--mixed_precision no`) so the comparison is exact up to float summation order."""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import psutil  # accelerate's own dependency
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from reward_models.scoring import NORMALIZATION_FILE
from tests.conftest import BIN, SMALL_MODEL, free_port, read_metrics, run_cli

FSDP = ["--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SFT = [*SMALL_MODEL, "data.episodes=50", "progress=false", "log_every=1", "optim.batch_size=8"]


def launch(*args: str, check: bool = True):
    """`accelerate launch` with a fresh port (args: launcher flags, script, script args)."""
    accelerate = os.path.join(BIN, "accelerate")
    return run_cli(accelerate, "launch", "--main_process_port", free_port(), *args, env=ONE_THREAD, check=check)


def sft_fsdp(output_dir, *extra, check: bool = True):
    return launch(*FSDP, "rlagent/train_sft.py", f"output_dir={output_dir}", *SFT, "optim.micro_batch_size=4", *extra)


def sft_one(output_dir, *extra):
    return run_cli("rlagent", "sft", f"output_dir={output_dir}", *SFT, "optim.micro_batch_size=4", *extra)


def assert_same_weights(a, b, atol=1e-5):
    """final/ folders of two runs, loaded with plain transformers on this one process."""
    one, two = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    named = dict(two.named_parameters())
    for name, p in one.named_parameters():
        torch.testing.assert_close(p, named[name], rtol=1e-4, atol=atol, msg=name)


def losses(output_dir) -> list[float]:
    return [row["train/loss"] for row in read_metrics(output_dir)]


@pytest.mark.slow
def test_fsdp_sft_shards_and_matches_one_process(tmp_path):
    """configs/accelerate/fsdp.yaml on 2 CPU processes really shards (the header says FSDP; before the fix accelerate
    ran it as plain DDP on CPU) and computes what one process computes: global batch 8 as 2 x (micro 4) vs 2 micro
    batches of 4. Losses to 1e-5 relative and final weights to 1e-5 (float summation order is the only difference;
    measured ~1e-7)."""
    proc = sft_fsdp(tmp_path / "fsdp", "max_steps=2", "save_every=0")
    assert "2 process(es) (FSDP)" in proc.stdout
    sft_one(tmp_path / "one", "max_steps=2", "save_every=0")
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(tmp_path / "one" / "final", tmp_path / "fsdp" / "final")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_sft_resume_matches_uninterrupted(tmp_path, lora):
    """4 steps with a checkpoint at 2: drop step-4 and final/, resume_from=auto under FSDP -> the same losses and
    final weights as the uninterrupted run and as one process (checkpoints hold full, gathered weights and optimiser
    state, so a resume hands each rank its slice back)."""
    extra = ["max_steps=4", "save_every=2", *(["model.lora.enabled=true", "model.lora.r=4"] if lora else [])]
    sft_fsdp(tmp_path / "a", *extra)
    sft_one(tmp_path / "one", *extra)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-4")
    shutil.rmtree(tmp_path / "b" / "final")
    (tmp_path / "b" / "summary.json").unlink()
    proc = sft_fsdp(tmp_path / "b", *extra, "resume_from=auto")
    assert f"resume={tmp_path / 'b' / 'checkpoints' / 'step-2'}" in proc.stdout
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-6)
    if not lora:
        assert_same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final", atol=1e-6)
        assert_same_weights(tmp_path / "one" / "final", tmp_path / "b" / "final")


PPO = [
    *SMALL_MODEL,
    "model.name_or_path=tiny",
    "reward.model_path=null",
    "reward.rm_weight=0",
    "env.episodes=8",
    "optim.batch_size=8",
    "optim.micro_batch_size=4",
    "rollout.max_new_tokens=24",
    "max_steps=2",
    "save_every=1",
    "progress=false",
]
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]


def comparable(output_dir) -> list[dict]:
    rows = read_metrics(output_dir)
    return [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in rows]


def assert_same_metrics(a, b, rel=1e-4):
    one, two = comparable(a), comparable(b)
    assert [sorted(r) for r in one] == [sorted(r) for r in two]
    for x, y in zip(one, two):
        assert x == pytest.approx(y, rel=rel, abs=1e-6)


@pytest.fixture(scope="module")
def ppo_ddp(tmp_path_factory):
    """PPO on 2 CPU processes, replicated weights: what two machines are compared with. Each rank samples with its
    own seed (seed + rank), so a 1-process run plays different episodes by design."""
    out = tmp_path_factory.mktemp("ppo") / "ddp"
    launch(*DDP, "rlagent/train_ppo.py", f"output_dir={out}", *PPO)
    return out


def safetensors_weights(folder) -> dict:
    """A model folder's tensors: safetensors files, or the shards torch.distributed.checkpoint wrote (SHARDED type)."""
    from safetensors.torch import load_file

    if os.path.isfile(os.path.join(folder, ".metadata")):
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as scratch:
            dcp_to_torch_save(folder, os.path.join(scratch, "full.pt"))
            return torch.load(os.path.join(scratch, "full.pt"))
    weights = {}
    for file in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        weights.update(load_file(file))
    assert weights, f"no weights in {folder}"
    return weights


def assert_same_tensors(a, b, atol=1e-5):
    """Every tensor in folder `a`'s safetensors files (full weights, or a LoRA adapter) equals `b`'s. Under FSDP the
    gathered state dict also names the head tied to the embeddings (lm_head.weight); that is the only extra key."""
    one, two = safetensors_weights(a), safetensors_weights(b)
    assert set(one) ^ set(two) <= {"lm_head.weight"}, set(one) ^ set(two)
    for name in set(one) & set(two):
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=atol, msg=name)


def ppo_fsdp(output_dir, *extra):
    return launch(*FSDP, "rlagent/train_ppo.py", f"output_dir={output_dir}", *PPO, *extra)


@pytest.fixture(scope="module")
def ppo_sharded(tmp_path_factory):
    """The `ppo_ddp` run under FSDP2 (full shard over the same 2 processes): what the resume tests continue."""
    out = tmp_path_factory.mktemp("ppo") / "fsdp"
    proc = ppo_fsdp(out)
    assert "over 2 process(es) (FSDP)" in proc.stdout
    return out


PPO_VARIANTS = {  # name -> extra args; LoRA r=4 adapters on the tiny model
    "gae-lora": ["model.lora.enabled=true", "model.lora.r=4"],
    "grpo": ["algo.estimator=grpo", "algo.group_size=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gae", *PPO_VARIANTS])
def test_fsdp_ppo_matches_ddp(tmp_path, ppo_ddp, ppo_sharded, variant):
    """PPO with the policy, critic and reference sharded over 2 CPU processes computes what the same 2 processes
    compute with replicated weights (each rank plays its own seed + rank episodes, so 2-process DDP, not 1
    process, is the reference): the rollout samples from the backend's unsharded copy, gathered from the shards
    after each update. Two iterations of 2 minibatch updates each; every logged metric to 1e-4 relative (measured
    <= 9e-6: FSDP takes the full-logits path, DDP the selective head), final policy, last checkpoint's critic
    (gae) and LoRA adapters to 1e-5 (measured 4e-7); a full final/ loads in plain transformers."""
    if variant == "gae":
        ddp, fsdp = ppo_ddp, ppo_sharded
    else:
        ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
        launch(*DDP, "rlagent/train_ppo.py", f"output_dir={ddp}", *PPO, *PPO_VARIANTS[variant])
        ppo_fsdp(fsdp, *PPO_VARIANTS[variant])
    assert_same_metrics(ddp, fsdp)
    assert_same_tensors(ddp / "final", fsdp / "final")
    if variant == "gae":
        assert_same_weights(ddp / "final", fsdp / "final")
        assert_same_tensors(ddp / "checkpoints" / "step-2" / "value", fsdp / "checkpoints" / "step-2" / "value")


@pytest.mark.slow
def test_two_machines_match_two_processes(tmp_path, ppo_ddp):
    """Two "machines" of one process each on 127.0.0.1 (static rendezvous, what a 2-node launch runs) compute the
    same PPO run as 2 processes on one machine."""
    port = free_port()
    machine = ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--mixed_precision", "no"]
    machine += ["--main_process_ip", "127.0.0.1", "--main_process_port", port, "--rdzv_backend", "static"]
    env = {**os.environ, **ONE_THREAD, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [os.path.join(BIN, "accelerate"), "launch", *machine]
    script = ["rlagent/train_ppo.py", f"output_dir={tmp_path}", *PPO]
    ranks = [
        subprocess.Popen([*cmd, "--machine_rank", str(r), *script], env=env, stdout=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=900)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs
    assert "over 2 process(es) (MULTI_CPU)" in outs[0]
    assert_same_metrics(ppo_ddp, tmp_path)
    assert_same_weights(ppo_ddp / "final", tmp_path / "final")


@pytest.mark.slow
def test_sharded_policy_generates_the_same_greedy_tokens(tmp_path):
    """A policy under FSDP (weights split over 2 processes, gathered layer by layer in each forward) generates the
    same 12 greedy tokens for 2 prompts as the same folder on one unsharded process."""
    sft_one(tmp_path / "sft", "max_steps=1", "save_every=0")
    worker = os.path.join(os.path.dirname(__file__), "fsdp_generate_worker.py")
    policy = str(tmp_path / "sft" / "final")
    run_cli(os.path.join(BIN, "python"), worker, policy, str(tmp_path / "one.pt"), env=ONE_THREAD)
    launch(*FSDP, worker, policy, str(tmp_path / "fsdp.pt"))
    one, fsdp = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "fsdp.pt")
    assert fsdp["sharded"] and not one["sharded"]
    assert torch.equal(one["tokens"], fsdp["tokens"])


@pytest.mark.slow
def test_fsdp_ppo_killed_after_its_first_checkpoint_resumes_to_the_same_run(tmp_path, ppo_sharded):
    """PPO under FSDP, SIGKILLed (launcher and both ranks) as soon as checkpoints/step-1 is complete, then the same
    command with resume_from=auto: it continues from step 1 and ends where the uninterrupted run ends (metrics
    1e-6 relative, final weights and the critic 1e-6): optimiser slices per rank, weights re-sharded, the
    generation copy gathered again, RNG per rank."""
    out = tmp_path / "killed"
    env = {**os.environ, **ONE_THREAD, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [os.path.join(BIN, "accelerate"), "launch", "--main_process_port", free_port(), *FSDP]
    run = subprocess.Popen([*cmd, "rlagent/train_ppo.py", f"output_dir={out}", *PPO], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    complete = out / "checkpoints" / "step-1" / "COMPLETE"
    deadline = time.time() + 600
    while not complete.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # What a machine dying does: every process at once. torchrun starts each rank in a session of its own, so the
    # launcher's process group alone would leave the ranks running.
    for process in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        process.send_signal(signal.SIGKILL)
    run.wait()
    assert complete.exists() and not (out / "final").exists(), "the kill did not land between step 1 and the end"
    proc = ppo_fsdp(out, "resume_from=auto")
    assert f"resume={out / 'checkpoints' / 'step-1'}" in proc.stdout
    assert_same_metrics(ppo_sharded, out, rel=1e-6)
    assert_same_tensors(ppo_sharded / "final", out / "final", atol=1e-6)
    critic = os.path.join("checkpoints", "step-2", "value")
    assert_same_tensors(ppo_sharded / critic, out / critic, atol=1e-6)


REWARD = [*SMALL_MODEL, "data.source=expert", "data.pairs=40", "optim.batch_size=8", "max_length=256",
          "progress=false", "log_every=1", "eval_every=2", "normalize.reference_samples=16", "max_steps=2",
          "save_every=0"]  # fmt: skip


@pytest.mark.slow
def test_fsdp_reward_model_matches_one_process(tmp_path):
    """The reward stage (fit's loop, the evaluation, the normalisation pass, final/ with its score head) with the
    reward model sharded over 2 processes: global batch 8 pairs as 2 x (micro 4) vs 2 micro-batches of 4 on one
    process. Losses and eval loss to 1e-5 relative, accuracies equal, final weights to 1e-5, the stored
    normalisation to 1e-5."""
    launch(*FSDP, "rlagent/train_reward.py", f"output_dir={tmp_path / 'fsdp'}", *REWARD, "optim.micro_batch_size=4")
    run_cli("rlagent", "reward", f"output_dir={tmp_path / 'one'}", *REWARD, "optim.micro_batch_size=4")
    one, fsdp = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "fsdp")
    for key in ("train/loss", "eval/loss"):
        assert [r[key] for r in one if key in r] == pytest.approx([r[key] for r in fsdp if key in r], rel=1e-5)
    for key in ("train/accuracy", "eval/accuracy"):
        assert [r[key] for r in one if key in r] == [r[key] for r in fsdp if key in r]
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one" / "final")
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp" / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    norms = [json.loads((tmp_path / run / "final" / NORMALIZATION_FILE).read_text()) for run in ("one", "fsdp")]
    assert norms[0].keys() == norms[1].keys()
    for key, value in norms[0].items():  # gain, bias, mean, std; clip is null
        assert (value is None is norms[1][key]) or value == pytest.approx(norms[1][key], rel=1e-5), key


@pytest.mark.slow
def test_sharded_state_dict_checkpoints_resume_like_full_ones(tmp_path, ppo_sharded):
    """configs/accelerate/fsdp_sharded.yaml (fsdp_state_dict_type: SHARDED_STATE_DICT): each checkpoint's policy and
    critic are every rank's own slices (torch.distributed.checkpoint files, no safetensors), final/ is still full
    weights for plain transformers; the run computes the full-type run, and a resume from its step-1 checkpoint
    ends where it ends (metrics 1e-6 relative, final weights 1e-6)."""
    sharded = ["--config_file", "configs/accelerate/fsdp_sharded.yaml", *FSDP[2:]]
    script = ["rlagent/train_ppo.py", *PPO]
    launch(*sharded, *script, f"output_dir={tmp_path / 'a'}")
    step = tmp_path / "a" / "checkpoints" / "step-1"
    for model in ("policy", "value"):
        assert glob.glob(str(step / model / "*.distcp")) and not glob.glob(str(step / model / "*.safetensors"))
    assert_same_metrics(ppo_sharded, tmp_path / "a", rel=1e-6)
    assert_same_weights(ppo_sharded / "final", tmp_path / "a" / "final", atol=1e-6)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-2")
    shutil.rmtree(tmp_path / "b" / "final")
    proc = launch(*sharded, *script, f"output_dir={tmp_path / 'b'}", "resume_from=auto")
    assert f"resume={tmp_path / 'b' / 'checkpoints' / 'step-1'}" in proc.stdout
    assert_same_metrics(tmp_path / "a", tmp_path / "b", rel=1e-6)
    assert_same_tensors(tmp_path / "a" / "final", tmp_path / "b" / "final", atol=1e-6)
    for model in ("policy", "value"):  # the shards hold what the full type gathers
        steps = [run / "checkpoints" / "step-2" / model for run in (ppo_sharded, tmp_path / "a", tmp_path / "b")]
        assert_same_tensors(steps[0], steps[1], atol=1e-6)
        assert_same_tensors(steps[1], steps[2], atol=1e-6)
