"""Data-prep configs."""
