"""Evaluation, prediction, reports and export of trained models.

``metrics`` holds the pure figures on arrays; ``service`` runs a stored model over its dataset's held-out split and
caches the result beside the model; ``predict``, ``report`` and ``export`` serve the Models page and the CLI.
"""
