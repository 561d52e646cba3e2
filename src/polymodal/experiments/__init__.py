"""Experiments that train several designs on the same data and compare them in one report.

- :mod:`~polymodal.experiments.fusion`: native (early) fusion against late fusion and a pipeline
  (``polymodal experiment fusion``).
"""
