"""rlagent: SFT -> reward model -> multi-turn PPO for tool-use agents.

`from rlagent import SFTTrainer, RewardTrainer, PPOTrainer` (rlagent/api.py) is resolved on first use, so importing
a subpackage (`rlagent.common`, the CLI's config precheck) does not import torch and the training stack.
"""

__all__ = ["PPOTrainer", "RewardTrainer", "SFTTrainer"]


def __getattr__(name: str):
    if name in __all__:
        from rlagent import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlagent' has no attribute {name!r}")
