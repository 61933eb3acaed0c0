"""Data in and out: NIfTI and cases, datasets on disk, downloads, importers, the shipped sample.

Modules: ``archives``, ``commands``, ``datasets``, ``download``, ``fetch``, ``importers``, ``io``.
"""
