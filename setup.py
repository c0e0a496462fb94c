"""Build hook for the optional C walk loops (wiseverify/_fastwalk.c).

Everything else is declared in pyproject.toml.  The extension is optional: on a
machine without a C compiler or Python headers the build warns and the walk
uses its os.listdir/ctypes path, which gives the same rows at about twice the
CPU per entry.
"""

import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux"):
    ext.append(Extension("wiseverify._fastwalk", ["wiseverify/_fastwalk.c"], optional=True,
                         extra_compile_args=["-O2", "-std=gnu11"]))

setup(ext_modules=ext)
