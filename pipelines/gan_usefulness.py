"""DVC stage entry point: see mrisynth.stages.gan_usefulness."""
from mrisynth.stages.gan_usefulness import main

if __name__ == "__main__":
    main()
