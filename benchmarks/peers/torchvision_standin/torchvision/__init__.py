"""Stand-in for torchvision in slidecell's Cellpose 4 environment (.venv-cellpose4).

PyPI has no torchvision build for the CPU torch used here (its wheels need CUDA torch), and
Cellpose 4 / segment-anything import torchvision only for training augmentations and SAM's
automatic mask generator, which slidecell never calls. Any use raises NotImplementedError.
"""

__version__ = "0+slidecell.standin"
