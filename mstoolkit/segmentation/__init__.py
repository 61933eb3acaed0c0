"""The network: architectures, training, validation, inference.

Modules: ``config``, ``inference``, ``models``, ``train``, ``training_data``, ``validation``.
"""
