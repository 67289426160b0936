"""Guards that keep a run from losing work: non-finite weights are never stepped into or saved, a run that keeps
skipping optimizer steps stops, and a run that never updated writes no final/ folder.

Every stage's loop calls `StepGuard.after_step` once per optimizer step; checkpoints and final/ call
`assert_finite` before anything is written, so a NaN model can never replace a good checkpoint.
"""

from __future__ import annotations

import torch

from rlagent.common.config import TrainingError


def non_finite_tensors(named) -> list[str]:
    """Names of the (name, tensor) pairs holding a NaN or an infinity (at most 3, enough for the message). A sharded
    tensor (FSDP's DTensor) is checked on this process's shard only: no collective, so any rank may call it alone."""
    bad = []
    for name, tensor in named:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if torch.is_tensor(local) and local.is_floating_point() and not bool(torch.isfinite(local.detach()).all()):
            bad.append(name)
            if len(bad) == 3:
                break
    return bad


def non_finite_parameters(model: torch.nn.Module, trainable_only: bool = False) -> list[str]:
    """Names of (trainable, if asked) parameters holding a NaN or an infinity (at most 3)."""
    return non_finite_tensors((n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only)


def assert_finite(models: dict, what: str) -> None:
    """TrainingError before `what` is written when any model (a module, or a full state dict) holds a non-finite
    weight."""
    for name, model in models.items():
        bad = non_finite_tensors(model.items()) if isinstance(model, dict) else non_finite_parameters(model)
        if bad:
            raise TrainingError(f"not writing {what}: {name} has non-finite weights ({', '.join(bad)})")


class StepGuard:
    """Counts applied and skipped optimizer steps; stops the run when it can only lose work.

    `updates` (applied steps over the whole run, resumes included) is saved in every checkpoint, so a run resumed at
    its last step still knows whether it ever updated."""

    def __init__(self, max_skipped: int, updates: int = 0, lr_key: str = "optim.lr"):
        self.max_skipped, self.updates, self.skipped_in_a_row, self.lr_key = max_skipped, updates, 0, lr_key

    def after_step(self, applied: bool, models: dict, step: int) -> None:
        """After optimizer step `step` (1-based): a non-finite weight or too many skips in a row -> TrainingError."""
        if not applied:
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.max_skipped:
                raise TrainingError(
                    f"step {step}: {self.skipped_in_a_row} optimizer steps in a row skipped (non-finite loss or "
                    f"gradient; optim.max_skipped_steps={self.max_skipped}); lower {self.lr_key} or check the data"
                )
            return
        self.skipped_in_a_row = 0
        self.updates += 1
        for name, model in models.items():
            bad = non_finite_parameters(model, trainable_only=True)
            if bad:
                raise TrainingError(
                    f"step {step}: the optimizer step made {name}'s weights non-finite ({', '.join(bad)}); nothing "
                    f"of this step was saved (lower {self.lr_key}; resume_from=auto restarts from the last checkpoint)"
                )

    def require_an_update(self, what: str) -> None:
        """TrainingError when no optimizer step was ever applied: final/ would be the untouched start model."""
        if self.updates == 0:
            raise TrainingError(f"no optimizer step was applied in the whole run, so {what} is not written")
