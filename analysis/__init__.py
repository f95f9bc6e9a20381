"""Studies built on :mod:`pyro_vae`: each is ``python -m analysis.<name>`` and writes a JSON of
numbers and PNG figures to an output folder."""
