"""The example plugin passes advkit's conformance suite (run from the plugin's own folder: python -m pytest)."""

from advkit_random_sign import RandomSign

from advkit.testing import parametrize_with_checks


@parametrize_with_checks([RandomSign])
def test_random_sign(attack, check):
    check(attack)
