"""Build hook for the optional C loops: the walk (wiseverify/inventory/_fastwalk.c) and the
match stage's key sort (wiseverify/core/_fastkeys.c).

Everything else is declared in pyproject.toml.  The extension is optional: on a
machine without a C compiler or Python headers the build warns, the walk
uses its os.listdir/ctypes path (the same rows at about twice the CPU per
entry) and the match stage sorts with pyarrow (the same order).
"""

import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux"):
    ext.append(Extension("wiseverify.inventory._fastwalk", ["wiseverify/inventory/_fastwalk.c"], optional=True,
                         extra_compile_args=["-O2", "-std=gnu11"]))
ext.append(Extension("wiseverify.core._fastkeys", ["wiseverify/core/_fastkeys.c"], optional=True,
                     extra_compile_args=["-O2", "-std=gnu11"]))

setup(ext_modules=ext)
