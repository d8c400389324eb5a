"""Helpers shared by the test tree (unit, system and VM tests): import them as tests.helpers.NAME."""
