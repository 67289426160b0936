"""The multi-turn rollout engine: batched generation, policies, episode schedule and transcripts."""
