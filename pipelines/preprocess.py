"""DVC stage entry point: see mrisynth.stages.preprocess."""
from mrisynth.stages.preprocess import main

if __name__ == "__main__":
    main()
