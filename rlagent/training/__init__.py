"""Training machinery: the supervised loop, PPO's models and update, checkpoints, tracking."""
