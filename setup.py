"""The compiled part of the package: market/_bybit_fast.pyx, the fast path for Bybit's common frames.

Everything else is in setup.cfg. The extension is optional: without a C
compiler the install still succeeds (setuptools warns) and the reference
path in market/bybit.py does all the work (market.bybit.COMPILED says which;
docs/performance.md, (f), measures both). Cython is a build requirement
(pyproject.toml), fetched by pip.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("market._bybit_fast", ["market/_bybit_fast.pyx"], optional=True)],
    language_level=3,
    quiet=True,
))
