"""Developer tools: what builds, regenerates or serves things for development, tests and `make golden`.

Product modules never import this package (tests/test_layering.py checks it); only
`devtools.golden` (the `make golden` job), the tests and the Makefile do.
"""
