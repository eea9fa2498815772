"""rlserve: learn and deploy control policies for LLM inference serving.

Layers (a module imports only from layers to its left):
workload -> perf -> sim -> policies -> rl / envs -> telemetry / bench / serve / report -> cli
"""

__version__ = "0.1.0"
