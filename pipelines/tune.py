"""DVC stage entry point: see mrisynth.stages.tune."""
from mrisynth.stages.tune import main

if __name__ == "__main__":
    main()
