"""DVC stage entry point: see mrisynth.stages.train_gan."""
from mrisynth.stages.train_gan import main

if __name__ == "__main__":
    main()
