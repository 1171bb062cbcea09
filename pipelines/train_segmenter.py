"""DVC stage entry point: see mrisynth.stages.train_segmenter."""
from mrisynth.stages.train_segmenter import main

if __name__ == "__main__":
    main()
