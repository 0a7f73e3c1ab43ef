"""Numerics of ruv-assets: Numba kernels over numpy arrays and the plain-Python loops that drive them.

Imports nothing else of the project and never touches a file.
"""
