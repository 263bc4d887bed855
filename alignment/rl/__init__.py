"""Reinforcement learning from a reward: PPO (ours: ``ppo_math`` + ``ppo``), reward functions, and the
held-out before/after report shared by the PPO, GRPO and RLOO stages."""
