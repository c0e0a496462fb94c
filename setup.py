"""Build hook for the optional C loops: the walk (wiseverify/inventory/_fastwalk.c), the
small-file reads (wiseverify/digest/_smallread.c), the match stage's key sort
(wiseverify/core/_fastkeys.c) and multi-buffer MD5 (wiseverify/core/_md5mb.c, its
kernels in _md5mb_kernel.h).

Everything else is declared in pyproject.toml.  The extension is optional: on a
machine without a C compiler or Python headers the build warns, the walk
uses its os.listdir/ctypes path (the same rows at about twice the CPU per
entry), small files are read by the Python loop (the same bytes), the match stage sorts with pyarrow (the same order) and MD5 goes
through hashlib (the same digests, one stream at a time).  The MD5 kernels are
compiled for AVX2 and AVX-512 through per-function target attributes and picked
at run time, so the build needs no -march flag and runs on any x86-64.
"""

import sys

from setuptools import Extension, setup

ext = []
if sys.platform.startswith("linux"):
    ext.append(Extension("wiseverify.inventory._fastwalk", ["wiseverify/inventory/_fastwalk.c"], optional=True,
                         extra_compile_args=["-O2", "-std=gnu11"]))
    # the small-file loop's system calls, the GIL released (digest/smallfiles.py)
    ext.append(Extension("wiseverify.digest._smallread", ["wiseverify/digest/_smallread.c"],
                         optional=True, extra_compile_args=["-O2", "-std=gnu11", "-pthread"],
                         extra_link_args=["-pthread"]))
ext.append(Extension("wiseverify.core._fastkeys", ["wiseverify/core/_fastkeys.c"], optional=True,
                     extra_compile_args=["-O2", "-std=gnu11"]))
ext.append(Extension("wiseverify.core._md5mb", ["wiseverify/core/_md5mb.c"], optional=True,
                     depends=["wiseverify/core/_md5mb_kernel.h"],
                     extra_compile_args=["-O2", "-std=gnu11"]))

setup(ext_modules=ext)
