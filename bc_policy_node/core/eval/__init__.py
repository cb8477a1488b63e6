"""Evaluation in process: seeded rollouts of a policy or an expert in `SimEnv` (`rollout`) and
success / deviation statistics with intervals (`metrics`)."""
