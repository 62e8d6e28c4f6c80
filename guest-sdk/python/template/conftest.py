"""Lets ``pytest`` import ``app`` and the ``plugbus`` SDK: puts this
directory on the path, and the nearest directory above it that holds the
SDK (a ``plugbus/`` package, as a project made by ``plugbus new`` has beside
``app.py``, or the repository's ``guest-sdk/python``)."""

import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
for _dir in (_HERE, *_HERE.parents):
    _sdk = next(
        (d for d in (_dir, _dir / "guest-sdk" / "python") if (d / "plugbus" / "__init__.py").is_file()),
        None,
    )
    if _sdk is not None:
        if str(_sdk) not in sys.path:
            sys.path.insert(1, str(_sdk))
        break
