"""`python -m mrisynth.dvcgraph` — the same command as `python -m mrisynth.ops.dvcgraph` (kept at this path
because the check is documented as `python -m mrisynth.dvcgraph --check`)."""
import sys

from mrisynth.ops.dvcgraph import main

if __name__ == "__main__":
    sys.exit(main())
