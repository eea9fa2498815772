"""``rlserve simulate`` and ``rlserve compare`` (filled in with the simulator)."""
