"""The RL math: pure tensor-in/tensor-out functions (no models, no accelerate, no I/O)."""
