"""deadjax: populations of MLPs trained as one JAX program, for studying dead
units, saturation and vanishing/exploding gradients.

The Python API (DESIGN.md):

    deadjax.load_results(workdir)   -> pandas.DataFrame, one row per (point, step)
    deadjax.load_member(workdir, point) -> that point's latest saved state
    deadjax.load_dataset(config)    -> NumPy splits x_train, y_train, x_val, ...
    deadjax.probe_batch(config)     -> the probe inputs the diagnostics use
    deadjax.load_units(workdir)     -> pandas.DataFrame, the unit lifelines
"""

__version__ = "0.1.0"

from deadjax.checkpoints import load_member
from deadjax.data import load_dataset, probe_batch
from deadjax.results import load_histograms, load_results, load_units

__all__ = ["load_results", "load_histograms", "load_units", "load_member", "load_dataset",
           "probe_batch", "__version__"]
