"""Puts the SDK (``guest-sdk/python``) on the path of its tests."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
