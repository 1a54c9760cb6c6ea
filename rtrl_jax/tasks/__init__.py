"""Supervised sequence tasks: `copy_task`, the paper's copy task."""
