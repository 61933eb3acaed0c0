"""From a scan to network input: registration, bias correction, skull stripping, normalisation, augmentation.

Modules: ``normalization``, ``preprocess``, ``registration``, ``transforms``.
"""
