"""The script Orthanc's Python plugin runs (``PythonScript``): set up ``sys.path``, install.

Orthanc runs it in the system Python (Debian's 3.11, the venv's version, so the venv's
binary wheels load). The ``XrayGateway`` section of Orthanc's configuration lists
``SysPath``: the project root and the venv's site-packages, put first on ``sys.path``.
Orthanc also puts this script's own directory on ``sys.path``; it is removed so that
the package's module names cannot shadow others.
"""

from __future__ import annotations

import json
import os
import sys

import orthanc

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
for _path in reversed(
    json.loads(orthanc.GetConfiguration()).get("XrayGateway", {}).get("SysPath", [])
):
    if _path not in sys.path:
        sys.path.insert(0, str(_path))

from gateway.orthanc_plugin.host import install  # noqa: E402  (needs the path above)

plugin = install(orthanc)
