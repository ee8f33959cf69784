"""The bottom layer every other module may use: errors, atomic I/O, the run folder's layout, devices, memory,
and provenance (versions, CPU, git).

It imports nothing else of medsg (an import-linter contract in pyproject.toml keeps it so).
"""

__version__ = "0.1.0"
