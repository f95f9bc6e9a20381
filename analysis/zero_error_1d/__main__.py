"""``python -m analysis.zero_error_1d``: see the package docstring."""

from ..common import run_study
from .cli import main

raise SystemExit(run_study(main))
