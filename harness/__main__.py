"""python -m harness: load a model, apply a method, run a task. See README.md."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
