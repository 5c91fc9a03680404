"""astrobatch: reproducible deep-learning studies in astronomy.

One package and one DVC project: every study is a chain of Typer commands
(``astrobatch <study> <stage>``) driven by ``params.yaml``.
"""

__version__ = "0.1.0"
