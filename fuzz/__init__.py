"""Fuzz targets: one per parser of untrusted input (psample messages, the config file, control requests).

Each target module holds a pure check, one_input(data), that raises AssertionError
(or lets an unexpected exception escape) when the code under test breaks its
contract, plus seeds() and an atheris entry point.  The regular test suite
calls the same checks from hypothesis and runs every atheris target briefly;
`python -m fuzz.run TARGET --seconds N` runs one for longer.
"""
