"""One PPO optimizer step on a saved batch; run directly or under `accelerate launch` by test_train_ppo.py.

usage: python ppo_step_worker.py BATCH.pt OUT.pt MICRO_BATCH_SIZE
Each process takes its contiguous share of the global minibatch; rank 0 saves the updated parameters.
"""

import sys

import torch

from rlagent.common.config import load_config
from rlagent.train_ppo import PPOConfig, ppo_minibatch_step
from rlagent.training.setup import make_accelerator


def main() -> None:
    batch_path, out_path, micro = sys.argv[1], sys.argv[2], int(sys.argv[3])
    saved = torch.load(batch_path, weights_only=False)
    accelerator = make_accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    n = saved["batch"]["input_ids"].shape[0]
    cfg = load_config(
        PPOConfig, None, [f"optim.batch_size={n}", f"optim.micro_batch_size={micro}", "optim.lr=1.0", "value.lr=1.0"]
    )
    policy, value = saved["policy"], saved["value"]
    params = [
        {"params": list(policy.parameters()), "lr": cfg.optim.lr},
        {"params": list(value.parameters()), "lr": cfg.value.lr},
    ]
    # Plain SGD: AdamW's first step is ~lr*sign(g), which turns float noise on near-zero gradients into visible
    # parameter differences and would hide what this checks (the gradient itself).
    optimizer = torch.optim.SGD(params)
    policy, value, optimizer = accelerator.prepare(policy, value, optimizer)
    share = n // world
    rows = {k: v[rank * share : (rank + 1) * share] for k, v in saved["batch"].items()}
    ppo_minibatch_step(cfg, accelerator, policy, value, optimizer, rows, list(range(share)), train_policy=True)
    if accelerator.is_main_process:
        state = {
            **{f"policy.{k}": v for k, v in accelerator.unwrap_model(policy).state_dict().items()},
            **{f"value.{k}": v for k, v in accelerator.unwrap_model(value).state_dict().items()},
        }
        torch.save(state, out_path)
    # Leave together and close gloo: a rank that exits while its process group is still up can abort in gloo's
    # destructor ("terminate called without an active exception", seen once in three launches).
    accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
