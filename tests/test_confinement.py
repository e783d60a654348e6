"""broker/confinement.py: what Landlock leaves the broker able to read."""

from __future__ import annotations

import os
import sys
import sysconfig

from chapiteau.broker.confinement import python_libraries


def test_the_broker_may_read_every_library_sysconfig_names_for_this_interpreter():
    # The broker imports lazily once confined (a traceback, a codec): Landlock must leave
    # readable what sysconfig, which the broker no longer imports, says Python reads.
    here = sysconfig.get_paths()
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    wanted = {here["purelib"], here["platlib"], base["stdlib"], base["platstdlib"]}
    readable = python_libraries()
    assert {path for path in wanted if os.path.isdir(path)} <= readable
