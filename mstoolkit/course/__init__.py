"""Running the course: notebook runs, exercises and their checks.

Modules: ``exercises``, ``runner``.
"""
