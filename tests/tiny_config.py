"""The tiny training config of tests/helpers.py as a config file for the CLI tests."""
from tests.helpers import tiny_config


def get_config():
    return tiny_config("")
