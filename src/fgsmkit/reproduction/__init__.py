"""The paper's experiments, run with one command: ``fgsmkit reproduce``.

This package uses the library (attacks, :class:`~fgsmkit.AdversarialLoss`, the model zoo, the
datasets and the evaluation functions); the library never imports it. One module per job:

- :mod:`~fgsmkit.reproduction.settings`: the run sizes (full, quick) and why each was chosen;
- :mod:`~fgsmkit.reproduction.data`: the MNIST files on disk, else the embedded sample;
- :mod:`~fgsmkit.reproduction.training`: the training loops, checkpointed after every epoch;
- :mod:`~fgsmkit.reproduction.experiments`: the paper's eleven results, each beside ours;
- :mod:`~fgsmkit.reproduction.report`: the Markdown and JSON report;
- :mod:`~fgsmkit.reproduction.figures`: Figures 2, 3 and 4 (needs matplotlib);
- :mod:`~fgsmkit.reproduction.folders`: which output folders a run may use, and its mark in them;
- :mod:`~fgsmkit.reproduction.cli`: the command line.
"""
