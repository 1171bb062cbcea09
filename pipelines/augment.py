"""DVC stage entry point: see mrisynth.stages.augment."""
from mrisynth.stages.augment import main

if __name__ == "__main__":
    main()
