"""Reinforcement learning from verifiable rewards on the sampling engine's rollouts (GRPO)."""
