"""mesa-harness: an evaluation harness for long-context extrapolation methods (see README.md)."""

from pathlib import Path

# The repository checkout (the project is installed editable): conf/, results/ and data/ live here.
REPO_ROOT = Path(__file__).resolve().parents[1]
