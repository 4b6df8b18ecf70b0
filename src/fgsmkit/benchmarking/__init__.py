"""The benchmark behind ``fgsmkit bench``: fgsmkit against plain PyTorch, the cost floor and peer libraries.

One module per job: :mod:`.workloads` (models and batches), :mod:`.contenders` (what is timed),
:mod:`.peers` (adapters for other attack libraries), :mod:`.timing` (interleaved medians and peak
memory), :mod:`.report` (ratios, table, JSON) and :mod:`.cli` (the command). The library itself
never imports this package.
"""
