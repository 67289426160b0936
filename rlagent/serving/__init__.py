"""Shipping a trained policy: export (HF, ONNX, INT8), the OpenAI-compatible server with batching, hot reload and
A/B arms, and the A/B report. Sits above rlagent/rollout (it generates through the rollout backends), below the CLI."""
