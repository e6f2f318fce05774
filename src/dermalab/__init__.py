"""dermalab: train, evaluate, explain and serve skin-disease image classifiers.

Decision support for research and education, never a diagnosis.
"""

__version__ = "0.1.0"
