"""Pictures and widgets: slice plots and the slice viewer.

Modules: ``plots``, ``viewer``.
"""
