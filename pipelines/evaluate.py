"""DVC stage entry point: see mrisynth.stages.evaluate."""
from mrisynth.stages.evaluate import main

if __name__ == "__main__":
    main()
