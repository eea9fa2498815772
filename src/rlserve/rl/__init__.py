"""Generic reinforcement-learning parts: networks, PPO and DQN trainers, normalisers, checkpoints, logging.

Nothing here knows about routing or energy; the environments in :mod:`rlserve.envs` and the policies in
:mod:`rlserve.policies` supply the problem.
"""
