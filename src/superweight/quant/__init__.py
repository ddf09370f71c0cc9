"""Quantization: round-to-nearest of one tensor (``rtn``), applied to a model's decoder
weights in memory (``apply``), written as a checkpoint (``export``) in an output format
(``format``, ``formats``), simulated W8A8 (``w8a8``), and the sweep of methods against bits
per weight (``sweep``). The package imports nothing itself: the command line lists the
formats (``formats.py``) without torch."""
