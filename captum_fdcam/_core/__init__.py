"""Machinery shared by every method: hooks, validation, the CAM base class."""
