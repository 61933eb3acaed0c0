"""The synthetic MS phantom: anatomy, lesions, scanner profiles, datasets on disk.

Modules: ``anatomy``, ``dataset``, ``generator``, ``lesions``.
"""
