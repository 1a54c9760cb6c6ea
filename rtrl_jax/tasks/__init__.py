"""Supervised sequence tasks: `copy_task`, the paper's copy task, and
`from_config`, its objects from the scripts' config."""
