"""Where is the model unsure: sampling predictions, uncertainty maps, calibration.

Modules: ``calibration``, ``sampling``.
"""
