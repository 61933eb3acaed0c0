"""What is the network looking at: layer maps, input attributions and their sanity checks.

Modules: ``interpret``, ``interpret_checks``.
"""
